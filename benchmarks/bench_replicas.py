"""Several replicas: Translate throughput with one and two replicas behind nginx, side by
side with one replica called directly; and publish-to-served latency with each store
(SQLite: the other replica polls; PostgreSQL: LISTEN/NOTIFY).

Real processes on loopback: a PostgreSQL server (tools/postgres.py), mapper-serve
replicas, nginx. On a 2-core machine the replicas share the cores with the load
generator, so a second replica cannot add much here: the figures show what the load
balancer costs and that it spreads load, not a scaling curve.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mapper import LinearMap  # noqa: E402
from mapper.core import mapfile  # noqa: E402
from mapper_service.client import MapperClient  # noqa: E402
from mapper_service.launcher import start_service  # noqa: E402
from tools.nginx import start_nginx  # noqa: E402
from tools.postgres import PostgresServer  # noqa: E402

TOKEN = "bench"
DIM = 512


def map_file(n: int) -> bytes:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2000, DIM)), rng.standard_normal((2000, DIM))
    return mapfile.dumps(LinearMap(alpha=1.0, source_id="a", target_id="b").fit(x, y), {"n": n})


def throughput(address: str, batch: int, seconds: float, threads: int = 8) -> float:
    """Embeddings per second over ``threads`` clients for ``seconds``."""
    x = np.random.default_rng(1).standard_normal((batch, DIM)).astype(np.float32)
    done = [0] * threads
    failures: list[grpc.StatusCode] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with MapperClient(address, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.translate(x, "a", "b")
                    done[i] += batch
                except grpc.RpcError as e:
                    failures.append(e.code())

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    if failures:
        print(f"  ({len(failures)} failed calls at {address}: {sorted(set(map(str, failures)))})")
    return sum(done) / seconds


def served(client: MapperClient, q: np.ndarray) -> int | None:
    try:
        return client.translate(q, "a", "b")[1].version
    except grpc.RpcError:  # nothing served yet
        return None


def publish_to_served(a, b, repeats: int) -> list[float]:
    """Seconds from PutMapping's reply (through replica a) to replica b serving the version."""
    out = []
    q = np.zeros((1, DIM), np.float32)
    q[0, 0] = 1
    with a.client(admin_token=TOKEN) as ca, b.client() as cb:
        for n in range(repeats):
            version = ca.put_mapping(map_file(100 + n)).ref.version
            t0 = time.perf_counter()
            while served(cb, q) != version:
                time.sleep(0.002)
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput point")
    ap.add_argument("--repeats", type=int, default=5, help="publishes per latency figure")
    args = ap.parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    with PostgresServer() as pg:
        url = pg.new_database()
        replicas = [
            start_service(
                url,
                "--reload-interval",
                "0.2",
                "--drain",
                "0",
                "--admin-token",
                TOKEN,
                workdir=work / f"r{i}",
            )
            for i in range(2)
        ]
        try:
            with replicas[0].client(admin_token=TOKEN) as c:
                c.put_mapping(map_file(0))
            lb1, port1 = start_nginx(nginx, work / "nginx1", [replicas[0].port])
            lb2, port2 = start_nginx(nginx, work / "nginx2", [r.port for r in replicas])
            time.sleep(0.5)
            print(f"Translate, {DIM}-d, 8 client threads, {args.seconds:.0f} s per point (embeddings/s)")
            heads = ("batch", "direct, 1 replica", "nginx, 1 replica", "nginx, 2 replicas", "nginx1/direct")
            print(" ".join(f"{h:>18}" for h in (*heads, "nginx2/nginx1")))
            for batch in (1, 32, 256):
                direct = throughput(replicas[0].address, batch, args.seconds)
                one = throughput(f"127.0.0.1:{port1}", batch, args.seconds)
                two = throughput(f"127.0.0.1:{port2}", batch, args.seconds)
                cells = (f"{batch}", f"{direct:,.0f}", f"{one:,.0f}", f"{two:,.0f}")
                print(" ".join(f"{c:>18}" for c in (*cells, f"{one / direct:.2f}x", f"{two / one:.2f}x")))
            lb1.terminate()
            lb2.terminate()
            pg_lat = publish_to_served(replicas[0], replicas[1], args.repeats)
        finally:
            for r in replicas:
                r.stop()
    sqlite = work / "maps.sqlite"
    replicas = [
        start_service(
            sqlite, "--drain", "0", "--admin-token", TOKEN, "--reload-interval", "2", workdir=work / f"s{i}"
        )
        for i in range(2)
    ]
    try:
        sq_lat = publish_to_served(replicas[0], replicas[1], args.repeats)
    finally:
        for r in replicas:
            r.stop()
    print(f"\nPublish through replica 1 -> served by replica 2 (median, max of {args.repeats}):")
    print(f"  PostgreSQL (LISTEN/NOTIFY, polling every 2 s as fallback): "
          f"{statistics.median(pg_lat) * 1000:7.1f} ms, max {max(pg_lat) * 1000:7.1f} ms")  # fmt: skip
    print(f"  SQLite (polling every 2 s):                                 "
          f"{statistics.median(sq_lat) * 1000:7.1f} ms, max {max(sq_lat) * 1000:7.1f} ms")  # fmt: skip
    print(
        f"  ratio SQLite / PostgreSQL (median): {statistics.median(sq_lat) / statistics.median(pg_lat):.0f}x"
    )


if __name__ == "__main__":
    main()
