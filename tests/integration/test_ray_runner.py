"""The pipeline on a real local Ray cluster (prefect-ray's RayTaskRunner) gives the local runner's sample set.

The cluster: `ray start --head` on 127.0.0.1 plus a second `ray start` joining it, one CPU each, so
the stages' parts run as Ray tasks in two worker processes. The teacher is the real llama.cpp server
(one request at a time, temperature 0.3 with a fixed seed, so the same prompt gives the same text);
the two runs use separate run stores and separate teacher caches, so the Ray run really calls it.
The Ray run's store is an ``s3://`` URL (the ``s3_server`` fixture: moto's S3 API on 127.0.0.1, a stand-in
for S3), so every shard a worker writes and the driver reads goes through the object store, not a shared
folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from datapipe.fsio import read_table
from datapipe.records import Chunk, Document, PreferencePair, Sample
from datapipe.runs import load_target
from datapipe.store import RunStore
from tests.conftest import (
    FAST_GENERATE,
    REPO,
    S3_ENV,
    TINY_TEACHER_FILTER,
    LlamaServer,
    S3Server,
    free_port,
    write_config,
)

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, **S3_ENV, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    # the workers import the test plugin (tests.plugins.toy) as a user's plugin would be: from their path
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["TOKENIZERS_PARALLELISM"] = "false"
    tmp = tmp_path_factory.mktemp("ray")
    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1"]
    head += ["--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp}"]
    address = f"127.0.0.1:{port}"
    try:
        for cmd in (head, [RAY, "start", f"--address={address}", "--num-cpus=1"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _config(tmp: Path, corpus_docs: Path, llama_server: LlamaServer, s3: S3Server | None = None, **runner: Any) -> Path:
    docs = tmp / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name in ["handbook-1p.docx", "fake-power-point.pptx", "ideas-page.html", "norwich-city.txt"]:
        shutil.copy(corpus_docs / name, docs / name)
    return write_config(
        tmp / "pipeline.yaml",
        run_id="scale",
        store=f"s3://{s3.bucket}/ray-runs" if s3 else "runs",
        **({"store_options": {"endpoint_url": s3.endpoint_url}} if s3 else {}),
        sources=["docs"],
        teacher={
            "backend": "openai",
            "model": "smollm2",
            "base_url": llama_server.base_url,
            "max_concurrency": 1,
            # with a store URL the cache defaults to one per machine under ~/.cache, which outlives the test
            **({"cache_path": str(tmp / "teacher-cache.sqlite")} if s3 else {}),
        },
        generate={
            **FAST_GENERATE,
            "max_chunks": 5,
            # DPO pairs too (their parts run on the workers): the sample's own answer against one seeded candidate
            "preference": {
                "enabled": True,
                "max_prompts": 3,
                "candidates": [{"max_new_tokens": 32, "temperature": 0.2, "seed": 1}],
                "min_margin": 0.5,
            },
        },
        filter={
            "grounding": {"enabled": False},
            **TINY_TEACHER_FILTER,
            "near_dedup": {"partitions": 2, "slice_size": 2},
            "semantic_dedup": {"slice_size": 2},  # embedded in slices: Ray tasks on the cluster, in turn locally
        },
        runner=runner,
    )


def _snapshot(config: Path) -> dict[str, Any]:
    store = RunStore(load_target(str(config)).run_dir)
    return {
        "documents": sorted(d.id for d in store.iter_records("extract", Document)),
        "chunks": sorted(c.id for c in store.iter_records("chunk", Chunk)),
        "samples": sorted((s.id, s.instruction, s.response) for s in store.iter_records("generate", Sample)),
        "kept": sorted(s.id for s in store.iter_records("filter", Sample)),
        "rejects": sorted(
            (r.stage, r.record_id, r.reason)
            for st in ("extract", "generate", "filter", "preference")
            for r in store.iter_rejects(st)
        ),
        "pairs": sorted(
            (p.sample_id, p.chosen[-1].content, p.rejected[-1].content, p.chosen_score, p.rejected_score)
            for p in store.iter_records("preference", PreferencePair)
        ),
    }


def test_ray_runner_gives_the_local_sample_set(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer, ray_cluster: str, s3_server: S3Server
) -> None:
    from datapipe.pipeline import NullProgress
    from datapipe.report import RichProgress
    from flows.pipeline import flow_for, pipeline_flow, set_progress

    local = _config(tmp_path / "local", corpus_docs, llama_server)
    flow_for(str(local))(str(local))
    on_ray = _config(tmp_path / "ray", corpus_docs, llama_server, s3_server, kind="ray", address=ray_cluster)
    before = llama_server.chat_requests()
    set_progress(RichProgress())  # as `datapipe run` does: the display must not travel to the workers
    try:
        # the flow as a deployment runs it (`datapipe serve`, prefect.yaml): it moves itself onto the Ray runner
        out = pipeline_flow(str(on_ray))
    finally:
        set_progress(NullProgress())
    assert llama_server.chat_requests() > before, "the Ray run made no teacher requests"
    # the stages' parts ran in both worker processes of the cluster
    assert all(len(workers) == 2 for workers in out["workers"].values()), out["workers"]
    a, b = _snapshot(local), _snapshot(on_ray)
    assert a["samples"], "the local run generated nothing: the comparison would be empty"
    assert a["pairs"] or any(r[0] == "preference" for r in a["rejects"]), "preference made nothing to compare"
    assert a == b
    manifest = RunStore(load_target(str(on_ray)).run_dir).read_manifest("generate")
    assert manifest is not None and manifest["teacher"]["requests"] > 0  # parts' teacher stats were added up
    run_dir = load_target(str(on_ray)).run_dir
    assert str(run_dir).startswith("s3://")
    rows = read_table(run_dir / "exports" / "chatml" / "train.parquet").num_rows
    assert rows == len(b["kept"])
    assert "preference" in out["workers"]  # preference ran in parts on the cluster
    dpo = read_table(run_dir / "exports" / "dpo" / "train.parquet").num_rows if b["pairs"] else 0
    assert dpo == len(b["pairs"])
    # the workers' teacher calls were counted by the run's one budget (the Ray actor the driver held)
    last = json.loads((run_dir / "last_run.json").read_text())
    assert last["status"] == "completed" and last["teacher"]["calls"] > 0, last


def _spend(run_key: str, tokens: int) -> tuple[str, int]:
    """In a Ray worker: draw on the run's budget as a teacher does (reserve, then settle what was used)."""
    import os

    from datapipe.config import BudgetConfig
    from datapipe.teacher.budget import BudgetExceeded, budget_for

    budget = budget_for(run_key, BudgetConfig(max_tokens=10**9))  # a local budget would allow anything
    try:
        res = budget.reserve(tokens // 2, tokens - tokens // 2)
    except BudgetExceeded:
        return "refused", os.getpid()
    budget.settle(res, tokens // 2, tokens - tokens // 2)
    return "spent", os.getpid()


def test_one_budget_for_the_whole_cluster(ray_cluster: str) -> None:
    """Workers in other processes draw on the driver's run budget (a Ray actor), not one budget each."""
    import ray

    from datapipe.config import BudgetConfig
    from datapipe.teacher.budget import ray_run_budget

    ray.init(address=ray_cluster, include_dashboard=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    try:
        with ray_run_budget("/runs/budget-test", BudgetConfig(max_tokens=1000)) as budget:
            spend = ray.remote(num_cpus=1)(_spend).options(scheduling_strategy="SPREAD")
            first = ray.get([spend.remote("/runs/budget-test", 400) for _ in range(2)])
            assert [r for r, _ in first] == ["spent", "spent"]
            assert len({pid for _, pid in first}) == 2, first  # two worker processes drew on it
            third = ray.get(spend.remote("/runs/budget-test", 400))
            assert third[0] == "refused"  # 800 spent + 400 > 1000
            state = budget.as_dict()
            assert state["tokens"] == 800 and state["calls"] == 2 and "budget reached" in (state["stopped"] or "")
    finally:
        ray.shutdown()


def test_toy_kind_and_check_under_ray_give_the_local_result(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer, ray_cluster: str
) -> None:
    """The plugin of README "Adding a generation kind" / "Adding a filter": its kind's jobs run as Ray parts
    and its check in the distributed filter's slices, with the same samples, kept set and rejects as locally."""
    from flows.pipeline import flow_for, pipeline_flow
    from tests.integration.test_plugins import check_toy_run, plugin_config

    local = plugin_config(tmp_path / "local", corpus_docs, llama_server)
    flow_for(str(local))(str(local))
    on_ray = plugin_config(tmp_path / "ray", corpus_docs, llama_server, runner={"kind": "ray", "address": ray_cluster})
    # small slices: the per-sample checks run in several Ray tasks; a worker that could not import the plugin
    # would fail there ("filter.checks: no check registered")
    data = yaml.safe_load(on_ray.read_text())
    data["filter"]["near_dedup"] = {"slice_size": 2}
    on_ray.write_text(yaml.safe_dump(data))
    out = pipeline_flow(str(on_ray))
    assert out["workers"].get("generate"), out["workers"]  # the kind's job ran as a Ray part
    for cfg in (local, on_ray):
        check_toy_run(load_target(str(cfg)).run_dir)

    def result(cfg: Path) -> tuple[list[Any], list[str], list[tuple[str, str, str]]]:
        store = RunStore(load_target(str(cfg)).run_dir)
        return (
            sorted((s.id, s.response) for s in store.iter_records("generate", Sample)),
            sorted(s.id for s in store.iter_records("filter", Sample)),
            sorted((r.stage, r.record_id, r.reason) for st in ("generate", "filter") for r in store.iter_rejects(st)),
        )

    a, b = result(local), result(on_ray)
    assert a[0] and a == b
