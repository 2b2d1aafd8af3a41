"""Translate over loopback against a bare gRPC echo service carrying the same payload, and
against the same map served by Triton as a python-backend model.

The servers run as separate processes. The echo server parses the request and returns
its embeddings unchanged, so the difference is what the translation service adds (map
lookup, validation, the map's matrix product, normalisation, metrics). A second echo,
"echo+X@W", multiplies the embeddings by a (dim, dim) float32 matrix before replying: the
least work any server applying a map must do, so translate / echo+X@W says how close the
service comes to that floor. Prints embeddings/s and p50/p99 latency per batch size, and
the ratios, and each server's CPU per call (all its threads, from ``/proc``; for Triton
the tritonserver process alone, not its python-backend stubs). With
``--rounds N`` each point is the median of N rounds that alternate the servers, which
steadies the ratios on a shared machine. ``--pin`` puts the servers on one CPU and the
load generator on the others.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapper import LinearMap  # noqa: E402
from mapper.core import mapfile  # noqa: E402
from mapper.serving.sqlite import SQLiteMapStore  # noqa: E402
from mapper.triton.client import TritonClient  # noqa: E402
from mapper.triton.server import TritonServer  # noqa: E402
from mapper_service.client import MapperClient  # noqa: E402
from mapper_service.gen import mapper_pb2 as pb  # noqa: E402
from mapper_service.gen import mapper_pb2_grpc as pb_grpc  # noqa: E402
from mapper_service.launcher import start_service, wait_port_file  # noqa: E402


class Echo(pb_grpc.MapperServiceServicer):
    """Returns the request's embeddings; with ``dim``, first multiplies them by a random
    (dim, dim) float32 matrix: the least work any server that applies a map must do."""

    def __init__(self, dim: int | None = None) -> None:
        rng = np.random.default_rng(0)
        self.weight = None if dim is None else rng.standard_normal((dim, dim), np.float32)

    def Translate(self, request, context):  # noqa: N802
        if self.weight is None:
            return pb.TranslateResponse(embeddings=request.embeddings, request_id=request.request_id)
        x = np.frombuffer(request.embeddings.data, np.float32).reshape(request.embeddings.rows, -1)
        y = pb.Embeddings(rows=x.shape[0], dim=x.shape[1], data=(x @ self.weight).tobytes())
        return pb.TranslateResponse(embeddings=y, request_id=request.request_id)


def run_echo(port_file: str, matmul_dim: int | None) -> None:
    threadpool_limits(1, user_api="blas")  # as mapper-serve's default
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_MapperServiceServicer_to_server(Echo(matmul_dim), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(port_file).write_text(str(port))
    server.wait_for_termination()


TRITON_MODEL_PY = """
import numpy as np
import triton_python_backend_utils as pb_utils
from mapper.core import mapfile


class TritonPythonModel:
    def initialize(self, args):
        self.map = mapfile.load({path!r})

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        ys = np.split(self.map.transform(np.concatenate(xs)), np.cumsum([len(x) for x in xs])[:-1])
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", y)]) for y in ys]
"""
TRITON_CONFIG = """name: "map"
backend: "python"
max_batch_size: 1024
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {dim} ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {dim} ] }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


