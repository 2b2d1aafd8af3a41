"""Admission by cost: a call is let in, or refused at once with the reason, before any work.

A request's :class:`~mapper.serving.translator.Cost` is known from its shape before any
work: multiply-adds (rows x its map's cost per row) and the bytes of its reply. Three
budgets bound what callers can make a server do:

- per call: no single call may cost more than ``call_macs`` (a client splits larger work);
- in flight: the calls admitted and not yet finished together hold at most
  ``inflight_macs`` of work and ``inflight_bytes`` of requests and replies, which bounds the
  CPU queue and the memory a burst can take;
- per client (when clients are known by their tokens): a token bucket refilled at
  ``client_macs_per_s``, holding at most one maximal call, so no client takes more than
  its share over time. Each call also costs ``CALL_MACS`` there, so floods of tiny calls
  count too;
- per client, bytes: receiving and parsing a request costs the server before its cost is
  known (about 1 ms of the event loop per MiB), refused or not. Each request's bytes are
  charged to a second bucket, refilled at ``client_bytes_per_s`` and holding one maximal
  message; while it is in debt, the client's calls are refused by :meth:`Admission.check_rate`
  before their requests are read, so no client floods the server with large requests. Below
  half its allowance, a client has one request read at a time: reading a maximal message
  holds the event loop for tens of ms, and calls arriving together would all be read.

Refusals are :class:`~mapper.errors.LimitExceeded` (RESOURCE_EXHAUSTED over gRPC).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mapper.errors import LimitExceeded

#: What one call costs a client's rate budget besides its arithmetic (protocol work, about
#: 0.1 ms of a core).
CALL_MACS = 2**20
#: Seconds after which a request let in to be read but never charged (its client went away
#: mid-message) no longer counts as being read.
READ_EXPIRY = 5.0
GIGA = 1e9


@dataclass(frozen=True)
class Budgets:
    """Limits in multiply-adds and bytes; ``client_macs_per_s`` None: no per-client limit."""

    call_macs: float = 16 * GIGA
    inflight_macs: float = 64 * GIGA
    inflight_bytes: int = 1 << 30
    client_macs_per_s: float | None = None
    client_bytes_per_s: float | None = None
    client_burst_bytes: int = 64 << 20


@dataclass
class _Bucket:
    level: float
    at: float

    def refill(self, now: float, rate: float, capacity: float) -> float:
        self.level = min(capacity, self.level + (now - self.at) * rate)
        self.at = now
        return self.level


@dataclass
class Ticket:
    """Admitted work; ``release()`` (or leaving the ``with`` block) returns its budget once."""

    _release: Callable[[], None] | None = field(repr=False)

    def release(self) -> None:
        if self._release is not None:
            self._release, release = None, self._release
            release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    """Thread-safe accounting of the budgets (see the module's docstring)."""

    def __init__(self, budgets: Budgets | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.budgets = budgets or Budgets()
        self._clock = clock
        self._lock = threading.Lock()
        self.inflight_macs = 0.0
        self.inflight_bytes = 0
        self._buckets: dict[str, _Bucket] = {}
        self._byte_buckets: dict[str, _Bucket] = {}
        self._reading: dict[str, deque[float]] = {}  # when each unread admitted request was let in

    def admit(
        self, macs: float, nbytes: int, *, client: str | None = None, what: str = "this call"
    ) -> Ticket:
        """A :class:`Ticket` for work of ``macs`` multiply-adds holding ``nbytes`` bytes, or
        :class:`LimitExceeded` saying which budget it would break and what to do."""
        self._admit(macs, nbytes, client, what, hold=True)

        def release() -> None:
            with self._lock:
                self.inflight_macs -= macs
                self.inflight_bytes -= nbytes

        return Ticket(release)

    def check(self, macs: float, nbytes: int, *, client: str | None = None, what: str = "this call") -> None:
        """:meth:`admit` for work done at once, before the calling thread does anything else
        (a small call on the event loop): the budgets are checked and the client charged,
        and nothing stays held."""
        self._admit(macs, nbytes, client, what, hold=False)

    def _admit(self, macs: float, nbytes: int, client: str | None, what: str, hold: bool) -> None:
        b = self.budgets
        if macs > b.call_macs:
            raise LimitExceeded(
                f"{what} costs {macs / GIGA:.1f} G multiply-adds, over the per-call budget of "
                f"{b.call_macs / GIGA:.1f} G: send it in smaller requests"
            )
        with self._lock:
            if self.inflight_macs and self.inflight_macs + macs > b.inflight_macs:
                raise LimitExceeded(
                    f"server busy: {self.inflight_macs / GIGA:.1f} G multiply-adds in flight, and {what}'s "
                    f"{macs / GIGA:.1f} G would exceed the budget of {b.inflight_macs / GIGA:.1f} G; "
                    "retry with backoff"
                )
            if self.inflight_bytes and self.inflight_bytes + nbytes > b.inflight_bytes:
                raise LimitExceeded(
                    f"server busy: {self.inflight_bytes / 2**20:.0f} MiB of requests and replies in "
                    f"flight, and {what}'s {nbytes / 2**20:.0f} MiB would exceed the budget of "
                    f"{b.inflight_bytes / 2**20:.0f} MiB; retry with backoff"
                )
            if client is not None and b.client_macs_per_s is not None:
                self._charge(client, macs + CALL_MACS)
            if hold:
                self.inflight_macs += macs
                self.inflight_bytes += nbytes

    def _charge(self, client: str, macs: float) -> None:
        rate = self.budgets.client_macs_per_s
        assert rate is not None
        capacity = self.budgets.call_macs + CALL_MACS
        now = self._clock()
        bucket = self._buckets.setdefault(client, _Bucket(capacity, now))
        if bucket.refill(now, rate, capacity) < macs:
            wait = (macs - bucket.level) / rate
            raise LimitExceeded(
                f"client {client!r} is over its rate of {rate / GIGA:.2f} G multiply-adds per second; "
                f"retry in {wait:.2f} s"
            )
        bucket.level -= macs

    def _byte_bucket(self, client: str, rate: float) -> _Bucket:
        capacity, now = self.budgets.client_burst_bytes, self._clock()
        bucket = self._byte_buckets.setdefault(client, _Bucket(capacity, now))
        bucket.refill(now, rate, capacity)
        return bucket

    def check_rate(self, client: str | None) -> None:
        """Before a call's request is read: :class:`LimitExceeded` while ``client`` owes
        bytes, having sent more than its byte rate allows, or while another of its requests
        is being read and its allowance is below half a maximal message."""
        rate = self.budgets.client_bytes_per_s
        if client is None or rate is None:
            return
        with self._lock:
            level = self._byte_bucket(client, rate).level
            reading = self._reading.get(client)
            if reading is None:
                reading = self._reading[client] = deque()
            now = self._clock()
            while reading and now - reading[0] > READ_EXPIRY:  # a read that never came
                reading.popleft()
            if level >= 0 and not (reading and level < self.budgets.client_burst_bytes / 2):
                reading.append(now)
                return
        if level >= 0:
            # Requests are charged once read: without this, the client's calls that arrive
            # together when its allowance refills would all be read, each a maximal message.
            wait = (self.budgets.client_burst_bytes / 2 - level) / rate
            raise LimitExceeded(
                f"client {client!r} has a request being read and {level / 2**20:.1f} MiB of its "
                f"{rate / 2**20:.0f} MiB/s allowance left; retry in {wait:.2f} s"
            )
        raise LimitExceeded(
            f"client {client!r} sent more than its {rate / 2**20:.0f} MiB/s of requests; "
            f"retry in {-level / rate:.2f} s"
        )

    def byte_debt_seconds(self, client: str | None) -> float:
        """How long until ``client`` has paid back the bytes it sent beyond its rate (0: none
        owed). A stream waits this long before its next message is read."""
        rate = self.budgets.client_bytes_per_s
        if client is None or rate is None:
            return 0.0
        with self._lock:
            return max(0.0, -self._byte_bucket(client, rate).level / rate)

    def charge_bytes(self, client: str | None, nbytes: int) -> None:
        """Charge a request's ``nbytes`` to ``client`` once read (its bucket may go into debt)."""
        rate = self.budgets.client_bytes_per_s
        if client is None or rate is None:
            return
        with self._lock:
            self._byte_bucket(client, rate).level -= nbytes
            reading = self._reading.get(client)
            if reading:
                reading.popleft()
