"""The service's compute threads: results, errors, cancellation and release (real threads)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mapper_service.compute import Coalescer, ComputeThreads


def test_results_and_errors_reach_the_awaiting_call():
    async def main() -> None:
        with ComputeThreads(2) as compute:
            assert await compute.submit(lambda: 6 * 7) == 42
            with pytest.raises(ZeroDivisionError):
                await compute.submit(lambda: 1 / 0)
            # Many at once, each its own result.
            got = await asyncio.gather(*(compute.submit(lambda i=i: i * i) for i in range(50)))
            assert got == [i * i for i in range(50)]

    asyncio.run(main())


def test_done_runs_when_the_work_ends_not_when_the_call_is_cancelled():
    started, finish, released = threading.Event(), threading.Event(), threading.Event()

    def work() -> str:
        started.set()
        finish.wait(10)
        return "finished"

    async def main() -> None:
        with ComputeThreads(1) as compute:
            future = compute.submit(work, done=released.set)
            await asyncio.to_thread(started.wait, 10)
            future.cancel()
            await asyncio.sleep(0.05)
            assert not released.is_set()  # the thread still runs the work
            finish.set()
            assert await asyncio.to_thread(released.wait, 10)

    asyncio.run(main())


def test_work_cancelled_while_queued_never_runs_but_is_released():
    busy, finish = threading.Event(), threading.Event()
    ran, released = [], threading.Event()

    def block() -> None:
        busy.set()
        finish.wait(10)

    async def main() -> None:
        with ComputeThreads(1) as compute:
            first = compute.submit(block)
            await asyncio.to_thread(busy.wait, 10)
            queued = compute.submit(lambda: ran.append(1), done=released.set)
            queued.cancel()
            finish.set()
            await first
            assert await asyncio.to_thread(released.wait, 10)
        assert ran == []

    asyncio.run(main())


def test_shutdown_finishes_queued_work_and_runs_the_initializer_per_thread():
    names: list[str] = []
    done: list[int] = []

    async def main() -> ComputeThreads:
        compute = ComputeThreads(2, initializer=lambda: names.append(threading.current_thread().name))
        for i in range(20):
            compute.submit(lambda i=i: done.append(i))
        return compute

    compute = asyncio.run(main())  # the loop is closed: results have nowhere to go
    compute.shutdown()
    assert sorted(done) == list(range(20))
    assert sorted(names) == ["compute_0", "compute_1"]


def test_calls_of_one_key_waiting_together_run_as_one_within_the_limit():
    busy, finish = threading.Event(), threading.Event()
    batches: list[tuple[str, list[int]]] = []
    released: list[int] = []

    def run(key, items):
        batches.append((key, list(items)))
        return [ValueError(f"bad {i}") if i == 13 else f"{key}:{i}" for i in items]

    def block() -> None:
        busy.set()
        finish.wait(10)

    async def main() -> None:
        with ComputeThreads(1) as compute:
            coalescer = Coalescer(compute, run, size=lambda i: 1 if i < 100 else 10, limit=4)
            compute.post(block)  # the only thread is busy: every call below waits
            await asyncio.to_thread(busy.wait, 10)
            a = [coalescer.submit("a", i, done=lambda i=i: released.append(i)) for i in (1, 2, 13, 4, 5)]
            b = coalescer.submit("b", 7)
            big = coalescer.submit("c", 100)
            gone = coalescer.submit("b", 8, done=lambda: released.append(8))
            gone.cancel()
            finish.set()
            assert await asyncio.gather(*a[:2], b, big) == ["a:1", "a:2", "b:7", "c:100"]
            with pytest.raises(ValueError, match="bad 13"):
                await a[2]  # its own error; the others in its batch succeed
            assert await asyncio.gather(*a[3:]) == ["a:4", "a:5"]

    asyncio.run(main())
    # "a" waited together: one run up to the limit of 4, then the rest; "b" without the
    # cancelled call, which never ran but was released.
    assert batches == [("a", [1, 2, 13, 4]), ("b", [7]), ("c", [100]), ("a", [5])]
    assert sorted(released) == [1, 2, 4, 5, 8, 13]


def test_an_idle_coalescer_runs_each_call_at_once():
    async def main() -> list[list[int]]:
        seen: list[list[int]] = []
        with ComputeThreads(2) as compute:
            coalescer = Coalescer(compute, lambda k, items: seen.append(items) or items, size=len, limit=10)
            for i in range(5):
                assert await coalescer.submit("k", [i]) == [i]
        return seen

    assert asyncio.run(main()) == [[[i]] for i in range(5)]
