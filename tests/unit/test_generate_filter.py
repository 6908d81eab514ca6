"""Prompts, output parsing and the first-cut filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapipe.config import FilterConfig
from datapipe.errors import ConfigError
from datapipe.filter import filter_samples
from datapipe.generate.instruction import AnswerTask, ParseError, QuestionTask
from datapipe.generate.prompts import load_prompt
from datapipe.records import Reject, Sample
from tests.records_kit import make_sample


def test_shipped_prompts_render_with_strict_undefined() -> None:
    p = load_prompt("instruction_questions")
    msgs = p.render(context="Carrow Road is a stadium.", heading=None, n=2)
    assert msgs[0]["role"] == "system" and "Carrow Road" in msgs[-1]["content"]
    with pytest.raises(ConfigError, match="context"):
        p.render(heading=None, n=2)


def test_prompt_versions_and_hash(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "v1.yaml").write_text("name: t\nversion: v1\nuser: 'one {{ x }}'\n")
    (folder / "v2.yaml").write_text("name: t\nversion: v2\nuser: 'two {{ x }}'\n")
    (folder / "v10.yaml").write_text("name: t\nversion: v10\nuser: 'ten {{ x }}'\n")
    assert load_prompt("t", prompts_dir=tmp_path).version == "v10"
    p1 = load_prompt("t", "v1", prompts_dir=tmp_path)
    assert p1.render(x=1) == [{"role": "user", "content": "one 1"}]
    assert p1.hash != load_prompt("t", "v2", prompts_dir=tmp_path).hash
    (folder / "v3.yaml").write_text("name: t\nversion: v3\n")
    with pytest.raises(ConfigError, match="missing section"):
        load_prompt("t", "v3", prompts_dir=tmp_path)


@pytest.mark.parametrize(
    ("text", "questions"),
    [
        pytest.param("1. What is X?\n2. Who made Y?", ["What is X?", "Who made Y?"], id="numbered"),
        pytest.param("- Where is Carrow Road? It is in Norwich.", ["Where is Carrow Road?"], id="bullet-with-tail"),
        pytest.param("Question 1: When was it founded?\nWhen was it founded?", ["When was it founded?"], id="dedup"),
    ],
)
def test_question_parsing(text: str, questions: list[str]) -> None:
    task = QuestionTask(load_prompt("instruction_questions"), n=5)
    assert task.format_output(text, {}) == {"questions": questions}


@pytest.mark.parametrize("text", ["", "The club plays in yellow.", "Why?"], ids=["empty", "no-question", "too-short"])
def test_unparseable_questions_raise(text: str) -> None:
    with pytest.raises(ParseError):
        QuestionTask(load_prompt("instruction_questions"), n=2).format_output(text, {})


def test_answer_parsing() -> None:
    task = AnswerTask(load_prompt("instruction_answer"))
    assert task.format_output("Answer: In 1902.", {}) == {"answer": "In 1902."}
    with pytest.raises(ParseError):
        task.format_output("  Answer:  ", {})


CONTEXT = "Norwich City was founded in 1902. The club has played at Carrow Road since 1935."


def _sample(i: int, instruction: str, response: str) -> Sample:
    return make_sample(f"s{i}", instruction, response, CONTEXT)


def test_filters_keep_good_and_reject_with_reasons() -> None:
    good = "Norwich City was founded in 1902 and plays at Carrow Road."
    samples = [
        _sample(0, "When was Norwich City founded?", good),
        _sample(1, "When was Norwich City founded?", " "),
        _sample(2, "What is the club's stadium?", "As an AI language model, I cannot answer that question."),
        _sample(3, "Where do they play?", "Norwich."),
        _sample(4, "Why?", good),
        _sample(5, "Describe the club.", "the club the club the club the club the club the club the club the club"),
        _sample(6, "When was Norwich City founded?", "x" * 5000),
        _sample(7, "When was  norwich city founded", good + "!"),
    ]
    out = list(filter_samples(samples, FilterConfig()))
    kept = [s.id for s in out if isinstance(s, Sample)]
    reasons = {r.record_id: r.reason for r in out if isinstance(r, Reject)}
    assert kept == ["s0"]
    assert reasons == {
        "s1": "empty_response",
        "s2": "refusal",
        "s3": "too_short",
        "s4": "too_short",
        "s5": "repetitive",
        "s6": "too_long",
        "s7": "duplicate_of:s0",
    }
    assert len(out) == len(samples)
    rej = next(r for r in out if isinstance(r, Reject) and r.record_id == "s2")
    assert Sample.model_validate_json(rej.payload).response.startswith("As an AI")
