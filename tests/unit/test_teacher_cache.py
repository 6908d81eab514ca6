"""The teacher's response cache shared by several processes, as the Ray workers on one machine share it."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

from datapipe.teacher.cache import ResponseCache

PROCESSES = 4
ROUNDS = 25


def _open_and_write(path: str, who: int, start: Any) -> str:
    start.wait()  # every process opens the new file at the same moment
    try:
        cache = ResponseCache(path)
        for k in range(5):
            cache.put(f"{who}-{k}", {"text": f"reply {who}-{k}"})
        cache.close()
    except Exception as exc:  # reported to the test, which names it
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_processes_opening_a_new_cache_at_once_all_write_to_it(tmp_path: Path) -> None:
    """Switching a new file to WAL fails at once ("database is locked") while another process opens it:
    SQLite's busy timeout does not cover it. Before the switch was retried this failed in about one round in ten."""
    ctx = mp.get_context("fork")
    outcomes: list[str] = []
    with ctx.Manager() as manager, ctx.Pool(PROCESSES) as pool:
        start = manager.Barrier(PROCESSES)  # reusable: it lets the processes go together in every round
        for round_ in range(ROUNDS):
            path = str(tmp_path / f"cache-{round_}.sqlite")
            outcomes += pool.starmap(_open_and_write, [(path, who, start) for who in range(PROCESSES)])
            assert len(ResponseCache(path)) == PROCESSES * 5
    assert outcomes == ["ok"] * (PROCESSES * ROUNDS), sorted(set(outcomes))
