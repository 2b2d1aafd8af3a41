"""Bounded load on loopback: 32 concurrent clients for 10 s (LOAD_TEST_SECONDS), mixed good
and bad RPCs. No good call may fail and the server's memory must stay flat."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from mapper import CanonicalSpace, LinearMap
from mapper.core import mapfile
from mapper.serving.sqlite import SQLiteMapStore

from .servers import start_server

SECONDS = float(os.environ.get("LOAD_TEST_SECONDS", 10))
CLIENTS = 32


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow  # long; CI runs it with make test-slow
def test_load_mixed_rpcs(tmp_path):
    rng = np.random.default_rng(0)
    X, Y, Z = (rng.standard_normal((2000, 512)) for _ in range(3))
    store = SQLiteMapStore(tmp_path / "maps.sqlite")
    store.publish(mapfile.dumps(LinearMap(alpha=1.0, source_id="a", target_id="b").fit(X, Y)))
    store.publish(mapfile.dumps(CanonicalSpace(name="h", max_iter=3).fit({"a": X, "b": Y, "c": Z})))
    srv = start_server(tmp_path, tmp_path / "maps.sqlite")
    good = Counter()
    bad = Counter()
    failures: list[str] = []
    memory: list[tuple[float, float]] = []
    stop = threading.Event()
    payload = {n: rng.standard_normal((n, 512)).astype(np.float32) for n in (1, 32, 256)}

    def worker(i: int) -> None:
        r = np.random.default_rng(i)
        with srv.client(timeout=30) as c:
            while not stop.is_set():
                op = r.integers(0, 6)
                try:
                    if op == 0:
                        c.translate(payload[int(r.choice([1, 32, 256]))], "a", "b")
                    elif op == 1:
                        c.translate(payload[32], "a", "c")  # through the hub
                    elif op == 2:
                        x = payload[32]
                        c.compare(x, "a", x, "b")
                    elif op == 3:
                        c.list_mappings()
                    if op <= 3:
                        good[op] += 1
                        continue
                except grpc.RpcError as e:
                    failures.append(f"good op {op}: {e.code()} {e.details()}")
                    continue
                try:  # deliberately bad calls
                    if op == 4:
                        c.translate(payload[32][:, :100], "a", "b")
                    else:
                        c.translate(payload[1], "a", "nowhere")
                    failures.append(f"bad op {op} succeeded")
                except grpc.RpcError as e:
                    bad[e.code()] += 1

    try:
        with srv.client() as c:
            c.wait_ready()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        while time.monotonic() - t0 < SECONDS:
            time.sleep(1)
            memory.append((time.monotonic() - t0, rss_mib(srv.proc.pid)))
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        assert srv.stop() == 0
    total = sum(good.values())
    print(
        f"\n{total} good calls ({total / SECONDS:.0f}/s), bad: {dict(bad)}, RSS MiB: "
        f"{memory[len(memory) // 4][1]:.0f} at 1/4 -> {memory[-1][1]:.0f} at end"
    )
    assert not failures, failures[:5]
    assert total > 100 and set(bad) == {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
    warm = memory[len(memory) // 4][1]
    assert memory[-1][1] < warm * 1.1 + 20, memory
