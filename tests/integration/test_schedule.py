"""Scheduled runs against a real `prefect server start` on 127.0.0.1: `datapipe serve` registers the cron
deployments of a pipeline.yaml and a run the scheduler created executes; the repository's prefect.yaml
deploys with `prefect deploy --all`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, LlamaServer, PrefectServer
from tests.integration.refresh_kit import refresh_config, write_docs

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent


def _deployments(server: PrefectServer, name: str) -> dict[str, dict[str, Any]]:
    """Deployments called ``name``, keyed by their flow's name."""
    found = server.post("/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    return {server.get(f"/flows/{d['flow_id']}")["name"]: d for d in found}


def _crons(deployment: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in deployment["schedules"]]


def test_serve_registers_cron_deployments_and_a_scheduled_run_executes(
    tmp_path: Path, llama_server: LlamaServer, prefect_server: PrefectServer
) -> None:
    write_docs(tmp_path / "docs")
    schedule = {"cron": "* * * * *", "export_cron": "30 2 * * 1", "timezone": "Europe/Berlin"}
    cfg = refresh_config(tmp_path / "pipeline.yaml", llama_server, run_id="scheduled", schedule=schedule)
    log = tmp_path / "serve.log"
    env = prefect_server.env() | {"PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "datapipe"), "serve", str(cfg)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 120
        while len(deps := _deployments(prefect_server, "scheduled")) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"deployments not registered:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        assert _crons(deps["datapipe-pipeline"]) == [("* * * * *", "Europe/Berlin")]
        assert _crons(deps["datapipe-export"]) == [("30 2 * * 1", "Europe/Berlin")]
        assert deps["datapipe-pipeline"]["parameters"] == {"target": str(cfg)}

        # the scheduler's run (every minute) is picked up and completes
        pid = deps["datapipe-pipeline"]["id"]
        deadline = time.time() + 240
        while True:
            runs = prefect_server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [pid]}}})
            done = [r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            if done:
                break
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, f"no scheduled run finished in 240 s: {runs}\n{log.read_text()[-3000:]}"
            time.sleep(2)
        run = done[0]
        assert run["state_type"] == "COMPLETED", f"{run['state']}\n{log.read_text()[-3000:]}"
        assert run["auto_scheduled"] is True and run["parameters"] == {"target": str(cfg)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    run_dir = tmp_path / "runs" / "scheduled"
    last = json.loads((run_dir / "last_run.json").read_text())
    assert last["status"] == "completed" and last["flow"] == "datapipe-pipeline" and last["version"] == "v0001"
    assert (run_dir / "versions" / "latest" / "chatml" / "train.parquet").is_file()


def test_repository_prefect_yaml_deploys_with_the_example_schedule(prefect_server: PrefectServer) -> None:
    env = prefect_server.env()
    prefect = str(BIN / "prefect")
    pool = subprocess.run(
        [prefect, "work-pool", "create", "datapipe", "--type", "process", "--overwrite"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    out = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    example = yaml.safe_load((REPO / "examples" / "pipeline.yaml").read_text())
    deps = _deployments(prefect_server, "pipeline")
    assert set(deps) == {"datapipe-pipeline", "datapipe-export"}
    tz = example["schedule"]["timezone"]
    assert _crons(deps["datapipe-pipeline"]) == [(example["schedule"]["cron"], tz)]
    assert _crons(deps["datapipe-export"]) == [(example["schedule"]["export_cron"], tz)]
    for d in deps.values():
        assert d["work_pool_name"] == "datapipe" and d["parameters"] == {"target": "examples/pipeline.yaml"}
        assert d["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO.resolve())}}
        ]
