"""A teacher outage loses nothing: requests that failed in a way a retry can fix are pending, never cached as
done; the run publishes nothing and exits 4; the next run sends exactly the missing requests and ends with
the sample set of a run that never saw the outage.

The teacher is a real `python -m llama_cpp.server` (SmolLM2); the outage is its port closed, or the fault
proxy in front of it going down after a number of requests (it stops listening, as a stopped server does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.pending import PENDING_EXIT
from datapipe.records import Sample
from datapipe.store import RunStore
from datapipe.versions import list_versions
from tests.conftest import (
    FAST_GENERATE,
    TINY_TEACHER_FILTER,
    LlamaServer,
    PrefectServer,
    free_port,
    gguf_path,
    stop,
    wait_until_up,
    write_config,
)
from tests.integration.faultproxy import FaultProxy
from tests.integration.refresh_kit import refresh_config, write_docs

pytestmark = pytest.mark.integration
runner = CliRunner()


@contextmanager
def llama_server_on(port: int, log: Path) -> Iterator[LlamaServer]:
    """A real llama.cpp server on a given port (the session's fixture picks its own), started on demand."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--model_alias", "smollm2"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_until_up(proc, f"http://127.0.0.1:{port}/v1/models", log, "llama_cpp.server")
        yield LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", log_path=log)
    finally:
        stop(proc, 10)


def _config(root: Path, corpus_docs: Path, base_url: str, run_id: str = "outage") -> Path:
    docs = root / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name in ["ideas-page.html", "handbook-1p.docx"]:
        shutil.copy(corpus_docs / name, docs / name)
    return write_config(
        root / "pipeline.yaml",
        run_id=run_id,
        store="runs",
        sources=["docs"],
        teacher={
            "backend": "openai",
            "model": "smollm2",
            "base_url": base_url,
            "max_concurrency": 2,
            "max_retries": 2,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.2,
            "unreachable_after": 3,
        },
        generate={**FAST_GENERATE, "max_chunks": 6},
        filter={"grounding": {"enabled": False}, **TINY_TEACHER_FILTER},
    )


def _run(cfg: Path) -> Any:
    return runner.invoke(app, ["run", str(cfg)], catch_exceptions=False)


def _cache_keys(root: Path) -> int:
    with sqlite3.connect(root / "runs" / ".cache" / "teacher.sqlite") as db:
        return int(db.execute("SELECT count(*) FROM responses").fetchone()[0])


def _outcome(store: RunStore) -> dict[str, Any]:
    """What a user gets from the run: sample ids generated, kept, rejected (by reason) and published."""
    return {
        "generated": sorted(s.id for s in store.iter_records("generate", Sample)),
        "kept": sorted(s.id for s in store.iter_records("filter", Sample)),
        "rejects": sorted((r.reason, r.record_id) for st in ("generate", "filter") for r in store.iter_rejects(st)),
        "published": sorted(
            pq.read_table(store.root / "versions" / "latest" / "chatml" / "train.parquet")["id"].to_pylist()
        ),
    }


def _reference(tmp: Path, corpus_docs: Path, outage_root: Path) -> dict[str, Any]:
    """A run that never saw an outage, on the same answers: the outage run's response cache, a teacher that is
    not there (any request it had to send would make it fail)."""
    ref = tmp / "reference"
    (ref / "runs" / ".cache").mkdir(parents=True)
    # SQLite's backup, not a file copy: answers may still sit in the write-ahead log of an open connection
    with (
        sqlite3.connect(outage_root / "runs" / ".cache" / "teacher.sqlite") as src,
        sqlite3.connect(ref / "runs" / ".cache" / "teacher.sqlite") as dst,
    ):
        src.backup(dst)
    cfg = _config(ref, corpus_docs, f"http://127.0.0.1:{free_port()}/v1")
    result = _run(cfg)
    assert result.exit_code == 0, result.output
    gen = RunStore(ref / "runs" / "outage").read_manifest("generate")
    assert gen is not None and gen["teacher"]["calls"] == 0
    return _outcome(RunStore(ref / "runs" / "outage"))


def _assert_stopped_pending(result: Any, store: RunStore, endpoint: str) -> dict[str, Any]:
    assert result.exit_code == PENDING_EXIT, result.output
    assert "pending" in result.output and "run the same command again" in " ".join(result.output.split())
    gen = store.read_manifest("generate")
    assert gen is not None and gen["counts"]["pending"] > 0
    assert gen["pending_by_reason"] == {"teacher_unavailable": gen["counts"]["pending"]}
    assert "teacher_unavailable" not in gen["rejects_by_reason"] and "teacher_error" not in gen["rejects_by_reason"]
    assert endpoint in gen["teacher"]["unreachable"]
    assert list_versions(store) == [] and store.read_manifest("publish") is None  # nothing published
    last = json.loads((store.root / "last_run.json").read_text())
    assert last["status"] == "pending" and endpoint in last["message"] and last["pending"]["generate"] > 0
    # each shard that met the outage is partial: its own key is absent, so the next run computes it again
    assert all(s["key"].startswith("partial-") for s in gen["shards"] if s.get("pending"))
    return gen


def test_teacher_down_then_up(tmp_path: Path, corpus_docs: Path) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/v1"
    root = tmp_path / "outage"
    cfg = _config(root, corpus_docs, endpoint)
    store = RunStore(root / "runs" / "outage")

    first = _run(cfg)  # nothing listens on the port
    gen1 = _assert_stopped_pending(first, store, endpoint)
    assert gen1["counts"]["out"] == 0 and gen1["teacher"]["calls"] > 0
    conn = sum(n for k, n in gen1["teacher"]["faults"].items() if k.startswith("connection error"))
    # the Prefect task ran 3 times (2 retries); each attempt stopped after unreachable_after=3 failures in a row
    # (+ at most the other request in flight), and the manifest counts the attempts together
    assert 3 * 3 <= conn <= 3 * (3 + 1), gen1["teacher"]["faults"]

    with llama_server_on(port, tmp_path / "server.log") as server:
        second = _run(cfg)
        assert second.exit_code == 0, second.output
        sent = server.chat_requests()
        gen2 = store.read_manifest("generate")
        assert gen2 is not None and gen2["counts"]["pending"] == 0 and "pending_by_reason" not in gen2
        assert not any(s["key"].startswith("partial-") for s in gen2["shards"])
        # every request reached the server once: as many as the run's distinct requests, none twice
        assert sent == gen2["teacher"]["calls"] == _cache_keys(root) > 0
        assert gen2["teacher"]["retries"] == 0
        assert list_versions(store) == ["v0001"]
        assert json.loads((store.root / "last_run.json").read_text())["status"] == "completed"

        third = _run(cfg)  # complete now: reused, nothing sent
        assert third.exit_code == 0, third.output
        assert server.chat_requests() == sent
        assert store.read_manifest("generate")["counts"]["shards_reused"] == gen2["counts"]["shards"]

    assert _outcome(store) == _reference(tmp_path, corpus_docs, root)


def test_outage_mid_stage_stops_early_and_resumes(tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer) -> None:
    upstream = llama_server.base_url.removesuffix("/v1")
    port = free_port()
    root = tmp_path / "outage"
    with FaultProxy(upstream, port, refuse_after=5) as down:
        cfg = _config(root, corpus_docs, down.base_url)
        store = RunStore(root / "runs" / "outage")
        first = _run(cfg)
    answered_first = [a.body_sha for a in down.requests if a.fault == "ok"]
    assert len(answered_first) == 5 and down.counts()["down"] >= 1
    gen1 = _assert_stopped_pending(first, store, down.base_url)
    conn = sum(n for k, n in gen1["teacher"]["faults"].items() if k.startswith("connection error"))
    assert conn <= 3 * (3 + 1), gen1["teacher"]["faults"]  # 3 attempts, each stopped after 3 in a row (+ in flight)
    assert _cache_keys(root) == 5  # the answers received before the outage are kept

    with FaultProxy(upstream, port) as up:
        second = _run(cfg)
    assert second.exit_code == 0, second.output
    answered_second = [a.body_sha for a in up.requests if a.fault == "ok"]
    # only the missing requests: none answered before is sent again, none twice
    assert not set(answered_first) & set(answered_second)
    assert len(answered_second) == len(set(answered_second)) == len(up.requests)
    gen2 = store.read_manifest("generate")
    assert gen2["counts"]["pending"] == 0 and gen2["teacher"]["cache_hits"] >= 5
    assert len(answered_first) + len(answered_second) == _cache_keys(root)
    generated = [s.id for s in store.iter_records("generate", Sample)]
    assert len(generated) == len(set(generated)), "duplicate samples"
    assert list_versions(store) == ["v0001"]
    assert _outcome(store) == _reference(tmp_path, corpus_docs, root)


def test_allow_partial_publishes_and_records_what_is_pending(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer
) -> None:
    upstream = llama_server.base_url.removesuffix("/v1")
    root = tmp_path / "outage"
    with FaultProxy(upstream, free_port(), refuse_after=5) as down:
        cfg = _config(root, corpus_docs, down.base_url)
        result = runner.invoke(app, ["run", str(cfg), "--allow-partial"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = RunStore(root / "runs" / "outage")
    gen = store.read_manifest("generate")
    version = json.loads((store.root / "versions" / "v0001" / "version.json").read_text())
    assert version["pending"] == {"generate": gen["counts"]["pending"]} and gen["counts"]["pending"] > 0
    assert "partial:" in result.output and "pending" in result.output
    last = json.loads((store.root / "last_run.json").read_text())
    assert last["status"] == "completed_partial" and last["pending"] == version["pending"]


def test_scheduled_run_during_outage_fails_and_the_next_completes(
    tmp_path: Path, llama_server: LlamaServer, prefect_server: PrefectServer
) -> None:
    """`datapipe serve` against a real `prefect server start`: the scheduler's run while the teacher's port is
    closed ends Failed and publishes nothing; once the teacher is back, the next scheduled run completes."""
    write_docs(tmp_path / "docs")
    port = free_port()
    cfg = refresh_config(tmp_path / "pipeline.yaml", llama_server, run_id="nightly", schedule={"cron": "* * * * *"})
    data = yaml.safe_load(cfg.read_text())
    data["teacher"] |= {"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 1, "backoff_base_s": 0.05}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    store = RunStore(tmp_path / "runs" / "nightly")
    log = tmp_path / "serve.log"
    env = prefect_server.env() | {"PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "datapipe"), "serve", str(cfg)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def finished_runs(deadline_s: float, want: str) -> list[dict[str, Any]]:
        deadline = time.time() + deadline_s
        while True:
            found = prefect_server.post("/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})
            ids = [d["id"] for d in found]
            runs = (
                prefect_server.post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": ids}}}) if ids else []
            )
            done = sorted(
                (r for r in runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")),
                key=lambda r: r["start_time"],
            )
            if any(r["state_type"] == want for r in done):
                return done
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, (
                f"no {want} scheduled run in {deadline_s} s: {runs}\n{log.read_text()[-3000:]}"
            )
            time.sleep(2)

    try:
        done = finished_runs(240, "FAILED")
        assert [r["state_type"] for r in done] == ["FAILED"], done
        assert done[0]["auto_scheduled"] is True
        last = json.loads((store.root / "last_run.json").read_text())
        assert last["status"] == "pending" and f"127.0.0.1:{port}" in last["message"]
        assert list_versions(store) == []
        with FaultProxy(llama_server.base_url.removesuffix("/v1"), port) as proxy:  # the teacher is back
            done = finished_runs(240, "COMPLETED")
        assert done[-1]["state_type"] == "COMPLETED" and proxy.forwarded > 0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    last = json.loads((store.root / "last_run.json").read_text())
    assert last["status"] == "completed" and last["version"] == "v0001", last
    gen = store.read_manifest("generate")
    assert gen["counts"]["pending"] == 0 and gen["counts"]["out"] > 0


def test_judge_and_preference_keep_pending_until_the_teacher_is_back(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer
) -> None:
    """The same rule in the other stages that ask the teacher, each run alone: the filter's judge and the
    preference pairs meet a closed port (pending, exit 4), then the teacher behind it (complete, exit 0)."""
    upstream = llama_server.base_url.removesuffix("/v1")
    port = free_port()
    root = tmp_path / "stages"
    cfg = _config(root, corpus_docs, f"http://127.0.0.1:{port}/v1")
    data = yaml.safe_load(cfg.read_text())
    data["generate"]["max_chunks"] = 3
    data["generate"]["preference"] = {
        "enabled": True,
        "max_prompts": 2,
        "candidates": [{"max_new_tokens": 24, "temperature": 0.2, "seed": 1}],
        "judge_params": {"max_new_tokens": 24, "temperature": 0.0},
    }
    data["filter"]["judge"] = {"enabled": True, "kinds": ["instruction"], "min_faithfulness": 1, "min_quality": 1}
    data["filter"]["min_response_tokens"] = 0
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    store = RunStore(root / "runs" / "outage")

    def invoke(*args: str) -> Any:
        return runner.invoke(app, [*args, str(cfg)], catch_exceptions=False)

    with FaultProxy(upstream, port):
        for stage in ("extract", "chunk", "generate"):
            assert invoke(stage).exit_code == 0
    samples = list(store.iter_records("generate", Sample))
    assert samples, "nothing generated: the judge would have nothing to do"

    for stage in ("filter", "preference"):
        if stage == "preference":  # SmolLM2's verdicts may drop every sample: pairs from the unjudged ones
            data["filter"].pop("judge")
            cfg.write_text(yaml.safe_dump(data, sort_keys=False))
            assert invoke("filter").exit_code == 0  # no judge: no teacher
            assert list(store.iter_records("filter", Sample)), "nothing kept: preference would have nothing to do"
        down = invoke(stage)  # nothing listens on the port
        assert down.exit_code == PENDING_EXIT, down.output
        m = store.read_manifest(stage)
        assert m["counts"]["pending"] > 0 and set(m["pending_by_reason"]) == {"teacher_unavailable"}
        assert "teacher_unavailable" not in m["rejects_by_reason"]
        assert f"127.0.0.1:{port}" in m["teacher"]["unreachable"]
        assert m["counts"]["in"] == m["counts"]["out"] + m["counts"]["rejected"] + m["counts"]["pending"]
        with FaultProxy(upstream, port) as proxy:
            up = invoke(stage)
        assert up.exit_code == 0, up.output
        m = store.read_manifest(stage)
        assert m["counts"]["pending"] == 0 and proxy.forwarded > 0
        assert "teacher_unavailable" not in m["rejects_by_reason"]
        assert m["counts"]["in"] == m["counts"]["out"] + m["counts"]["rejected"]
        if stage == "filter":
            judged = [s for s in store.iter_records("filter", Sample) if "judge" in s.verdicts]
            assert judged or m["dropped_by_step"].get("judge"), "the judge judged nothing"
