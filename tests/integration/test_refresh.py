"""Incremental refresh over a changing folder, the dry-run estimate and the teacher budget, on a real llama.cpp
server (teacher requests counted from its own access log).

Scheduled runs are `datapipe run` on the same pipeline.yaml; here the runs are started through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from datapipe.cli import BUDGET_EXIT, app
from tests.conftest import LlamaServer
from tests.integration.refresh_kit import ADDED, EDIT, refresh_config, write_docs

pytestmark = pytest.mark.integration
runner = CliRunner()


def _invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _by_source(parquet: Path, run_dir: Path) -> dict[str, set[str]]:
    """Exported sample ids per source file name, traced back through the run's published samples."""
    members = {}
    for f in (run_dir / "versions").glob("*.parquet"):
        for row in pq.read_table(f).to_pylist():
            members[row["id"]] = Path(row["source_path"]).name
    out: dict[str, set[str]] = {}
    for sid in pq.read_table(parquet).column("id").to_pylist():
        out.setdefault(members[sid], set()).add(sid)
    return out


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _generated_sources(run_dir: Path) -> tuple[set[str], set[str]]:
    """Source file names of the generate shards this run made (new) and reused, via chunk and extract manifests."""
    extract = {s["key"]: s["inputs"] for s in _json(run_dir / "documents" / "manifest.json")["shards"]}
    chunk = {s["key"]: s["inputs"] for s in _json(run_dir / "chunks" / "manifest.json")["shards"]}
    new: set[str] = set()
    reused: set[str] = set()
    for s in _json(run_dir / "samples" / "manifest.json")["shards"]:
        names = {Path(p).name for ck in s["inputs"] for ek in chunk[ck] for p in extract[ek]}
        (reused if s["reused"] else new).update(names)
    return new, reused


def test_add_edit_delete_regenerates_only_what_changed(tmp_path: Path, llama_server: LlamaServer) -> None:
    docs = write_docs(tmp_path / "docs")
    cfg = refresh_config(tmp_path / "pipeline.yaml", llama_server)
    run_dir = tmp_path / "runs" / "refresh"
    out = _invoke("run", str(cfg))
    assert "published version v0001" in out
    v1 = run_dir / "versions" / "v0001"
    v1_files = _tree_digest(v1)
    v1_by_source = _by_source(v1 / "chatml" / "train.parquet", run_dir)
    with_samples = sorted(v1_by_source)
    assert len(with_samples) >= 3, f"the teacher produced samples for too few documents to test with: {v1_by_source}"
    deleted, edited, unchanged = with_samples[:3]

    (docs / deleted).unlink()
    with open(docs / edited, "a", encoding="utf-8") as fh:
        fh.write(EDIT)
    (docs / ADDED[0]).write_text(ADDED[1], encoding="utf-8")
    (run_dir / "versions" / "v0002" / "chatml").mkdir(parents=True)  # as a run killed while publishing leaves it
    (run_dir / "versions" / "v0002" / "chatml" / "train.parquet").write_bytes(b"half a file")
    served = llama_server.chat_requests()
    out = _invoke("run", str(cfg))
    calls = llama_server.chat_requests() - served

    # teacher calls only for the added and the edited document, and as many as the run recorded
    new, reused = _generated_sources(run_dir)
    assert new == {edited, ADDED[0]}
    assert deleted not in reused and unchanged in reused
    last = _json(run_dir / "last_run.json")
    gen = _json(run_dir / "samples" / "manifest.json")
    assert calls > 0
    assert calls == last["teacher"]["calls"] == gen["teacher"]["calls"]
    assert last["documents"] == {"added": [str(docs / ADDED[0])], "changed": [str(docs / edited)],
                                 "deleted": [str(docs / deleted)], "unchanged": len(with_samples) + 1 - 2}  # fmt: skip

    # a new version; the old one untouched; the pointer moved
    assert "published version v0002" in out and "1 added, 1 changed, 1 deleted" in out
    v2 = run_dir / "versions" / "v0002"
    assert _tree_digest(v1) == v1_files
    assert (run_dir / "versions" / "LATEST").read_text().strip() == "v0002"
    assert (run_dir / "versions" / "latest").resolve() == v2.resolve()
    v2_by_source = _by_source(v2 / "chatml" / "train.parquet", run_dir)
    assert deleted not in v2_by_source
    assert v2_by_source[unchanged] == v1_by_source[unchanged]
    assert not (v2_by_source.get(edited, set()) & v1_by_source[edited])

    # the samples that left are rejects with the reason, the full sample kept
    rejects = pq.read_table(run_dir / "rejects" / "publish").to_pylist()
    reasons = {r["record_id"]: r["reason"] for r in rejects}
    assert reasons == {sid: "source_deleted" for sid in v1_by_source[deleted]} | {
        sid: "source_changed" for sid in v1_by_source[edited]
    }
    assert all(json.loads(r["payload"])["id"] == r["record_id"] for r in rejects)
    summary = _invoke("summary", str(run_dir))
    assert re.search(r"publish\s+│\s+source_changed", summary) and re.search(r"publish\s+│\s+source_deleted", summary)

    # nothing changed: zero teacher calls, no new version
    served = llama_server.chat_requests()
    out = _invoke("run", str(cfg))
    assert llama_server.chat_requests() == served
    assert "the latest version is still v0002" in out
    assert [p.name for p in sorted((run_dir / "versions").glob("v*"))] == ["v0001", "v0002"]
    assert _json(run_dir / "last_run.json")["teacher"]["calls"] == 0
    versions = _invoke("versions", str(run_dir))
    assert "latest: v0002" in versions


