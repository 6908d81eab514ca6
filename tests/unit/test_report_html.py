"""The HTML report over hand-made runs: real parquet shards, manifests and rejects in a RunStore.

The records are written the way stages write them (``write_shard`` + ``StageRecorder``), so the
report reads exactly what a run leaves behind, including the cases a teacher-made run rarely
produces: near and semantic duplicate clusters, judge rejects, preference pairs, missing shards.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from datapipe.filter import sample_reject
from datapipe.records import (
    Candidate,
    Chunk,
    Document,
    Message,
    PreferencePair,
    Provenance,
    Reject,
    Sample,
    TeacherCall,
)
from datapipe.report.html import build_report, reason_code, write_report
from datapipe.store import RunStore, StageRecorder

PNG = "data:image/png;base64,"


def facts_of(page: str) -> dict[str, Any]:
    m = re.search(r'<script type="application/json" id="datapipe-report-data">(.*?)</script>', page, re.S)
    assert m, "the report has no embedded data block"
    data: dict[str, Any] = json.loads(m.group(1))
    return data


def section(page: str, sid: str) -> str:
    m = re.search(rf'<section id="{sid}">(.*?)</section>', page, re.S)
    assert m, f"section {sid} is missing"
    return m.group(1)


def _call(step: str, i: int, o: int) -> TeacherCall:
    return TeacherCall(
        step=step,
        prompt_name=step,
        prompt_version="v1",
        prompt_hash="h",
        backend="llamacpp",
        model="m.gguf",
        params="{}",
        raw_output="",
        input_tokens=i,
        output_tokens=o,
        cached=False,
    )


def _sample(sid: str, source: str, response: str, taxonomy: str | None = None, **scores: float) -> Sample:
    return Sample(
        id=sid,
        kind="qa" if taxonomy else "instruction",
        instruction=f"What does {sid} say?",
        response=response,
        messages=[Message(role="user", content=f"What does {sid} say?"), Message(role="assistant", content=response)],
        provenance=Provenance(
            source_path=source,
            document_id="d-" + Path(source).stem,
            chunk_id="c1",
            char_start=0,
            char_end=10,
            pages=[1],
            taxonomy_path=taxonomy,
            leaf_kind="knowledge" if taxonomy else None,
            context="context",
            teacher_calls=[_call("questions", 100, 10), _call("answer", 200, 20)],
        ),
        scores=scores,
    )


def _stage(store: RunStore, stage: str, key: str, table: Any, n_in: int, n_out: int, rejects: list[Reject]) -> None:
    rec = StageRecorder(store, stage, "cfg")
    store.write_shard(stage, key, table, rejects)
    rec.add(key, [], n_in, n_out, len(rejects), 0.1, False)
    if stage in ("generate", "filter"):
        rec.extra["teacher"] = {
            "backend": "llamacpp",
            "model": "m.gguf",
            "requests": 7,
            "calls": 6,
            "cache_hits": 1,
            "input_tokens": 1000 if stage == "generate" else 300,
            "output_tokens": 120,
        }
    rec.finish()


@pytest.fixture()
def made_run(tmp_path: Path) -> RunStore:
    """Two documents (one duplicate rejected), chunks, samples, a filter with dedup and judge rejects, one pair."""
    store = RunStore(tmp_path / "run")
    a, b = "/data/docs/a.md", "/data/docs/sub/b.md"
    docs = [
        Document(id="d-a", source_path=a, format="md", text="x" * 100, spans=[], bytes_sha256="1"),
        Document(id="d-b", source_path=b, format="md", text="y" * 100, spans=[], bytes_sha256="2"),
    ]
    dup = Reject(stage="extract", record_id="d-a2", reason="duplicate_of:d-a", source_path="/data/docs/a-copy.md")
    _stage(store, "extract", "e", Document.to_table(docs), 3, 2, [dup])
    chunks = [
        Chunk(
            id=f"c{i}",
            document_id=d.id,
            source_path=d.source_path,
            index=i,
            text="t",
            char_start=0,
            char_end=1,
            pages=[1],
            n_tokens=n,
            n_sentences=1,
        )
        for i, (d, n) in enumerate([(docs[0], 50), (docs[0], 120), (docs[1], 300)])
    ]
    _stage(store, "chunk", "c", Chunk.to_table(chunks), 2, 3, [])
    s1 = _sample("s1", a, "a grounded answer of some length")
    s2 = _sample("s2", a, "another answer")
    s3 = _sample("s3", a, "a grounded answer of some length!")
    s4 = _sample("s4", b, "b answer")
    s5 = _sample("s5", a, "leaf answer", taxonomy="knowledge/science/birds")
    s6 = _sample("s6", a, "a paraphrase of the grounded answer")
    generated = [s1, s2, s3, s4, s5, s6]
    _stage(store, "generate", "g", Sample.to_table(generated), 3, 6, [])

    kept = [
        _sample("s1", a, s1.response, judge_faithfulness=5, judge_quality=4, grounding_similarity=0.81),
        _sample("s5", a, s5.response, taxonomy="knowledge/science/birds", judge_faithfulness=4, judge_quality=4),
    ]
    low = _sample("s4", b, s4.response, judge_faithfulness=1, judge_quality=3)
    # as the filter's dedup writes them (datapipe/filter/dedup.py: as_rejects): the detail says which strength
    filter_rejects = [
        sample_reject(s2, "duplicate_of:s1", "near (MinHash) duplicate (similarity 0.912)"),
        sample_reject(s3, "duplicate_of:s1", "near (MinHash) duplicate (similarity 0.875)"),
        sample_reject(s6, "duplicate_of:s1", "semantic (embedding cosine) duplicate (similarity 0.934)"),
        Reject(
            stage="filter",
            record_id="s4",
            reason="low_faithfulness",
            source_path=b,
            payload=json.dumps({"sample": json.loads(low.model_dump_json()), "judge_output": "Faithfulness: 1"}),
        ),
    ]
    _stage(store, "filter", "f", Sample.to_table(kept), 6, 2, filter_rejects)

    pair = PreferencePair(
        id="p1",
        sample_id="s1",
        prompt=s1.messages[:1],
        chosen=[Message(role="assistant", content="good")],
        rejected=[Message(role="assistant", content="bad")],
        chosen_score=5,
        rejected_score=2,
        margin=3,
        candidates=[
            Candidate(text="good", source="original", backend="b", model="m", params="{}", score=5),
            Candidate(text="bad", source="teacher", backend="b", model="m", params="{}", score=2),
        ],
        judge_model="m",
        judge_prompt="preference_judge@v1#h",
        provenance=kept[0].provenance,
    )
    tie = Reject(stage="preference", record_id="s5", reason="tie", source_path=a)
    _stage(store, "preference", "p", PreferencePair.to_table([pair]), 2, 1, [tie])
    return store


def test_report_figures_match_the_run(made_run: RunStore) -> None:
    page = write_report(made_run).read_text(encoding="utf-8")
    facts = facts_of(page)

    assert [(s["stage"], s["in"], s["out"], s["rejected"]) for s in facts["stages"]] == [
        ("extract", 3, 2, 1),
        ("chunk", 2, 3, 0),
        ("generate", 3, 6, 0),
        ("filter", 6, 2, 4),
        ("preference", 2, 1, 1),
    ]
    assert facts["rejects_by_reason"]["filter"] == {"duplicate_of": 3, "low_faithfulness": 1}
    assert facts["rejects_by_reason"]["extract"] == {"duplicate_of": 1}
    assert facts["duplicates"] == {
        "clusters": 2,
        "duplicates": 4,
        "sizes": {"extract: duplicate_of": {"2": 1}, "filter: duplicate_of": {"4": 1}},
    }
    # scores of the kept samples and of the judge's reject (read from its payload)
    assert facts["scores"]["judge_faithfulness"] == {"kept": 2, "rejected": 1}
    assert facts["scores"]["grounding_similarity"] == {"kept": 1, "rejected": 0}
    assert facts["scores"]["preference"] == {"pairs": 1}
    signal = facts["preference_signal"]  # "good" is one character longer than "bad"; no pairwise verdicts
    assert signal["margin_buckets"] == {"<1": 0, "1": 0, "2": 0, "3": 1, "4": 0}
    assert (signal["longer_won"], signal["length_differs"], signal["pairwise_checked"]) == (1, 1, 0)
    assert signal["chosen_by_source"] == {"original": 1} and signal["rejected_by_source"] == {"teacher": 1}
    assert facts["coverage_sources"]["/data/docs/a.md"] == {"chunks": 2, "generated": 5, "kept": 2}
    assert facts["coverage_sources"]["/data/docs/sub/b.md"] == {"chunks": 1, "generated": 1, "kept": 0}
    assert facts["coverage_leaves"] == {"knowledge/science/birds": {"generated": 1, "kept": 1}}
    assert facts["tokens"]["generate"]["input_tokens"] == 1000 and facts["tokens"]["filter"]["input_tokens"] == 300
    assert facts["problems"] == []

    # the visible page says the same
    assert '<td>duplicate_of</td><td class="num">3</td>' in section(page, "rejects")
    meaning = "the judge scored faithfulness below filter.judge.min_faithfulness"  # from the catalogue
    assert f'<td>low_faithfulness</td><td class="num">1</td><td>{meaning}</td>' in section(page, "rejects")
    assert '<td class="num">1,300</td>' in section(page, "tokens")  # the total row
    assert "What does s1 say?" in section(page, "duplicates")  # the representative's text
    assert "1 have no kept sample" in section(page, "coverage")
    for sid in ("stages", "rejects", "lengths", "scores", "duplicates", "coverage", "tokens"):
        assert "<img" in section(page, sid), f"section {sid} has no figure"
    assert 'class="nodata"' not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith(PNG)
        assert base64.b64decode(src[len(PNG) :])[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_run_renders_no_data_notes(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.root.mkdir()
    page = build_report(store)
    for sid in ("stages", "rejects", "lengths", "scores", "duplicates", "coverage", "tokens"):
        assert 'class="nodata"' in section(page, sid), f"section {sid} has no 'no data' note"
    assert "<img" not in page


def test_stages_that_made_nothing_render_no_data(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    _stage(
        store,
        "extract",
        "e",
        Document.to_table([]),
        1,
        0,
        [Reject(stage="extract", record_id="x", reason="too_little_text", source_path="/d/x.txt")],
    )
    _stage(store, "chunk", "c", Chunk.to_table([]), 0, 0, [])
    _stage(store, "generate", "g", Sample.to_table([]), 0, 0, [])
    facts = facts_of(build_report(store))
    assert facts["rejects_by_reason"] == {"extract": {"too_little_text": 1}}
    assert facts["lengths"] == {"samples": 0, "kept": 0, "chunks": 0}


def test_a_missing_shard_is_reported_not_fatal(made_run: RunStore) -> None:
    made_run.shard_path("chunk", "c").unlink()
    page = build_report(made_run)
    facts = facts_of(page)
    assert any("stage chunk" in p for p in facts["problems"])
    assert 'class="problem"' in page
    assert facts["lengths"]["chunks"] == 0 and facts["lengths"]["samples"] == 6


def test_write_report_refuses_a_missing_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(RunStore(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("duplicate_of:abc", "duplicate_of"),
        ("contaminated:gsm8k", "contaminated:gsm8k"),
        ("wrong_language:de", "wrong_language:de"),
        ("parse_error", "parse_error"),
        ("my_plugin_code:x", "my_plugin_code:x"),
    ],
    ids=["duplicate-drops-id", "contaminated-keeps-benchmark", "language-kept", "plain", "unknown-kept"],
)
def test_reason_code(reason: str, code: str) -> None:
    assert reason_code(reason) == code
