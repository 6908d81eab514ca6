"""SIGKILL a `datapipe run` at random moments and compare what it finally publishes with an uninterrupted run.

Used by tests/integration/test_crash_resume.py (a few kills) and bench/bench_crash.py (many).
Each attempt runs the real command in its own process group, and the whole group is killed,
so nothing the run started survives it.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

DATAPIPE = str(Path(sys.executable).parent / "datapipe")


def run_once(cfg: Path, env: dict[str, str], timeout: float = 600) -> float:
    """Run `datapipe run` to the end; return its wall time."""
    t0 = time.perf_counter()
    proc = subprocess.run([DATAPIPE, "run", str(cfg)], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"datapipe run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def _busy_part(run_dir: Path, since: float) -> str:
    """The run folder's part written last before the kill (where the run was), or 'startup'."""
    newest, where = since, "startup"
    if run_dir.is_dir():
        for p in run_dir.rglob("*"):
            try:
                m = p.lstat().st_mtime
            except OSError:
                continue
            if m > newest and p.name not in (".lock", "config.json"):
                newest, where = m, p.relative_to(run_dir).parts[0]
    return where


@dataclass
class KillSeries:
    kills: list[dict[str, Any]] = field(default_factory=list)
    finished_early: int = 0  # attempts that ended before their kill came
    before_completion: int = 0  # kills before the first attempt that finished (interrupting real work)
    seed: int = 0


def kill_at_random_points(
    cfg: Path, env: dict[str, str], n_kills: int, max_delay: float, seed: int, max_attempts: int | None = None
) -> KillSeries:
    """Start the run again and again, SIGKILLing its process group after a random delay, until ``n_kills`` kills
    hit a live process. The delays are uniform in [0.2 s, limit]: ``max_delay`` at first, then the length of the
    last attempt that finished before its kill (once the run has completed, a rerun is shorter)."""
    rng = random.Random(seed)
    series = KillSeries(seed=seed)
    run_dir = cfg.parent / "runs" / "refresh"
    attempts = 0
    limit = max_delay
    while len(series.kills) < n_kills and attempts < (max_attempts or 3 * n_kills):
        attempts += 1
        delay = rng.uniform(0.2, limit)
        started = time.time()
        proc = subprocess.Popen(
            [DATAPIPE, "run", str(cfg)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=delay)
            series.finished_early += 1
            limit = min(limit, time.time() - started)
        except subprocess.TimeoutExpired:
            where = _busy_part(run_dir, started)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            series.kills.append({"after_s": round(delay, 2), "during": where})
            series.before_completion += int(series.finished_early == 0)
    return series


def published_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of the latest version's chatml export, sorted by id."""
    rows = pq.read_table(run_dir / "versions" / "latest" / "chatml" / "train.parquet").to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def cache_keys(store: Path) -> set[str]:
    with sqlite3.connect(store / ".cache" / "teacher.sqlite") as db:
        return {k for (k,) in db.execute("SELECT key FROM responses")}


def rejects_by_reason(run_dir: Path) -> dict[str, dict[str, int]]:
    import json

    out = {}
    for stage_dir in ("documents", "chunks", "samples", "filtered", "exports", "versions"):
        m = run_dir / stage_dir / "manifest.json"
        if m.is_file():
            out[stage_dir] = json.loads(m.read_text())["rejects_by_reason"]
    return out
