"""Adaptive concurrency for the teacher: AIMD on rate limits, and a shared pause for Retry-After.

A rate-limited server answers 429 when too many requests arrive at once. Sending at a fixed
concurrency above the server's limit turns most requests into 429s and retries (a retry
storm); sending at 1 leaves capacity unused. The limiter does what TCP does with congestion:

* multiplicative decrease: on a 429, or a request that timed out (an overloaded server that
  queues instead of refusing), the limit is halved, rounding up (never below ``min_limit``),
  once per window: signals for requests sent before the last decrease do not halve it again;
* additive increase: after ``limit`` successes in a row without such a signal the limit grows by one,
  up to ``max_limit``. The limit that drew the last 429 is remembered as a ceiling: growing
  back to it takes ``PROBE_WINDOWS`` times as many successes, so the limiter stays just below a
  server's limit most of the time instead of probing it (and being paused by Retry-After) every
  few requests. A full window at the ceiling without a signal forgets it: the limit has lifted.
  A timeout sets no ceiling: it may be one hung request rather than a limit;
* a ``Retry-After`` answer pauses every new request until that moment, not only the one that
  got it, so the other requests in the queue do not run into the same wall.

The limit starts at ``max_limit``: an unlimited server is used at full concurrency at once.
Every change is kept in ``trace`` (seconds since the session started, new limit, why).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

TRACE_LIMIT = 500
PROBE_WINDOWS = 8


@dataclass
class ConcurrencyTrace:
    """The limit over time: a change list and counts; goes into the manifest and the summary."""

    start: int
    changes: list[tuple[float, int, str]] = field(default_factory=list)
    decreases: int = 0
    increases: int = 0
    peak_in_flight: int = 0
    dropped: int = 0

    def record(self, t: float, limit: int, why: str) -> None:
        if len(self.changes) < TRACE_LIMIT:
            self.changes.append((round(t, 3), limit, why))
        else:
            self.dropped += 1

    def summary(self, final: int) -> dict[str, Any]:
        limits = [self.start] + [c[1] for c in self.changes]
        return {
            "start": self.start,
            "min": min(limits),
            "max": max(limits),
            "final": final,
            "decreases": self.decreases,
            "increases": self.increases,
            "peak_in_flight": self.peak_in_flight,
            "trace": [list(c) for c in self.changes],
            "trace_dropped": self.dropped,
        }


class AdaptiveLimiter:
    """Bounds requests in flight; the bound adapts to 429s and timeouts when ``adaptive`` is on."""

    def __init__(
        self,
        max_limit: int,
        min_limit: int = 1,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_limit = max(1, max_limit)
        self.min_limit = max(1, min(min_limit, self.max_limit))
        self.adaptive = adaptive
        self.clock = clock
        self.limit = self.max_limit
        self.in_flight = 0
        self.paused_until = 0.0
        self.t0 = clock()
        self.trace = ConcurrencyTrace(start=self.limit)
        self._last_decrease = -1.0
        self._streak = 0
        self.ceiling: int | None = None
        self._cond = asyncio.Condition()

    def now(self) -> float:
        return self.clock() - self.t0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[float]:
        """Hold one request slot; yields the time (``now()``) the request was let through."""
        async with self._cond:
            while True:
                wait = self.paused_until - self.now()
                if wait > 0:
                    try:
                        await asyncio.wait_for(self._cond.wait(), timeout=wait)
                    except TimeoutError:
                        pass
                    continue
                if self.in_flight < self.limit:
                    break
                await self._cond.wait()
            self.in_flight += 1
            self.trace.peak_in_flight = max(self.trace.peak_in_flight, self.in_flight)
        try:
            yield self.now()
        finally:
            async with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    async def succeeded(self) -> None:
        """A request came back: after a full window of successes, allow one more in flight."""
        if not self.adaptive or self.limit >= self.max_limit:
            self._streak = 0
            self.ceiling = None
            return
        self._streak += 1
        at_ceiling = self.ceiling is not None and self.limit >= self.ceiling
        probing = self.ceiling is not None and not at_ceiling and self.limit + 1 >= self.ceiling
        if self._streak >= self.limit * (PROBE_WINDOWS if probing else 1):
            self._streak = 0
            if at_ceiling:
                self.ceiling = None
            self.limit += 1
            self.trace.increases += 1
            self.trace.record(self.now(), self.limit, "increase")
            async with self._cond:
                self._cond.notify_all()

    def congested(self, sent_at: float, why: str) -> None:
        """A 429 or a timeout (``why``) for a request let through at ``sent_at``: halve the limit, once per window."""
        self._streak = 0
        if not self.adaptive or sent_at < self._last_decrease:
            return
        new = max(self.min_limit, (self.limit + 1) // 2)
        self._last_decrease = self.now()
        if why == "429":
            self.ceiling = self.limit
        if new != self.limit:
            self.limit = new
            self.trace.decreases += 1
            self.trace.record(self._last_decrease, new, why)

    def pause(self, seconds: float) -> None:
        """The server asked for a pause (Retry-After): no new request leaves before it ends.

        Waiters re-check the pause whenever they wake, so nobody needs waking here.
        """
        self.paused_until = max(self.paused_until, self.now() + seconds)
