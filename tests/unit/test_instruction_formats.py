"""Question kinds and near-duplicate questions, training-format config, and turn-by-turn filtering."""

from __future__ import annotations

import pytest

from datapipe.config import FilterConfig, GenerateConfig, PipelineConfig
from datapipe.filter import filter_samples
from datapipe.filter.turns import turn_views
from datapipe.generate.instruction import ParseError, QuestionTask
from datapipe.generate.prompts import load_prompt
from datapipe.records import Message, Reject
from tests.records_kit import make_sample


def _task() -> QuestionTask:
    return QuestionTask(load_prompt("instruction_questions"), 5, ("fact", "explanation", "procedure", "comparison"))


@pytest.mark.parametrize(
    ("text", "typed"),
    [
        pytest.param("fact: When was Acme founded?", [("fact", "When was Acme founded?")], id="labelled"),
        pytest.param(
            "1. [Procedure] How is leave requested at Acme?",
            [("procedure", "How is leave requested at Acme?")],
            id="numbered-bracketed",
        ),  # fmt: skip
        pytest.param(
            "- **Comparison**: How do Acme's two plans differ?",
            [("comparison", "How do Acme's two plans differ?")],
            id="bold",
        ),  # fmt: skip
        pytest.param(
            "Note: Why does Acme close in August?",
            [(None, "Note: Why does Acme close in August?")],
            id="unknown-label-kept-in-question",
        ),  # fmt: skip
        pytest.param("What is the Acme leave policy?", [(None, "What is the Acme leave policy?")], id="unlabelled"),
    ],
)
def test_question_kinds_are_parsed(text: str, typed: list[tuple[str | None, str]]) -> None:
    assert _task().typed_questions(text) == typed


@pytest.mark.parametrize(
    "text",
    ["fact: Acme was founded in 1950.", 'This Handbook answers "fact: ...?', "<kind>: <question>?"],
    ids=["no-question-mark", "echoed-example", "echoed-format"],
)
def test_no_question_in_the_reply(text: str) -> None:
    """A label without a question, or the prompt's own example echoed back (a small teacher does), is no question."""
    with pytest.raises(ParseError):
        _task().typed_questions(text)


def test_near_duplicate_questions_are_dropped_with_the_answer_tokens_they_save() -> None:
    from datapipe.pipeline import instruction_generator

    instr = instruction_generator(PipelineConfig(sources=["x"]), None)
    typed = [
        ("fact", "How many vacation days do Acme employees get per year?"),
        ("fact", "How many vacation days do Acme employees get each year?"),
        ("procedure", "How do Acme employees request vacation?"),
    ]
    kept, dropped = instr.dedup_questions(typed, {"context": "Acme employees get 25 days.", "language": None})
    assert kept == [typed[0], typed[2]]
    [(q, twin, saved)] = dropped
    assert (q, twin) == (typed[1][1], typed[0][1]) and saved > instr.cfg.answer_params.max_new_tokens
    strict = instruction_generator(PipelineConfig(sources=["x"], generate={"question_dedup": 1.0}), None)
    assert strict.dedup_questions(typed, {"context": "x", "language": None})[1] == []


def test_formats_config() -> None:
    gen = GenerateConfig(formats={"instruction": ["open_book", "closed_book", "open_book"]})
    assert gen.formats_of("instruction") == ["open_book", "closed_book"] and gen.formats_of("qa") == ["closed_book"]
    with pytest.raises(ValueError, match="qa: taxonomy QA is generated closed_book only"):
        GenerateConfig(formats={"qa": ["open_book"]})
    with pytest.raises(ValueError, match="at least one"):
        GenerateConfig(formats={"instruction": []})


def test_every_turn_is_filtered() -> None:
    context = (
        "Acme's handbook: employees get 25 vacation days a year; their manager approves each request in three days."
    )
    s = make_sample(
        "s1", "How many vacation days do Acme employees get?", "Acme employees get 25 days a year.", context
    )
    s.messages = [
        *s.messages,
        Message(role="user", content="And who approves them?"),
        Message(role="assistant", content="x"),
    ]
    s.instruction, s.response = "And who approves them?", "Their manager approves each request in three days."
    assert [(v.instruction, v.response) for v in turn_views(s)][1] == ("And who approves them?", "x")
    [r] = list(filter_samples([s], FilterConfig(languages=[])))
    assert isinstance(r, Reject) and r.reason == "too_short" and r.detail.startswith("turn 2 of 2:")
    s.messages[3].content = s.response
    assert list(filter_samples([s], FilterConfig(languages=[]))) == [s]
