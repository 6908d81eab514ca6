"""Taxonomy QA generation end to end: real InstructLab leaves, documents resolved from the real git
bundle at the pinned commit, the embedded teacher, and the judge in the filter stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.config import JudgeConfig, TeacherConfig
from datapipe.filter.judge import QAJudge, parse_scores
from datapipe.generate.prompts import load_prompt
from datapipe.records import Chunk, Document, Reject, Sample
from datapipe.store import RunStore
from datapipe.teacher import Teacher
from tests.conftest import LlamaServer, free_port, write_config
from tests.integration.faultproxy import FaultProxy
from tests.records_kit import make_sample

pytestmark = pytest.mark.integration
runner = CliRunner()
CHICKADEE = "knowledge/science/animals/birds/black_capped_chickadee"
INCLUSION = "compositional_skills/grounded/linguistics/inclusion"
REPO = "https://github.com/juliadenham/Summit_knowledge"


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> RunStore:
    tmp = tmp_path_factory.mktemp("qa")
    cfg = write_config(
        tmp / "qa.yaml",
        run_id="qa",
        store="runs",
        generate={
            "kinds": ["qa"],
            "qa": {
                "samples_per_leaf": 4,
                "few_shot": 1,
                "params": {"max_new_tokens": 96, "temperature": 0.7, "seed": 0},
            },
        },
        taxonomy={
            "root": str(shared / "taxonomy-instructlab"),
            "leaves": [CHICKADEE, INCLUSION],
            "repo_map": {REPO: str(shared / "taxonomy-instructlab-docs" / "Summit_knowledge.bundle")},
        },
        filter={"judge": {"enabled": True}},
    )
    result = runner.invoke(app, ["run", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return RunStore(tmp / "runs" / "qa")


def test_knowledge_documents_come_from_the_bundle_at_the_pinned_commit(qa_run: RunStore) -> None:
    docs = list(qa_run.iter_records("extract", Document))
    assert [Path(d.source_path).name for d in docs] == ["chickadee.md"]
    assert docs[0].taxonomy_path == CHICKADEE
    assert "5f7158a5ce83" in docs[0].source_path  # the checkout folder is named by the pinned commit
    chunks = list(qa_run.iter_records("chunk", Chunk))
    assert chunks and all(c.taxonomy_path == CHICKADEE for c in chunks)


def test_samples_carry_taxonomy_path_leaf_kind_and_span(qa_run: RunStore) -> None:
    samples = list(qa_run.iter_records("generate", Sample))
    docs = {d.id: d for d in qa_run.iter_records("extract", Document)}
    knowledge = [s for s in samples if s.provenance.taxonomy_path == CHICKADEE]
    assert knowledge, "the embedded teacher produced no parseable chickadee QA pair"
    for s in knowledge:
        p = s.provenance
        assert s.kind == "qa" and p.leaf_kind == "knowledge" and p.chunk_id
        assert p.context == docs[p.document_id].text[p.char_start : p.char_end]
        assert p.teacher_calls[0].prompt_name == "knowledge_qa"
    for s in samples:
        if s.provenance.taxonomy_path == INCLUSION:
            assert s.provenance.leaf_kind == "compositional_skill"
            assert s.provenance.context and s.instruction.startswith(s.provenance.context)
    per_leaf: dict[str, int] = {}
    for s in samples:
        per_leaf[s.provenance.taxonomy_path or ""] = per_leaf.get(s.provenance.taxonomy_path or "", 0) + 1
    assert all(n <= 4 for n in per_leaf.values())


def test_every_qa_record_accounted_for(qa_run: RunStore) -> None:
    gen = qa_run.read_manifest("generate")
    assert gen is not None
    rejects = list(qa_run.iter_rejects("generate"))
    assert {r.reason for r in rejects} <= {"parse_error", "over_samples_per_leaf", "teacher_error"}
    for r in rejects:
        if r.reason == "parse_error":
            assert json.loads(r.payload)["raw_output"]
    chunks = {c.id for c in qa_run.iter_records("chunk", Chunk)}
    used = {s.provenance.chunk_id for s in qa_run.iter_records("generate", Sample)}
    touched = used | {json.loads(r.payload)["chunk_id"] for r in rejects}
    assert chunks <= touched
    samples = {s.id for s in qa_run.iter_records("generate", Sample)}
    kept = list(qa_run.iter_records("filter", Sample))
    dropped = list(qa_run.iter_rejects("filter"))
    assert {s.id for s in kept} | {r.record_id for r in dropped} == samples
    for s in kept:
        assert s.scores["judge_faithfulness"] >= 3 and s.scores["judge_quality"] >= 3
        assert s.provenance.teacher_calls[-1].step == "judge"


def test_qa_export_loads_with_datasets(qa_run: RunStore) -> None:
    import datasets

    path = qa_run.root / "exports" / "chatml" / "train.parquet"
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert ds.column_names == ["id", "messages"]
    assert len(ds) == len(list(qa_run.iter_records("filter", Sample)))
    for row in ds:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("reply", "reason", "scores"),
    [
        pytest.param("Faithfulness: 5\nQuality: 4", None, {"judge_faithfulness": 5.0, "judge_quality": 4.0}, id="kept"),
        pytest.param("Faithfulness: 2\nQuality: 5", "low_faithfulness", None, id="unfaithful"),
        pytest.param("Faithfulness: 4\nQuality: 1", "low_quality", None, id="bad-question"),
        pytest.param("Faithfulness: <1-5>\nQuality: <1-5>", "judge_parse_error", None, id="template-echo"),
        pytest.param("I think it is fine.", "judge_parse_error", None, id="no-scores"),
    ],
)
def test_judge_thresholds_through_a_real_server(
    llama_server: LlamaServer, reply: str, reason: str | None, scores: dict[str, float] | None
) -> None:
    """The judge's replies are injected by the proxy in front of the real llama.cpp server."""
    sample = make_sample(
        "s", "Where do chickadees live?", "In forests.", "Chickadees live in forests.", kind="qa", source_path="x.md"
    )
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), [f"content:{reply}"]) as proxy:
        teacher = Teacher(TeacherConfig(backend="openai", model="smollm2", base_url=proxy.base_url, cache=False))
        judge = QAJudge(JudgeConfig(enabled=True), teacher, load_prompt("qa_judge"))
        [out] = judge.run([sample])
    if reason is None:
        assert isinstance(out, Sample) and out.scores == scores and out.verdicts["judge"] == "pass"
    else:
        assert isinstance(out, Reject) and out.reason == reason and out.detail
        assert json.loads(out.payload)["judge_output"] == reply


def test_parse_scores_ignores_echoed_ranges() -> None:
    assert parse_scores("faithfulness - 3, quality: 4.5") == {"faithfulness": 3.0, "quality": 4.5}
    with pytest.raises(ValueError):
        parse_scores("Faithfulness: 1-5 Quality: 1-5")
    with pytest.raises(ValueError):
        parse_scores("Faithfulness: 7\nQuality: 3")
