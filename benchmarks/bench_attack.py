"""A victim's latency and the server's memory while other clients attack it.

One mapper-serve process on loopback serves a kernel map on 128-d embeddings (2,048
landmarks: the costliest per row the project fits) and a linear one. A victim sends 1-row
Translates and health checks in a loop; its p50/p99 are measured idle, then under each
attack, side by side:

- ``maximal``: eight clients send 65,000-row Compares (63.5 MiB each, 36 G multiply-adds:
  over the per-call budget, so refused by cost once read), as fast as they are answered;
- ``admitted``: eight clients send the largest Compare the per-call budget admits;
- ``streams``: 32 idle TranslateStreams held open, plus the ``admitted`` attack.

The attackers run in their own processes at the lowest CPU priority: they stand for other
machines, whose CPU the server does not share (on 2 cores, equal-priority attackers would
measure the load generator). ``--tokens`` serves known clients only, as the Docker image
does: the attackers share one client's token and the victim has its own.
``--control`` aims the attackers at a second server that refuses them at the transport:
what the victim then loses is the attackers' own load on this machine, not the server's.

Prints the victim's p99 under attack / idle (the issue's goal: at most 3x), how many
attack calls were admitted or refused, and the server's peak RSS (VmHWM) against the bound
docs/guides/service.md derives from the flags.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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
SPAWN = multiprocessing.get_context("spawn")
SCENARIOS = ("maximal", "admitted", "streams")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise RuntimeError(key)


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def victim(address: str, seconds: float, token: str | None) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, worst health ms) of 1-row Translates with a health check each."""
    x = convert.from_array(np.ones((1, D), np.float32))
    request = pb.TranslateRequest(source_model="a", target_model="c", embeddings=x)
    lat, health_lat = [], []
    with grpc.insecure_channel(address) as ch:
        stub, health = pb_grpc.MapperServiceStub(ch), health_pb2_grpc.HealthStub(ch)
        stub.Translate(request, timeout=5, metadata=bearer(token))
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            stub.Translate(request, timeout=5, metadata=bearer(token))
            lat.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            health_lat.append(time.perf_counter() - t0)
            time.sleep(0.005)
    ms = np.array(lat) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), max(health_lat) * 1e3


def _attacker(address: str, rows: int, stop: Any, counts: Any, token: str | None) -> None:
    """One attacking client, in its own process at the lowest CPU priority: it stands for a
    machine of its own, so its CPU (and its GIL) is not taken from the server or the victim
    on this 2-core machine. Sends one pre-serialised Compare as fast as it is answered."""
    os.nice(19)
    rng = np.random.default_rng(1)
    a = convert.from_array(rng.standard_normal((rows, D)).astype(np.float32))
    raw = pb.CompareRequest(model_a="a", model_b="b", a=a, b=a).SerializeToString()
    options = [("grpc.max_send_message_length", 128 << 20)]
    codes: dict[str, int] = {}
    with grpc.insecure_channel(address, options=options) as ch:
        call = ch.unary_unary(f"/{pb.DESCRIPTOR.services_by_name['MapperService'].full_name}/Compare")
        while not stop.is_set():
            try:
                call(raw, timeout=60, metadata=bearer(token))
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
                time.sleep(0.01)  # a refused client retries at once, almost
            codes[code] = codes.get(code, 0) + 1
    counts.put(codes)


