"""The teacher's adaptive concurrency limiter (AIMD) on its own: halving, growing back, pausing."""

from __future__ import annotations

import asyncio
import time

from datapipe.teacher.limiter import AdaptiveLimiter


def test_a_429_halves_the_limit_once_per_window() -> None:
    async def go() -> AdaptiveLimiter:
        lim = AdaptiveLimiter(8)
        sent = lim.now()
        lim.congested(sent, "429")
        lim.congested(sent, "429")  # sent before the decrease: the same burst, no second halving
        await asyncio.sleep(0.01)
        lim.congested(lim.now(), "429")  # sent after it: a new signal
        return lim

    lim = asyncio.run(go())
    assert lim.limit == 2
    assert [c[1] for c in lim.trace.changes] == [4, 2]
    assert lim.trace.decreases == 2


def test_successes_grow_the_limit_back_one_window_at_a_time() -> None:
    async def go() -> AdaptiveLimiter:
        lim = AdaptiveLimiter(4, min_limit=1)
        for _ in range(3):
            lim.congested(lim.now(), "429")
            await asyncio.sleep(0.001)
        assert lim.limit == 1
        for _ in range(1 + 2 + 3 + 10):  # window of 1, then 2, then 3 successes; then at the ceiling
            await lim.succeeded()
        return lim

    lim = asyncio.run(go())
    assert lim.limit == 4
    assert [c[1:] for c in lim.trace.changes][-3:] == [(2, "increase"), (3, "increase"), (4, "increase")]
    summary = lim.trace.summary(lim.limit)
    assert (summary["start"], summary["min"], summary["max"], summary["final"]) == (4, 1, 4, 4)


def test_min_concurrency_is_a_floor_and_fixed_mode_never_moves() -> None:
    async def go() -> tuple[AdaptiveLimiter, AdaptiveLimiter]:
        floor = AdaptiveLimiter(8, min_limit=3)
        fixed = AdaptiveLimiter(8, adaptive=False)
        for _ in range(4):
            for lim in (floor, fixed):
                lim.congested(lim.now(), "429")
            await asyncio.sleep(0.001)
        return floor, fixed

    floor, fixed = asyncio.run(go())
    assert floor.limit == 3
    assert fixed.limit == 8 and fixed.trace.changes == []


def test_slots_never_exceed_the_limit() -> None:
    peak = 0

    async def go() -> None:
        nonlocal peak
        lim = AdaptiveLimiter(3)

        async def work() -> None:
            nonlocal peak
            async with lim.slot():
                peak = max(peak, lim.in_flight)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(work() for _ in range(12)))

    asyncio.run(go())
    assert peak == 3


def test_retry_after_pauses_every_new_request() -> None:
    started: list[float] = []

    async def go() -> float:
        lim = AdaptiveLimiter(4)
        t0 = time.monotonic()
        lim.pause(0.3)

        async def work() -> None:
            async with lim.slot():
                started.append(time.monotonic() - t0)

        await asyncio.gather(*(work() for _ in range(4)))
        return t0

    asyncio.run(go())
    assert len(started) == 4 and min(started) >= 0.29


def test_the_trace_says_why_the_limit_fell() -> None:
    async def go() -> AdaptiveLimiter:
        lim = AdaptiveLimiter(8)
        lim.congested(lim.now(), "timeout")
        await asyncio.sleep(0.001)
        lim.congested(lim.now(), "429")
        return lim

    lim = asyncio.run(go())
    assert [(c[1], c[2]) for c in lim.trace.changes] == [(4, "timeout"), (2, "429")]
