"""An edit in the middle of a long document re-generates only the chunks it touched, on a real llama.cpp
server (requests counted from the server's own access log); every other chunk keeps its id and its samples.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.curate import load_decisions
from datapipe.records import Chunk
from datapipe.store import RunStore
from tests.conftest import LlamaServer
from tests.integration.refresh_kit import ADDED, DOCS, EDIT, refresh_config
from tests.integration.test_curation import _records, _review, _reviewer, _stack_module

pytestmark = pytest.mark.integration
runner = CliRunner()

INSERTED = "The caretaker also keeps a spare key for the shelter in the key cabinet at the main reception."
CHUNK = {"min_tokens": 24, "max_tokens": 64}


def long_document() -> str:
    """A handbook of six sections (the refresh kit's documents joined), 11 chunks at CHUNK's bounds."""
    parts = [*DOCS.values(), ADDED[1], "# Workshop" + EDIT.replace("## Spare parts", "")]
    return "\n".join(p.strip() + "\n" for p in parts)


def edit_middle(text: str) -> str:
    """One sentence inserted in the middle section (bicycle parking), inside its first paragraph."""
    anchor = "at six in the morning by the caretaker."
    assert text.count(anchor) == 1
    return text.replace(anchor, anchor + " " + INSERTED)


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _chunks(run_dir: Path) -> list[Chunk]:
    return sorted(RunStore(run_dir).iter_records("chunk", Chunk), key=lambda c: c.index)


def _members(run_dir: Path, version: str) -> dict[str, str]:
    """Sample id -> chunk id of a published version."""
    record = json.loads((run_dir / "versions" / version / "version.json").read_text())
    rows = pq.read_table(run_dir / "versions" / f"{record['membership']}.parquet").to_pylist()
    return {r["id"]: r["chunk_id"] for r in rows}


def _run_with_edit(tmp_path: Path, server: LlamaServer) -> dict[str, Any]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(long_document(), encoding="utf-8")
    cfg = refresh_config(tmp_path / "pipeline.yaml", server, chunk=CHUNK)
    run_dir = tmp_path / "runs" / "refresh"
    _invoke("run", str(cfg))
    before = _chunks(run_dir)
    v1 = _members(run_dir, "v0001")
    (docs / "handbook.md").write_text(edit_middle(long_document()), encoding="utf-8")
    served = server.chat_requests()
    out = _invoke("run", str(cfg))
    return {
        "cfg": cfg,
        "run_dir": run_dir,
        "before": before,
        "after": _chunks(run_dir),
        "v1": v1,
        "out": out,
        "sent": server.chat_requests() - served,
    }


def test_an_edit_in_the_middle_regenerates_only_the_touched_chunks(tmp_path: Path, llama_server: LlamaServer) -> None:
    r = _run_with_edit(tmp_path, llama_server)
    before, after, run_dir = r["before"], r["after"], r["run_dir"]
    assert len(before) >= 10, f"the document should be long: {len(before)} chunks"

    # chunks: the one holding the new sentence (and at most one neighbour) are new; all others kept id and text
    old_ids = {c.id: c.text for c in before}
    new = [c for c in after if c.id not in old_ids]
    assert any(INSERTED in c.text for c in new)
    assert 1 <= len(new) <= 2, [c.text for c in new]
    touched = next(c.index for c in after if INSERTED in c.text)
    assert all(abs(c.index - touched) <= 1 for c in new)
    kept = [c for c in after if c.id in old_ids]
    assert all(old_ids[c.id] == c.text for c in kept)
    assert len(kept) >= len(before) - 2
    # provenance still names the document (its new id) and the chunk's new span
    doc_ids = {c.document_id for c in after}
    assert len(doc_ids) == 1 and doc_ids.isdisjoint({c.document_id for c in before})
    moved = [c for c in kept if c.index > touched]
    assert moved and all(c.char_start > next(b for b in before if b.id == c.id).char_start for c in moved)

    # requests that reached the server: only the new chunks' (1 question + at most 1 answer each)
    last = json.loads((run_dir / "last_run.json").read_text())
    assert r["sent"] == last["teacher"]["calls"]
    assert 1 <= r["sent"] <= 2 * len(new)

    # the new version replaced only samples of the new chunks; every other sample kept its id
    v1, v2 = r["v1"], _members(run_dir, "v0002")
    kept_ids = {c.id for c in kept}
    assert {s for s, c in v1.items() if c in kept_ids} <= set(v2)
    gone = set(v1) - set(v2)
    assert {v1[s] for s in gone} <= set(old_ids) - kept_ids
    assert {v2[s] for s in set(v2) - set(v1)} <= {c.id for c in new}
    rejects = pq.read_table(run_dir / "rejects" / "publish").to_pylist()
    assert {x["record_id"] for x in rejects} == gone and {x["reason"] for x in rejects} <= {"source_changed"}


@pytest.fixture(scope="module")
def argilla() -> Iterator[Any]:
    """A real Argilla 2.8.0 stack on 127.0.0.1 (see tests/integration/test_curation.py for what is real)."""
    stack = _stack_module().ArgillaStack(Path(tempfile.mkdtemp(prefix="datapipe-argilla-")))
    try:
        stack.start()
    except RuntimeError as exc:
        pytest.fail(f"the Argilla stack did not start (run `bash scripts/setup.sh`): {exc}")
    yield stack
    stack.stop()
    shutil.rmtree(stack.workdir, ignore_errors=True)


def test_reviews_of_untouched_samples_survive_the_refresh_and_the_next_push_pull(
    tmp_path: Path, llama_server: LlamaServer, argilla: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARGILLA_API_KEY", argilla.api_key)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(long_document(), encoding="utf-8")
    curate = {"api_url": argilla.url, "workspace": "review", "kinds": ["instruction"]}
    cfg = refresh_config(tmp_path / "pipeline.yaml", llama_server, chunk=CHUNK, curate=curate)
    run_dir = tmp_path / "runs" / "refresh"
    _invoke("run", str(cfg))
    _invoke("curate", "push", str(cfg))
    on_server = {r["external_id"]: r["id"] for r in _records(argilla, "refresh-instruction")}
    v1 = _members(run_dir, "v0001")
    assert set(on_server) == set(v1) and len(v1) >= 4, f"too few samples to review: {len(v1)}"

    # a reviewer accepts, corrects and discards samples all over the document
    order = sorted(v1, key=lambda s: next(c.index for c in _chunks(run_dir) if c.id == v1[s]))
    fix = "Corrected by the reviewer: the answer the handbook gives, in one sentence."
    verdicts = {
        sid: ("discard", None) if i % 3 == 0 else ("keep", fix if i % 3 == 1 else None) for i, sid in enumerate(order)
    }
    with _reviewer(argilla, "rev1") as rev:
        for sid, (keep, correction) in verdicts.items():
            values = {"keep": keep} | ({"correction": correction} if correction else {})
            _review(rev, on_server[sid], **values)
    _invoke("curate", "pull", str(cfg))
    first = {k: d.decision for k, d in load_decisions(RunStore(run_dir))[0].items()}

    # one sentence inserted in the middle; the refresh, then the next push and pull
    before = _chunks(run_dir)
    (docs / "handbook.md").write_text(edit_middle(long_document()), encoding="utf-8")
    _invoke("run", str(cfg))
    kept_chunks = {c.id for c in _chunks(run_dir)} & {c.id for c in before}
    untouched = {s for s, c in v1.items() if c in kept_chunks}
    v2 = _members(run_dir, "v0002")
    assert untouched and untouched <= set(v2) and len(untouched) >= len(v1) - 4
    _invoke("curate", "push", str(cfg))
    facts = RunStore(run_dir).read_json("curate", "push.json")["datasets"]["refresh-instruction"]
    assert facts["new"] == len(set(v2) - set(v1))  # only the touched chunks' samples are new records
    _invoke("curate", "pull", str(cfg))
    decisions, _, _ = load_decisions(RunStore(run_dir))
    assert {s: decisions[s].decision for s in untouched} == {s: first[s] for s in untouched}
    assert {s: first[s] for s in untouched} == {
        s: {"discard": "discarded", "keep": "accepted" if verdicts[s][1] is None else "corrected"}[verdicts[s][0]]
        for s in untouched
    }
    # the next export carries the reviewers' corrections of untouched samples and leaves out their discards
    _invoke("export", str(cfg))
    rows = {r["id"]: r for r in pq.read_table(run_dir / "exports" / "chatml" / "train.parquet").to_pylist()}
    for s in untouched:
        if verdicts[s][0] == "discard":
            assert s not in rows
        elif verdicts[s][1]:
            assert rows[s]["messages"][-1]["content"] == fix
