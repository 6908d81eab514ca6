"""Crash safety: `datapipe run` SIGKILLed at random moments, then started again with the same command, publishes
exactly what an uninterrupted run publishes (given the same teacher answers), and never asks the teacher
again for an answer it already stored.

Real processes throughout: the runs talk to a real `prefect server start` and a real llama.cpp server.
The kill delays come from a seeded random generator (DATAPIPE_KILL_SEED to replay one); the seed and
where each kill landed are printed. bench/bench_crash.py runs the same with many more kills.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import LlamaServer, PrefectServer
from tests.integration.kill_kit import (
    cache_keys,
    kill_at_random_points,
    published_rows,
    rejects_by_reason,
    run_once,
)
from tests.integration.refresh_kit import refresh_config, write_docs

pytestmark = pytest.mark.integration
N_KILLS = 5


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, llama_server: LlamaServer, prefect_server: PrefectServer
) -> None:
    env = prefect_server.env()
    first, killed, again = tmp_path / "first", tmp_path / "killed", tmp_path / "uninterrupted"
    for root in (first, killed, again):  # the same documents and config; separate run stores
        write_docs(root / "docs")
        refresh_config(root / "pipeline.yaml", llama_server)

    duration = run_once(first / "pipeline.yaml", env)  # sets the range of the kill delays
    served = llama_server.chat_requests()
    seed = int(os.environ.get("DATAPIPE_KILL_SEED", time.time_ns() % 1_000_000))
    series = kill_at_random_points(killed / "pipeline.yaml", env, N_KILLS, max_delay=0.6 * duration, seed=seed)
    print(f"kill seed {seed}; uninterrupted run {duration:.1f} s; kills: {series.kills}; "
          f"{series.before_completion} before the first completion")  # fmt: skip
    assert len(series.kills) == N_KILLS, f"only {len(series.kills)} kills hit a running process (seed {seed})"
    assert series.before_completion >= 1, "no kill interrupted the first run's work"
    run_once(killed / "pipeline.yaml", env)
    requests = llama_server.chat_requests() - served
    keys = cache_keys(killed / "runs")
    # each request the server answered is stored once; at most the requests in flight at a kill
    # (max_concurrency 2 per kill) were sent again
    assert len(keys) <= requests <= len(keys) + 2 * N_KILLS, (requests, len(keys), series.kills)

    # An uninterrupted run given the same teacher answers: llama.cpp's server may answer a request
    # differently after a client died mid-request (its prompt cache), which is not what is tested here.
    (again / "runs" / ".cache").mkdir(parents=True)
    shutil.copy(killed / "runs" / ".cache" / "teacher.sqlite", again / "runs" / ".cache" / "teacher.sqlite")
    served = llama_server.chat_requests()
    run_once(again / "pipeline.yaml", env)
    assert llama_server.chat_requests() == served, "the killed runs did not store every answer a run needs"
    a, b = again / "runs" / "refresh", killed / "runs" / "refresh"
    assert published_rows(b) == published_rows(a), f"seed {seed}"
    assert sorted(p.name for p in (b / "versions").glob("v*")) == ["v0001"], "a killed run published twice"
    assert rejects_by_reason(b) == rejects_by_reason(a)
    assert cache_keys(again / "runs") == keys
