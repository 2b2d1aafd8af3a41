"""A victim's latency and the server's memory while other clients attack it.

One mapper-serve process on loopback serves a kernel map on 128-d embeddings (2,048
landmarks: the costliest per row the project fits) and a linear one. A victim sends 1-row
Translates and health checks in a loop; its p50/p99 are measured idle, then under each
attack, side by side:

- ``maximal``: eight clients send 65,000-row Compares (63.5 MiB each, ~20 CPU-s of work
  each), as fast as they are answered;
- ``admitted``: eight clients send the largest Compare the per-call budget admits;
- ``streams``: 32 idle TranslateStreams held open, plus the ``admitted`` attack.

Prints the victim's p99 under attack / idle (the issue's goal: at most 3x), how many
attack calls were admitted or refused, and the server's peak RSS (VmHWM) against the bound
docs/guides/service.md derives from the flags.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapper import KernelMap, LinearMap  # noqa: E402
from mapper.core import mapfile  # noqa: E402
from mapper.serving.sqlite import SQLiteMapStore  # noqa: E402
from mapper.serving.translator import macs_per_row  # noqa: E402
from mapper_service import convert  # noqa: E402
from mapper_service.gen import mapper_pb2 as pb  # noqa: E402
from mapper_service.gen import mapper_pb2_grpc as pb_grpc  # noqa: E402
from mapper_service.launcher import start_service  # noqa: E402

D = 128


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(key)


def victim(address: str, seconds: float) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, worst health ms) of 1-row Translates with a health check each."""
    x = convert.from_array(np.ones((1, D), np.float32))
    request = pb.TranslateRequest(source_model="a", target_model="c", embeddings=x)
    lat, health_lat = [], []
    with grpc.insecure_channel(address) as ch:
        stub, health = pb_grpc.MapperServiceStub(ch), health_pb2_grpc.HealthStub(ch)
        stub.Translate(request, timeout=5)
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            stub.Translate(request, timeout=5)
            lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            health_lat.append(time.perf_counter() - t0)
            time.sleep(0.005)
    ms = np.array(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), max(health_lat) * 1e3


def attack(
    address: str, rows: int, clients: int, stop: threading.Event, codes: list[str]
) -> list[threading.Thread]:
    rng = np.random.default_rng(1)
    a = convert.from_array(rng.standard_normal((rows, D)).astype(np.float32))
    request = pb.CompareRequest(model_a="a", model_b="b", a=a, b=a)
    options = [("grpc.max_send_message_length", 128 << 20)]

    def run() -> None:
        with grpc.insecure_channel(address, options=options) as ch:
            call = pb_grpc.MapperServiceStub(ch).Compare
            while not stop.is_set():
                try:
                    call(request, timeout=60)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)
                    time.sleep(0.01)  # a refused client retries at once, almost

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    return threads


def idle_streams(address: str, n: int, stop: threading.Event) -> list[grpc.Future]:
    def nothing():
        stop.wait()
        yield from ()

    ch = grpc.insecure_channel(address)
    stub = pb_grpc.MapperServiceStub(ch)
    return [stub.TranslateStream(nothing(), timeout=600) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="per scenario")
    ap.add_argument("--server-args", default="", help="extra mapper-serve flags, e.g. '--workers 2'")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((2500, D)), rng.standard_normal((2500, D))
    kernel = KernelMap(source_id="a", target_id="b").fit(X, Y)
    store = SQLiteMapStore(tmp / "maps.sqlite")
    store.publish(mapfile.dumps(kernel))
    store.publish(mapfile.dumps(LinearMap(source_id="a", target_id="c").fit(X, Y)))
    srv = start_service(tmp / "maps.sqlite", "--log-level", "WARNING", *args.server_args.split(), workdir=tmp)
    per_call = 16e9  # the default --max-call-gmacs
    admitted_rows = int(per_call // macs_per_row(kernel))
    try:
        idle_rss = status_kib(srv.proc.pid, "VmRSS") / 1024
        base = victim(srv.address, args.seconds)
        print(
            f"kernel map: {macs_per_row(kernel):,} multiply-adds per row; largest admitted Compare "
            f"{admitted_rows:,} rows; server idle RSS {idle_rss:.0f} MiB"
        )
        print(
            f"{'scenario':<10} {'p50 ms':>7} {'p99 ms':>7} {'health max':>11} {'p99/idle':>9}  attack calls"
        )
        print(f"{'idle':<10} {base[0]:>7.2f} {base[1]:>7.2f} {base[2]:>11.1f} {1:>8.2f}x")
        for name, rows, streams in (("maximal", 65_000, 0), ("admitted", admitted_rows, 0),
                                    ("streams", admitted_rows, 32)):  # fmt: skip
            stop, codes = threading.Event(), []
            held = idle_streams(srv.address, streams, stop) if streams else []
            threads = attack(srv.address, rows, 8, stop, codes)
            time.sleep(2)
            res = victim(srv.address, args.seconds)
            stop.set()
            for t in threads:
                t.join(120)
            for s in held:
                s.cancel()
            tally = ", ".join(f"{c} {codes.count(c)}" for c in sorted(set(codes)))
            print(
                f"{name:<10} {res[0]:>7.2f} {res[1]:>7.2f} {res[2]:>11.1f} {res[1] / base[1]:>8.2f}x  {tally}"
            )
        peak = status_kib(srv.proc.pid, "VmHWM") / 1024
        print(f"server peak RSS {peak:.0f} MiB (idle {idle_rss:.0f} MiB)")
    finally:
        srv.stop()


if __name__ == "__main__":
    main()