def _cache_entries(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])


def test_dry_run_estimates_then_budget_stops_and_resumes(tmp_path: Path, llama_server: LlamaServer) -> None:
    write_docs(tmp_path / "docs")
    cfg = refresh_config(tmp_path / "pipeline.yaml", llama_server, budget={"max_tokens": 700})
    run_dir = tmp_path / "runs" / "refresh"

    served = llama_server.chat_requests()
    out = _invoke("run", str(cfg), "--dry-run")
    assert llama_server.chat_requests() == served, "a dry run sent requests to the teacher"
    assert not (run_dir / "samples").exists() and not (run_dir / "versions").exists()
    chunks = _json(run_dir / "chunks" / "manifest.json")["counts"]["out"]
    m = re.search(r"instruction\s+│\s+(\d+)\s+│\s+0\s+│", out.replace("\n", " "))
    assert m and int(m.group(1)) == chunks, out  # one question request per chunk, none cached yet
    assert "may stop at the budget" in out

    # the same command, again and again: each run spends at most the cap and stops cleanly; the last completes
    attempts = []
    for _ in range(12):
        before = llama_server.chat_requests()
        result = runner.invoke(app, ["run", str(cfg)], catch_exceptions=False)
        last = _json(run_dir / "last_run.json")
        attempts.append((result.exit_code, last["teacher"]["tokens"], llama_server.chat_requests() - before))
        assert last["teacher"]["tokens"] <= 700
        assert llama_server.chat_requests() - before == last["teacher"]["calls"]
        if result.exit_code == 0:
            break
        assert result.exit_code == BUDGET_EXIT and "budget reached" in result.output, result.output
        assert last["status"] == "budget_reached" and "Traceback" not in result.output
    assert attempts[-1][0] == 0 and len(attempts) >= 2, attempts
    assert sum(a[2] for a in attempts[:-1]) > 0
    # no request was sent twice: every request the server answered is one distinct cached response
    total = sum(a[2] for a in attempts)
    assert total == _cache_entries(tmp_path / "runs" / ".cache" / "teacher.sqlite")
    assert len(_chunks_processed(run_dir)) == chunks
    assert (run_dir / "versions" / "v0001" / "chatml" / "train.parquet").is_file()

    # after the run: the dry run has nothing left to ask
    data = yaml.safe_load(cfg.read_text())
    data.pop("budget")
    cfg.write_text(yaml.safe_dump(data))
    out = _invoke("run", str(cfg), "--dry-run")
    assert re.search(r"total\s+│\s+0\s+│", out.replace("\n", " ")), out


def _chunks_processed(run_dir: Path) -> list[str]:
    """Chunks that have samples or generate rejects: every chunk the teacher was asked about."""
    chunks = set()
    for f in (run_dir / "samples").glob("*.parquet"):
        for row in pq.read_table(f).to_pylist():
            chunks.add(row["provenance"]["chunk_id"])
    for f in (run_dir / "rejects" / "generate").glob("*.parquet"):
        for row in pq.read_table(f).to_pylist():
            chunks.add(json.loads(row["payload"])["chunk_id"])
    return sorted(chunks)
