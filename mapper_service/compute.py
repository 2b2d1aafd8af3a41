"""Threads that run admitted work off the event loop, and calls that share their work.

``loop.run_in_executor`` costs about 100 us of CPU per call (a concurrent Future chained to
an asyncio one, the executor's queue and its wake-ups): a tenth of a 32-row Translate's
server time on 2 cores. Here a call is one queue put and one ``call_soon_threadsafe``;
and calls on one map that wait for a thread together are run as one product
(:class:`Coalescer`), as Triton's dynamic batcher does, without its delay.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Hashable
from contextlib import suppress
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")
ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
log = logging.getLogger("mapper.service")


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

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` on a thread, for its effects (callable from any thread)."""
        self._queue.put((None, None, fn, None))

    def _serve(self) -> None:
        if self._initializer is not None:
            self._initializer()
        while (item := self._queue.get()) is not None:
            loop, future, fn, done = item
            if future is None:  # posted
                try:
                    fn()
                except Exception:
                    log.exception("compute task failed")
                continue
            result = error = None
            # Read from this thread: at worst a call cancelled this instant still runs.
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


class _Waiting(NamedTuple, Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    done: Callable[[], None] | None


class Coalescer(Generic[ItemT, ResultT]):
    """Calls on one key that wait for a compute thread together run as one: ``run(key,
    items)`` returns one result (or exception) per item. The first call of a key queues a
    task; calls of that key arriving before a thread picks it up join it, up to ``limit``
    in total ``size``. So an idle server runs each call alone, with no added delay, and a
    busy one does fewer, larger products (one 256-row product costs less than eight of 32).
    ``done`` of each item runs on the thread when its batch ends."""

    def __init__(
        self,
        compute: ComputeThreads,
        run: Callable[[Hashable, list[ItemT]], list[ResultT | BaseException]],
        *,
        size: Callable[[ItemT], int],
        limit: int,
    ) -> None:
        self._compute = compute
        self._run_items = run
        self._size = size
        self._limit = limit
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, list[_Waiting[ItemT, ResultT]]] = {}

    def submit(
        self, key: Hashable, item: ItemT, done: Callable[[], None] | None = None
    ) -> asyncio.Future[ResultT]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        with self._lock:
            waiting = self._waiting.get(key)
            start = waiting is None
            if start:
                waiting = self._waiting[key] = []
            waiting.append(_Waiting(item, future, done))
        if start:
            self._compute.post(lambda: self._run(key, loop))
        return future

    def waiting(self) -> int:
        """How many calls wait for a thread."""
        with self._lock:
            return sum(len(w) for w in self._waiting.values())

    def _run(self, key: Hashable, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            waiting = self._waiting.pop(key)
            total, n = 0, 0
            for w in waiting:
                total += self._size(w.item)
                if n and total > self._limit:
                    break
                n += 1
            taken, rest = waiting[:n], waiting[n:]
            if rest:
                self._waiting[key] = rest
        if rest:
            self._compute.post(lambda: self._run(key, loop))
        live = [w for w in taken if not w.future.cancelled()]  # given up while queued: not run
        try:
            results: list[Any] = self._run_items(key, [w.item for w in live]) if live else []
        except BaseException as e:  # the awaiting calls get it, whatever it is
            results = [e] * len(live)
        for w in taken:
            if w.done is not None:
                w.done()
        settle = [(w.future, r) for w, r in zip(live, results, strict=True)]
        with suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle_all, settle)


def _settle_all(settle: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in settle:
        if isinstance(result, BaseException):
            _settle(future, None, result)
        else:
            _settle(future, result, None)
