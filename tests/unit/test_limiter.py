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
        await asyncio.sleep(0.01)
        lim.congested(lim.now(), "429")
        return lim

    lim = asyncio.run(go())
    assert [c[1] for c in lim.trace.changes] == [4, 2, 1]  # halved, rounding up
    assert lim.limit == 1 and lim.trace.decreases == 3


def test_successes_grow_the_limit_back_slowly_near_the_last_ceiling() -> None:
    async def go() -> tuple[AdaptiveLimiter, list[int]]:
        lim = AdaptiveLimiter(8)
        lim.congested(lim.now(), "429")
        assert (lim.limit, lim.ceiling) == (4, 8)
        limits = []
        for _ in range(4 + 5 + 6 + 7 * 8 + 8 + 10):
            await lim.succeeded()
            limits.append(lim.limit)
        return lim, limits

    lim, limits = asyncio.run(go())
    assert limits.index(5) == 3 and limits.index(6) == 3 + 5 and limits.index(7) == 3 + 5 + 6
    assert limits.index(8) == 3 + 5 + 6 + 7 * 8  # the step back to the ceiling took 8 windows
    assert lim.limit == 8 and lim.ceiling is None
    summary = lim.trace.summary(lim.limit)
    assert (summary["start"], summary["min"], summary["max"], summary["final"]) == (8, 4, 8, 8)


def test_a_full_window_at_the_ceiling_forgets_it() -> None:
    async def go() -> AdaptiveLimiter:
        lim = AdaptiveLimiter(8)
        lim.congested(lim.now(), "429")  # 8 -> 4, ceiling 8
        await asyncio.sleep(0.001)
        lim.congested(lim.now(), "429")  # 4 -> 2, ceiling 4
        for _ in range(2 + 3 * 8):  # 2 -> 3 fast, 3 -> 4 slowly
            await lim.succeeded()
        assert (lim.limit, lim.ceiling) == (4, 4)
        for _ in range(4 + 5):  # one window at the ceiling forgets it: 5 and 6 come at the normal pace
            await lim.succeeded()
        return lim

    lim = asyncio.run(go())
    assert lim.limit == 6 and lim.ceiling is None


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
    assert lim.ceiling == 4  # set by the 429; the timeout before it set none


def test_a_timeout_halves_but_leaves_no_ceiling() -> None:
    async def go() -> AdaptiveLimiter:
        lim = AdaptiveLimiter(8)
        lim.congested(lim.now(), "timeout")
        for _ in range(4 + 5 + 6 + 7):  # back to 8 at the normal pace: a hung request is not a limit
            await lim.succeeded()
        return lim

    lim = asyncio.run(go())
    assert lim.limit == 8 and lim.trace.decreases == 1 and lim.trace.increases == 4