def attack(address: str, rows: int, clients: int, stop: Any, counts: Any, token: str | None) -> list[Any]:
    procs = [
        SPAWN.Process(target=_attacker, args=(address, rows, stop, counts, token), daemon=True)
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    return procs


def idle_streams(address: str, n: int, stop: Any, token: str | None) -> list[grpc.Future]:
    def nothing():
        stop.wait()
        yield from ()

    ch = grpc.insecure_channel(address)
    stub = pb_grpc.MapperServiceStub(ch)
    return [stub.TranslateStream(nothing(), timeout=600, metadata=bearer(token)) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="per scenario")
    ap.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="scenarios to run")
    ap.add_argument(
        "--tokens",
        action="store_true",
        help="serve known clients only (--client-tokens-file, as the Docker image does): the "
        "attackers share one client's token, the victim has its own",
    )
    ap.add_argument("--server-args", default="", help="extra mapper-serve flags, e.g. '--workers 2'")
    ap.add_argument(
        "--control",
        action="store_true",
        help="a control run: the attackers aim at a second server that refuses every request "
        "at the transport (--max-message-mb 1), so the victim's server is never attacked and "
        "what the victim still loses is what the attackers cost this machine",
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((2500, D)), rng.standard_normal((2500, D))
    kernel = KernelMap(source_id="a", target_id="b").fit(X, Y)
    store = SQLiteMapStore(tmp / "maps.sqlite")
    store.publish(mapfile.dumps(kernel))
    store.publish(mapfile.dumps(LinearMap(source_id="a", target_id="c").fit(X, Y)))
    flags = ["--log-level", "WARNING", *args.server_args.split()]
    tokens: dict[str, str | None] = {"victim": None, "attacker": None}
    if args.tokens:
        tokens = {who: f"{who}-token-{os.urandom(8).hex()}" for who in tokens}
        (tmp / "clients").write_text("".join(f"{who} {t}\n" for who, t in tokens.items()))
        flags += ["--client-tokens-file", str(tmp / "clients")]
    srv = start_service(tmp / "maps.sqlite", *flags, workdir=tmp)
    target = srv
    if args.control:
        target = start_service(tmp / "maps.sqlite", *flags, "--max-message-mb", "1", workdir=tmp)
        print("control: the attackers aim at a second server, which refuses them at the transport")
    per_call = 16e9  # the default --max-call-gmacs
    admitted_rows = int(per_call // macs_per_row(kernel))
    try:
        idle_rss = status_kib(srv.proc.pid, "VmRSS") / 1024
        base = victim(srv.address, args.seconds, tokens["victim"])
        print(
            f"kernel map: {macs_per_row(kernel):,} multiply-adds per row; largest admitted Compare "
            f"{admitted_rows:,} rows; server idle RSS {idle_rss:.0f} MiB"
        )
        print(
            f"{'scenario':<10} {'p50 ms':>7} {'p99 ms':>7} {'health max':>11} {'p99/idle':>9}  attack calls"
        )
        print(f"{'idle':<10} {base[0]:>7.2f} {base[1]:>7.2f} {base[2]:>11.1f} {1:>8.2f}x")
        for name in args.only:
            rows = 65_000 if name == "maximal" else admitted_rows
            streams = 32 if name == "streams" else 0
            stop, counts = SPAWN.Event(), SPAWN.Queue()
            held = idle_streams(target.address, streams, stop, tokens["attacker"]) if streams else []
            procs = attack(target.address, rows, 8, stop, counts, tokens["attacker"])
            time.sleep(4)  # the attackers start (imports) and reach their pace
            res = victim(srv.address, args.seconds, tokens["victim"])
            stop.set()
            codes: dict[str, int] = {}
            for _ in procs:
                for code, n in counts.get(timeout=120).items():
                    codes[code] = codes.get(code, 0) + n
            for p in procs:
                p.join(10)
            for s in held:
                s.cancel()
            tally = ", ".join(f"{c} {n}" for c, n in sorted(codes.items()))
            print(
                f"{name:<10} {res[0]:>7.2f} {res[1]:>7.2f} {res[2]:>11.1f} {res[1] / base[1]:>8.2f}x  {tally}"
            )
        peak = status_kib(srv.proc.pid, "VmHWM") / 1024
        print(f"server peak RSS {peak:.0f} MiB (idle {idle_rss:.0f} MiB)")
    finally:
        srv.stop()
        target.stop()


if __name__ == "__main__":
    main()