def load(address: str, batch: int, clients: int, seconds: float, dim: int, triton: bool = False):
    """(embeddings/s, p50 ms, p99 ms, calls made) of translate calls from `clients` threads
    (the calls include each thread's warm-up call, which the server also served)."""
    x = np.random.default_rng(0).standard_normal((batch, dim)).astype(np.float32)
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker() -> None:
        if triton:
            client = TritonClient(address, concurrency=1, batch_size=batch)
            call = lambda: client.infer("map", "x", "y", x)  # noqa: E731
        else:
            client = MapperClient(address)
            call = lambda: client.translate(x, "a", "b")  # noqa: E731
        call()  # warm-up
        mine = []
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            call()
            mine.append(time.perf_counter() - t0)
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    lat = np.array(latencies) * 1e3
    p50, p99 = np.percentile(lat, [50, 99])
    return len(latencies) * batch / wall, float(p50), float(p99), len(latencies) + clients


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far, all threads (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="per batch size and server")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512, help="embedding dimension (the zoo's models: 128-256)")
    ap.add_argument("--no-triton", action="store_true", help="skip the Triton-served map")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="servers on the last CPU, the load generator on the others (as if it were another host)",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument(
        "--rounds", type=int, default=1, help="alternate the servers this many times per point; medians"
    )
    ap.add_argument("--server-args", default="", help="extra mapper-serve flags, e.g. '--workers 2'")
    ap.add_argument("--echo-server", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--echo-matmul", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        return run_echo(args.echo_server, args.dim if args.echo_matmul else None)

    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    d = args.dim
    m = LinearMap(alpha=1.0, source_id="a", target_id="b").fit(
        rng.standard_normal((2000, d)), rng.standard_normal((2000, d))
    )
    SQLiteMapStore(tmp / "maps.sqlite").publish(mapfile.dumps(m))
    mapfile.save(m, tmp / "map.safetensors")
    (tmp / "repo" / "map" / "1").mkdir(parents=True)
    (tmp / "repo" / "map" / "config.pbtxt").write_text(TRITON_CONFIG.format(dim=d))
    (tmp / "repo" / "map" / "1" / "model.py").write_text(
        TRITON_MODEL_PY.format(path=str(tmp / "map.safetensors"))
    )
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin:
        if len(cpus) < 2:
            raise SystemExit("--pin needs two or more CPUs")
        os.sched_setaffinity(0, cpus[-1:])  # inherited by every server process started below
    translate = start_service(
        tmp / "maps.sqlite",
        "--metrics-port",
        "-1",
        "--log-level",
        "WARNING",
        *args.server_args.split(),
        workdir=tmp,
    )
    echoes = {
        name: subprocess.Popen(
            [sys.executable, __file__, "--echo-server", str(tmp / f"{name}.port"), "--dim", str(d), *flags],
            cwd=ROOT,
        )
        for name, flags in (("echo", []), ("echo+X@W", ["--echo-matmul"]))
    }
    try:
        addresses = {"translate": translate.address}
        pids = {"translate": translate.proc.pid}
        for name, proc in echoes.items():
            addresses[name] = f"127.0.0.1:{wait_port_file(tmp / f'{name}.port', proc)}"
            pids[name] = proc.pid
        triton = None
        if not args.no_triton:
            triton = TritonServer(tmp / "repo").start()
            addresses["triton"] = triton.url
            pids["triton"] = triton.proc.pid
        for task in os.listdir("/proc/self/task"):  # every thread, gRPC's own included
            os.sched_setaffinity(int(task), cpus[:-1] if args.pin else cpus)
        where = f"servers on CPU {cpus[-1]}, clients on {cpus[:-1]}" if args.pin else "shared CPUs"
        rounds = f", median of {args.rounds} alternated rounds" if args.rounds > 1 else ""
        print(f"{args.clients} client threads, {args.seconds:.0f} s per point{rounds}, {d}-d, {where}")
        print(f"{'batch':>6} {'server':<10} {'emb/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'CPU/call us':>12}")
        for batch in args.batches:
            runs: dict[str, list[tuple[float, ...]]] = {name: [] for name in addresses}
            for r in range(args.rounds):
                for name in list(addresses)[:: 1 if r % 2 == 0 else -1]:
                    cpu0 = cpu_seconds(pids[name])
                    triton_client = name == "triton"
                    *got, calls = load(addresses[name], batch, args.clients, args.seconds, d, triton_client)
                    runs[name].append((*got, (cpu_seconds(pids[name]) - cpu0) / calls * 1e6))
            res = {}
            for name, got in runs.items():
                thr, p50, p99, cpu = res[name] = tuple(np.median(got, axis=0))
                print(f"{batch:>6} {name:<10} {thr:>10,.0f} {p50:>8.2f} {p99:>8.2f} {cpu:>12,.0f}")
            ratios = [f"{n} / echo {res[n][0] / res['echo'][0]:.2f}x" for n in res if n != "echo"]
            ratios.append(f"translate / echo+X@W {res['translate'][0] / res['echo+X@W'][0]:.2f}x")
            print(f"{'':>6} throughput: {', '.join(ratios)}")
    finally:
        translate.stop()
        for proc in echoes.values():
            proc.terminate()
            proc.wait()
        if triton:
            triton.stop()


if __name__ == "__main__":
    main()
