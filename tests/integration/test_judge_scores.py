"""The LLM judge on every sample kind, on its own teacher, and its scores as Argilla suggestions.

The judge's replies come from the fault proxy in front of the real llama.cpp server (scripted, so
the scores are exact); everything after that is the product's own code: the judge parses the reply
and writes the scores, and curate turns the judged sample into the Argilla record it pushes. This
replaces a curation test that invented score keys the judge never writes.
"""

from __future__ import annotations

from pathlib import Path

from datapipe.config import FilterConfig, JudgeConfig, PipelineConfig, TeacherConfig
from datapipe.curate import _sample_record, _score_props
from datapipe.filter.scores import FAITHFULNESS, QUALITY
from datapipe.pipeline import _build_judge
from datapipe.records import Sample
from tests.conftest import LlamaServer, free_port
from tests.integration.faultproxy import FaultProxy
from tests.records_kit import make_sample

CONTEXT = "Norwich City was founded in 1902 and has played its home games at Carrow Road since 1935."


def test_judge_scores_every_kind_on_its_own_teacher_and_curate_suggests_them(
    llama_server: LlamaServer, tmp_path: Path
) -> None:
    samples = [
        make_sample("i", "When was Norwich City founded?", "Norwich City was founded in 1902.", CONTEXT),
        make_sample("q", "Where does Norwich City play?", "At Carrow Road, since 1935.", CONTEXT, kind="qa"),
    ]
    reply = "Faithfulness: 4\nQuality: 2"
    base = llama_server.base_url.removesuffix("/v1")
    with FaultProxy(base, free_port(), [f"content:{reply}"] * 2) as proxy:
        judge_teacher = TeacherConfig(backend="openai", model="judge-model", base_url=proxy.base_url, cache=False)
        cfg = PipelineConfig(
            sources=["x"],
            base_dir=tmp_path,
            store=str(tmp_path / "runs"),
            run_id="judged",
            filter=FilterConfig(judge=JudgeConfig(enabled=True, min_quality=2, teacher=judge_teacher)),
        )
        judge = _build_judge(cfg, samples)
        assert judge is not None and judge.teacher.identity["model"] == "judge-model"  # not the run's teacher
        out = judge.run(samples)
        assert len(proxy.requests) == 2
    assert all(isinstance(s, Sample) for s in out)
    judged = [s for s in out if isinstance(s, Sample)]
    for s in judged:
        assert s.scores == {FAITHFULNESS: 4.0, QUALITY: 2.0}
        call = s.provenance.teacher_calls[-1]
        assert (call.step, call.model, call.raw_output) == ("judge", "judge-model", reply)
    assert {s.kind: s.provenance.teacher_calls[-1].prompt_name for s in judged} == {
        "instruction": "instruction_judge",
        "qa": "qa_judge",
    }

    record = _sample_record(judged[0], _score_props(judged))
    suggestions = {s.question_name: (s.value, s.score) for s in record.suggestions}
    assert suggestions["keep"] == ("keep", 0.4)  # confidence: the lower judge score over 5
    assert suggestions["quality"] == (3, None)  # the mean of the two judge scores
    assert record.metadata["score_judge_faithfulness"] == 4.0


def test_judge_is_off_unless_enabled(tmp_path: Path) -> None:
    samples = [make_sample("i", "When was Norwich City founded?", "In 1902.", CONTEXT)]
    cfg = PipelineConfig(sources=["x"], base_dir=tmp_path, store=str(tmp_path / "runs"))
    assert _build_judge(cfg, samples) is None
