"""Threads that run admitted work off the event loop.

``loop.run_in_executor`` costs about 100 us of CPU per call (a concurrent Future chained to
an asyncio one, the executor's queue and its wake-ups): a third of a 32-row Translate's
work. Here a call is one queue put and one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class ComputeThreads:
    """``n`` threads that run ``fn()`` for the event loop: :meth:`submit` returns an asyncio
    future of its result. ``done()`` (if given) runs on the thread once ``fn`` has returned
    or raised, even when the future was cancelled meanwhile, so what the work holds is
    released when the work ends, not before."""

    def __init__(
        self, n: int, *, initializer: Callable[[], None] | None = None, name: str = "compute"
    ) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._initializer = initializer
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}_{i}", daemon=True) for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[[], T], done: Callable[[], None] | None = None) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, fn, done))
        return future

    def _serve(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while (item := self._queue.get()) is not None:
            loop, future, fn, done = item
            result = error = None
            if not future.cancelled():  # a call given up while queued costs nothing
                try:
                    result = fn()
                except BaseException as e:  # the awaiting call gets it, whatever it is
                    error = e
            if done is not None:
                done()
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

    def shutdown(self) -> None:
        """Finish the work already queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()

    def __enter__(self) -> ComputeThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
