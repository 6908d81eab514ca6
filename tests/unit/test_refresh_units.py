"""Plain logic of incremental runs: the source diff, the budget, the run lock, the deployments file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datapipe.config import BudgetConfig, load_config
from datapipe.errors import ConfigError
from datapipe.store import RunLockedError, run_lock
from datapipe.teacher.budget import Budget, BudgetExceeded
from datapipe.versions import diff_sources
from flows.deployments import prefect_yaml
from tests.conftest import REPO, write_config


def test_source_diff_sorts_added_changed_deleted_unchanged() -> None:
    prev = {"a": "1", "b": "2", "c": "3"}
    cur = {"a": "1", "b": "9", "d": "4"}
    d = diff_sources(prev, cur)
    assert (d.added, d.changed, d.deleted, d.unchanged) == (["d"], ["b"], ["c"], ["a"])


def test_budget_refuses_the_request_that_could_cross_the_cap_and_every_later_one() -> None:
    b = Budget(BudgetConfig(max_tokens=1000))
    r1 = b.reserve(300, 100)
    r2 = b.reserve(300, 100)  # 800 reserved
    with pytest.raises(BudgetExceeded, match="budget.max_tokens=1000"):
        b.reserve(150, 100)
    b.settle(r1, 280, 20)
    b.settle(r2, 290, 10)  # 600 spent, 400 left, but the run has stopped
    with pytest.raises(BudgetExceeded):
        b.reserve(10, 10)
    assert b.as_dict()["tokens"] == 600 and b.calls == 2


def test_cost_cap_needs_prices_and_counts_them() -> None:
    with pytest.raises(ValueError, match="needs budget.input_price_per_mtok"):
        BudgetConfig(max_cost=1.0)
    b = Budget(BudgetConfig(max_cost=0.01, input_price_per_mtok=10.0, output_price_per_mtok=30.0))
    r = b.reserve(500, 100)  # 0.005 + 0.003
    b.settle(r, 500, 100)
    assert b.spent_cost == pytest.approx(0.008)
    with pytest.raises(BudgetExceeded, match="cost budget reached"):
        b.reserve(500, 100)


def test_run_lock_refuses_a_second_process_and_frees_itself_when_the_holder_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom datapipe.store import run_lock\n"
            "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (tmp_path / ".samples.123.tmp").write_text("left by a killed writer")
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            with run_lock(tmp_path):
                pass
        assert (tmp_path / ".samples.123.tmp").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:
        try:
            with run_lock(tmp_path):
                break
        except RunLockedError:
            assert time.time() < deadline
            time.sleep(0.1)
    assert not (tmp_path / ".samples.123.tmp").exists()  # swept once the lock was taken


def test_repository_prefect_yaml_is_generated_from_the_example_pipeline() -> None:
    cfg = load_config(REPO / "examples" / "pipeline.yaml")
    assert (REPO / "prefect.yaml").read_text(encoding="utf-8") == prefect_yaml(cfg, "examples/pipeline.yaml")


def test_a_bad_cron_names_the_key(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path / "p.yaml", sources=["docs"], schedule={"export_cron": "every day"}))
    with pytest.raises(ConfigError, match="schedule.export_cron"):
        prefect_yaml(cfg, "p.yaml")
