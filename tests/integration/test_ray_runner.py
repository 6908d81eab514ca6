"""The pipeline on a real local Ray cluster (prefect-ray's RayTaskRunner) gives the local runner's sample set.

The cluster: `ray start --head` on 127.0.0.1 plus a second `ray start` joining it, one CPU each, so
the stages' parts run as Ray tasks in two worker processes. The teacher is the real llama.cpp server
(one request at a time, temperature 0.3 with a fixed seed, so the same prompt gives the same text);
the two runs use separate run stores and separate teacher caches, so the Ray run really calls it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from datapipe.records import Chunk, Document, Sample
from datapipe.runs import load_target
from datapipe.store import RunStore
from tests.conftest import FAST_GENERATE, LlamaServer, free_port, write_config

pytestmark = pytest.mark.integration
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
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


def _config(tmp: Path, corpus_docs: Path, llama_server: LlamaServer, **runner: Any) -> Path:
    docs = tmp / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for name in ["handbook-1p.docx", "fake-power-point.pptx", "ideas-page.html", "norwich-city.txt"]:
        shutil.copy(corpus_docs / name, docs / name)
    return write_config(
        tmp / "pipeline.yaml",
        run_id="scale",
        store="runs",
        sources=["docs"],
        teacher={"backend": "openai", "model": "smollm2", "base_url": llama_server.base_url, "max_concurrency": 1},
        generate={**FAST_GENERATE, "max_chunks": 5},
        filter={"grounding": {"enabled": False}, "languages": [], "near_dedup": {"partitions": 2, "slice_size": 2}},
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
            (r.stage, r.record_id, r.reason) for st in ("extract", "generate", "filter") for r in store.iter_rejects(st)
        ),
    }


def test_ray_runner_gives_the_local_sample_set(
    tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer, ray_cluster: str
) -> None:
    from datapipe.pipeline import NullProgress
    from datapipe.report import RichProgress
    from flows.pipeline import flow_for, set_progress

    local = _config(tmp_path / "local", corpus_docs, llama_server)
    flow_for(str(local))(str(local))
    on_ray = _config(tmp_path / "ray", corpus_docs, llama_server, kind="ray", address=ray_cluster)
    before = llama_server.chat_requests()
    set_progress(RichProgress())  # as `datapipe run` does: the display must not travel to the workers
    try:
        out = flow_for(str(on_ray))(str(on_ray))
    finally:
        set_progress(NullProgress())
    assert llama_server.chat_requests() > before, "the Ray run made no teacher requests"
    # the stages' parts ran in both worker processes of the cluster
    assert all(len(workers) == 2 for workers in out["workers"].values()), out["workers"]
    a, b = _snapshot(local), _snapshot(on_ray)
    assert a["samples"], "the local run generated nothing: the comparison would be empty"
    assert a == b
    manifest = RunStore(load_target(str(on_ray)).run_dir).read_manifest("generate")
    assert manifest is not None and manifest["teacher"]["requests"] > 0  # parts' teacher stats were added up
    rows = pq.read_table(load_target(str(on_ray)).run_dir / "exports" / "chatml" / "train.parquet").num_rows
    assert rows == len(b["kept"])
