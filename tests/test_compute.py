"""The service's compute threads: results, errors, cancellation and release (real threads)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mapper_service.compute import ComputeThreads


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
