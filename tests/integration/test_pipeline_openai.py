"""The pipeline through an OpenAI-compatible teacher: a real llama.cpp server on 127.0.0.1.

Each stage runs alone on the run folder, then the whole flow (Prefect) re-runs over
unchanged inputs and the server must receive zero requests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from tests.conftest import FAST_GENERATE, TINY_TEACHER_FILTER, LlamaServer, write_config

pytestmark = pytest.mark.integration
runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture()
def config(tmp_path: Path, corpus_docs: Path, llama_server: LlamaServer) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ["handbook-1p.docx", "fake-power-point.pptx", "ideas-page.html"]:
        shutil.copy(corpus_docs / name, docs / name)
    return write_config(
        tmp_path / "pipeline.yaml",
        run_id="oa",
        store="runs",
        sources=["docs"],
        teacher={"backend": "openai", "model": "smollm2", "base_url": llama_server.base_url, "max_concurrency": 2},
        generate={**FAST_GENERATE, "max_chunks": 6},
        # this test is about stages and teacher calls, not filtering: keep the weak teacher's answers
        filter={"grounding": {"enabled": False}, **TINY_TEACHER_FILTER},
    )


def _ids(path: Path) -> list[str]:
    return sorted(pq.read_table(path).column("id").to_pylist())


def test_stages_alone_then_rerun_makes_zero_teacher_calls(config: Path, llama_server: LlamaServer) -> None:
    run_dir = config.parent / "runs" / "oa"
    _invoke("extract", str(config))
    for stage in ("chunk", "generate", "filter"):
        _invoke(stage, str(run_dir))
    out = _invoke("export", str(run_dir), "--format", "sharegpt")
    assert "sharegpt" in out
    export = run_dir / "exports" / "sharegpt" / "train.parquet"
    rows = pq.read_table(export).to_pylist()
    assert rows and all(r["conversations"][0]["from"] == "human" for r in rows)
    exported = _ids(export)

    gen = json.loads((run_dir / "samples" / "manifest.json").read_text())
    assert gen["teacher"]["calls"] > 0 and gen["teacher"]["backend"] == "openai"
    served = llama_server.chat_requests()

    out = _invoke("run", str(config))  # the whole flow, under Prefect
    assert llama_server.chat_requests() == served
    gen2 = json.loads((run_dir / "samples" / "manifest.json").read_text())
    assert gen2["teacher"]["calls"] == 0 and gen2["counts"]["shards_reused"] == gen2["counts"]["shards"]
    assert _ids(run_dir / "exports" / "chatml" / "train.parquet") == exported
    assert "rejects by reason" in out or gen2["counts"]["rejected"] == 0

    # a lost run folder is rebuilt from the response cache: still no request reaches the server
    shutil.rmtree(run_dir)
    _invoke("run", str(config))
    assert llama_server.chat_requests() == served
    gen3 = json.loads((run_dir / "samples" / "manifest.json").read_text())
    assert gen3["teacher"]["calls"] == 0 and gen3["teacher"]["cache_hits"] == gen["teacher"]["requests"]
    assert _ids(run_dir / "exports" / "chatml" / "train.parquet") == exported


def test_failed_late_stage_is_retried_alone(config: Path, llama_server: LlamaServer) -> None:
    run_dir = config.parent / "runs" / "oa"
    _invoke("run", str(config))
    before = {
        s: (run_dir / d / "manifest.json").stat().st_mtime_ns
        for s, d in [("extract", "documents"), ("chunk", "chunks"), ("generate", "samples")]
    }
    kept = _ids(run_dir / "exports" / "chatml" / "train.parquet")
    shutil.rmtree(run_dir / "filtered")
    shutil.rmtree(run_dir / "exports")
    _invoke("filter", str(run_dir))
    _invoke("export", str(run_dir))
    after = {
        s: (run_dir / d / "manifest.json").stat().st_mtime_ns
        for s, d in [("extract", "documents"), ("chunk", "chunks"), ("generate", "samples")]
    }
    assert after == before
    assert _ids(run_dir / "exports" / "chatml" / "train.parquet") == kept


def test_unreachable_teacher_gives_pending_not_a_crash(tmp_path: Path, corpus_docs: Path) -> None:
    """Was ``..._gives_rejects_not_a_crash``: a failure a retry can fix is now pending, not a reject, and the
    command exits 4 (see test_outage.py for the full outage-then-resume story)."""
    from datapipe.pending import PENDING_EXIT
    from tests.conftest import free_port

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(corpus_docs / "ideas-page.html", docs / "ideas-page.html")
    cfg = write_config(
        tmp_path / "p.yaml",
        run_id="down",
        sources=["docs"],
        teacher={
            "backend": "openai",
            "model": "m",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",
            "max_retries": 1,
            "backoff_base_s": 0.01,
        },
        generate={**FAST_GENERATE, "max_chunks": 1},
    )
    _invoke("extract", str(cfg))
    _invoke("chunk", str(cfg))
    result = runner.invoke(app, ["generate", str(cfg)], catch_exceptions=False)
    assert result.exit_code == PENDING_EXIT, result.output
    assert "teacher_unavailable" in result.output and "Traceback" not in result.output
    rejects = pq.read_table(tmp_path / "runs" / "down" / "rejects" / "generate").to_pylist()
    assert {r["reason"] for r in rejects} <= {"over_max_chunks"}
    pending = pq.read_table(tmp_path / "runs" / "down" / "pending" / "generate").to_pylist()
    assert pending and {r["reason"] for r in pending} == {"teacher_unavailable"}
    assert any("connection error" in r["detail"] for r in pending)


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "p.yaml", sources=["docs"], chunk={"max_tokns": 3})
    result = runner.invoke(app, ["run", str(cfg)])
    assert result.exit_code == 2
    assert "chunk.max_tokns" in result.output and "Traceback" not in result.output
