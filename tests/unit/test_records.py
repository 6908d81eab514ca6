"""Each record model and its Arrow schema stay in step: a round trip through real parquet is lossless."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from datapipe.records import (
    Chunk,
    Document,
    Message,
    Provenance,
    PublishedSample,
    Record,
    Reject,
    Sample,
    Span,
    TeacherCall,
    content_id,
)

CALL = TeacherCall(
    step="answer",
    prompt_name="p",
    prompt_version="v1",
    prompt_hash="abc",
    backend="llamacpp",
    model="m.gguf",
    params='{"t": 0.3}',
    raw_output="raw ✓",
    input_tokens=10,
    output_tokens=3,
    cached=False,
)
EXAMPLES: list[Record] = [
    Document(
        id="d1",
        source_path="/x/a.pdf",
        format="pdf",
        text="Überschrift\n\nText",
        spans=[Span(start=0, end=11, page=1, category="Title", heading="Überschrift"), Span(start=13, end=17, page=2)],
        n_pages=2,
        bytes_sha256="f" * 64,
    ),
    Document(
        id="d2",
        source_path="/x/h.md",
        format="md",
        text="Handbook\n\nLeave\n\nText",
        spans=[
            Span(start=0, end=8, category="Title", heading="Handbook", heading_path=["Handbook"]),
            Span(start=10, end=15, category="Title", heading="Leave", heading_path=["Handbook", "Leave"]),
            Span(start=17, end=21, heading="Leave", heading_path=["Handbook", "Leave"]),
        ],
        bytes_sha256="e" * 64,
        title="Handbook",
    ),
    Chunk(
        id="c1",
        document_id="d1",
        source_path="/x/a.pdf",
        index=0,
        text="Text",
        char_start=13,
        char_end=17,
        pages=[2],
        heading=None,
        n_tokens=1,
        n_sentences=1,
    ),
    Chunk(
        id="c2",
        document_id="d2",
        source_path="/x/h.md",
        index=0,
        text="Text",
        char_start=17,
        char_end=21,
        pages=[],
        heading="Leave",
        n_tokens=1,
        n_sentences=1,
        heading_path=["Handbook", "Leave"],
        document_title="Handbook",
    ),
    Sample(
        id="s1",
        kind="instruction",
        instruction="Q?",
        response="A.",
        messages=[Message(role="user", content="Q?"), Message(role="assistant", content="A.")],
        provenance=Provenance(
            source_path="/x/a.pdf",
            document_id="d1",
            chunk_id="c1",
            char_start=13,
            char_end=17,
            pages=[2],
            context="Text",
            teacher_calls=[CALL],
        ),
        verdicts={"length": "pass"},
    ),
    Sample(
        id="s2",
        kind="instruction",
        instruction="Q2?",
        response="A2.",
        messages=[
            Message(role="user", content="Document 1 (Handbook):\nText\n\nQuestion: Q1?"),
            Message(role="assistant", content="A1."),
            Message(role="user", content="Q2?"),
            Message(role="assistant", content="A2."),
        ],
        provenance=Provenance(
            source_path="/x/h.md",
            document_id="d2",
            chunk_id="c2",
            char_start=17,
            char_end=21,
            pages=[],
            context="Text",
            teacher_calls=[CALL, CALL],
            document_title="Handbook",
            heading_path=["Handbook", "Leave"],
            neighbour_chunk_ids=["c3"],
            distractor_chunk_ids=["c1"],
        ),
        training_format="open_book",
        context_in_row=True,
        question_type="fact",
    ),
    Reject(stage="extract", record_id="/x/b.pdf", reason="encrypted", detail="locked", source_path="/x/b.pdf"),
    PublishedSample(id="s1", kind="instruction", source_path="/x/a.pdf", document_id="d1", chunk_id="c1"),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: f"{type(r).__name__}-{getattr(r, 'id', '')}")
def test_parquet_round_trip(record: Record, tmp_path: Path) -> None:
    cls = type(record)
    path = tmp_path / "t.parquet"
    pq.write_table(cls.to_table([record]), path)
    table = pq.read_table(path)
    assert table.schema.equals(cls.arrow_schema())
    assert cls.from_table(table) == [record]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_schema_covers_every_field(record: Record) -> None:
    assert set(type(record).model_fields) == set(type(record).arrow_schema().names)


def test_content_id_is_stable_and_sensitive() -> None:
    assert content_id("a", 1, {"x": [1, 2]}) == content_id("a", 1, {"x": [1, 2]})
    assert content_id("a", 1) != content_id("a", 2)
    assert len(content_id("a")) == 24
