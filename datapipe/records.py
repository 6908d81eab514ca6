"""Typed records passed between stages, each with the Arrow schema it is stored as.

Identity is content-addressed (see :func:`content_id`): a document id hashes its bytes,
a chunk id hashes its own text, heading, source path and chunker config (not the document's
bytes or offsets, so a chunk an edit elsewhere did not touch keeps its id; ``document_id`` and
the char span record where it lies now), a sample id hashes its inputs, task, prompt version,
teacher and generation parameters.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal, get_args

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, model_validator

SampleKind = Literal["instruction", "qa"]
"""The kinds a :class:`Sample` can be: the one list that records, config (judge, preference, grounding,
export formats), curation and estimates use. A generation kind (``datapipe.generate.kinds``) makes samples of
one of these kinds; a new sample kind is added here."""
SAMPLE_KINDS: tuple[SampleKind, ...] = get_args(SampleKind)
DatasetKind = Literal["instruction", "qa", "preference"]
"""What gets a dataset at export: the sample kinds and DPO preference pairs."""


def content_id(*parts: Any, length: int = 24) -> str:
    """A stable hex id for any JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: ClassVar[pa.Schema]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        return cls.schema_

    @classmethod
    def to_table(cls, records: list[Any]) -> pa.Table:
        return pa.Table.from_pylist([r.model_dump(mode="json") for r in records], schema=cls.schema_)

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Any]:
        return [cls.model_validate(row) for row in table.to_pylist()]


class Span(BaseModel):
    """One extracted element's place in the document text."""

    model_config = ConfigDict(extra="forbid")
    start: int
    end: int
    page: int | None = None
    category: str = "Text"
    heading: str | None = None
    heading_path: list[str] = []  # enclosing section titles, outermost first (the last one is ``heading``)


_SPAN = pa.struct(
    [
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("page", pa.int32()),
        ("category", pa.string()),
        ("heading", pa.string()),
        ("heading_path", pa.list_(pa.string())),
    ]
)


class NoiseRemoved(BaseModel):
    """Layout noise taken out of one document at extraction, by kind (see datapipe/extract/noise.py)."""

    model_config = ConfigDict(extra="forbid")
    running_headers: int = 0
    page_numbers: int = 0
    margin_stamps: int = 0
    hyphenations: int = 0


_NOISE = pa.struct(
    [
        ("running_headers", pa.int32()),
        ("page_numbers", pa.int32()),
        ("margin_stamps", pa.int32()),
        ("hyphenations", pa.int32()),
    ]
)


class Document(Record):
    """Text extracted from one source file, with per-element spans (pages, headings; tables as
    Markdown in spans of category ``Table``) and the layout noise removed from it."""

    id: str
    source_path: str
    format: str
    text: str
    spans: list[Span]
    n_pages: int | None = None
    bytes_sha256: str
    taxonomy_path: str | None = None
    title: str | None = None  # the document's title: its first top-level Title element, if any
    removed: NoiseRemoved = NoiseRemoved()

    schema_ = pa.schema(
        [
            ("id", pa.string()),
            ("source_path", pa.string()),
            ("format", pa.string()),
            ("text", pa.large_string()),
            ("spans", pa.list_(_SPAN)),
            ("n_pages", pa.int32()),
            ("bytes_sha256", pa.string()),
            ("taxonomy_path", pa.string()),
            ("title", pa.string()),
            ("removed", _NOISE),
        ]
    )


class Chunk(Record):
    """A semantically coherent run of sentences from one document."""

    id: str
    document_id: str
    source_path: str
    index: int
    text: str
    char_start: int
    char_end: int
    pages: list[int]
    heading: str | None = None
    n_tokens: int
    n_sentences: int
    taxonomy_path: str | None = None
    heading_path: list[str] = []  # section titles enclosing the chunk's first sentence, outermost first
    document_title: str | None = None

    schema_ = pa.schema(
        [
            ("id", pa.string()),
            ("document_id", pa.string()),
            ("source_path", pa.string()),
            ("index", pa.int32()),
            ("text", pa.string()),
            ("char_start", pa.int64()),
            ("char_end", pa.int64()),
            ("pages", pa.list_(pa.int32())),
            ("heading", pa.string()),
            ("n_tokens", pa.int32()),
            ("n_sentences", pa.int32()),
            ("taxonomy_path", pa.string()),
            ("heading_path", pa.list_(pa.string())),
            ("document_title", pa.string()),
        ]
    )


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


class TeacherCall(BaseModel):
    """Provenance of one teacher request that contributed to a sample."""

    model_config = ConfigDict(extra="forbid")
    step: str
    prompt_name: str
    prompt_version: str
    prompt_hash: str
    backend: str
    model: str
    params: str  # JSON of the generation parameters
    raw_output: str
    input_tokens: int
    output_tokens: int
    cached: bool


_TEACHER_CALL = pa.struct(
    [
        ("step", pa.string()),
        ("prompt_name", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_hash", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("params", pa.string()),
        ("raw_output", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("cached", pa.bool_()),
    ]
)


class Curation(BaseModel):
    """What human review in Argilla decided about a record (set by `datapipe curate pull`)."""

    model_config = ConfigDict(extra="forbid")
    decision: Literal["accepted", "corrected"]
    dataset: str
    reviewers: list[str]
    policy: str
    keep_votes: int
    discard_votes: int
    quality: float | None = None  # mean reviewer rating, 1-5
    original_response: str | None = None  # the teacher's text a correction replaced


_CURATION = pa.struct(
    [
        ("decision", pa.string()),
        ("dataset", pa.string()),
        ("reviewers", pa.list_(pa.string())),
        ("policy", pa.string()),
        ("keep_votes", pa.int32()),
        ("discard_votes", pa.int32()),
        ("quality", pa.float64()),
        ("original_response", pa.string()),
    ]
)


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source_path: str
    document_id: str
    chunk_id: str
    char_start: int
    char_end: int
    pages: list[int]
    heading: str | None = None
    taxonomy_path: str | None = None
    leaf_kind: str | None = None
    context: str
    teacher_calls: list[TeacherCall]
    curation: Curation | None = None
    document_title: str | None = None
    heading_path: list[str] = []
    neighbour_chunk_ids: list[str] = []  # multi-turn: chunks next to chunk_id whose text is in ``context`` too
    distractor_chunk_ids: list[str] = []  # open-book: other documents' chunks shown in the user turn


_PROVENANCE = pa.struct(
    [
        ("source_path", pa.string()),
        ("document_id", pa.string()),
        ("chunk_id", pa.string()),
        ("char_start", pa.int64()),
        ("char_end", pa.int64()),
        ("pages", pa.list_(pa.int32())),
        ("heading", pa.string()),
        ("taxonomy_path", pa.string()),
        ("leaf_kind", pa.string()),
        ("context", pa.string()),
        ("teacher_calls", pa.list_(_TEACHER_CALL)),
        ("curation", _CURATION),
        ("document_title", pa.string()),
        ("heading_path", pa.list_(pa.string())),
        ("neighbour_chunk_ids", pa.list_(pa.string())),
        ("distractor_chunk_ids", pa.list_(pa.string())),
    ]
)


class Sample(Record):
    """One training example with everything needed to trace it back to its source.

    ``instruction`` and ``response`` are the last user and assistant turns of ``messages`` (a
    multi-turn conversation has earlier turns in ``messages`` only). ``training_format`` is
    ``closed_book`` (the question stands alone: the model must know the answer) or ``open_book``
    (the user turn carries the source chunk among distractor chunks); ``context_in_row`` is True
    exactly when the context travels in the row, so checks for questions that point at a text
    the model never sees must skip such samples.
    """

    id: str
    kind: SampleKind
    instruction: str
    response: str
    messages: list[Message]
    provenance: Provenance
    verdicts: dict[str, str] = {}
    scores: dict[str, float] = {}
    training_format: Literal["closed_book", "open_book"] = "closed_book"
    context_in_row: bool = False
    question_type: str | None = None  # fact, explanation, ... as the teacher labelled the (first) question

    schema_ = pa.schema(
        [
            ("id", pa.string()),
            ("kind", pa.string()),
            ("instruction", pa.string()),
            ("response", pa.string()),
            ("messages", pa.list_(_MESSAGE)),
            ("provenance", _PROVENANCE),
            ("verdicts", pa.map_(pa.string(), pa.string())),
            ("scores", pa.map_(pa.string(), pa.float64())),
            ("training_format", pa.string()),
            ("context_in_row", pa.bool_()),
            ("question_type", pa.string()),
        ]
    )

    @classmethod
    def to_table(cls, records: list[Any]) -> pa.Table:
        rows = []
        for r in records:
            row = r.model_dump(mode="json")
            row["verdicts"] = list(row["verdicts"].items())
            row["scores"] = list(row["scores"].items())
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=cls.schema_)

    @classmethod
    def from_table(cls, table: pa.Table) -> list[Any]:
        out = []
        for row in table.to_pylist():
            row["verdicts"] = dict(row["verdicts"] or [])
            row["scores"] = dict(row["scores"] or [])
            out.append(cls.model_validate(row))
        return out


class Reject(Record):
    """A record a stage dropped, with the reason code and whatever is needed to inspect it."""

    stage: str
    record_id: str
    reason: str
    detail: str = ""
    source_path: str | None = None
    payload: str = ""  # JSON of the dropped record, or the raw teacher output

    schema_ = pa.schema(
        [
            ("stage", pa.string()),
            ("record_id", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("source_path", pa.string()),
            ("payload", pa.large_string()),
        ]
    )


class Candidate(BaseModel):
    """One candidate response of a preference set, with who wrote it and how the judge rated it."""

    model_config = ConfigDict(extra="forbid")
    text: str
    # "original" (the sample's answer) | "teacher" | the second model's label ("student") | "reviewer"
    # (an Argilla correction) | "hard_negative" (synthetic: one fact of the chosen answer replaced)
    source: str
    backend: str
    model: str
    params: str  # JSON of the generation parameters (hard_negative: what was replaced, and which filter caught it)
    score: float | None = None
    rationale: str = ""
    judge_raw: str = ""
    prompt: str = ""  # name@version#hash of the template that gave the candidate its grounding ("" when none)


_CANDIDATE = pa.struct(
    [
        ("text", pa.string()),
        ("source", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("params", pa.string()),
        ("score", pa.float64()),
        ("rationale", pa.string()),
        ("judge_raw", pa.string()),
        ("prompt", pa.string()),
    ]
)


class PairwiseVerdict(BaseModel):
    """One pairwise judge call: candidates ``first`` (shown as A) and ``second`` (B), indices into the pair's
    candidates; ``winner`` is "first", "second", "tie" or "" (no verdict in the reply)."""

    model_config = ConfigDict(extra="forbid")
    first: int
    second: int
    winner: str
    raw: str


_VERDICT = pa.struct([("first", pa.int64()), ("second", pa.int64()), ("winner", pa.string()), ("raw", pa.string())])


class PreferencePair(Record):
    """A DPO pair: prompt, chosen and rejected as conversational message lists, with every rating."""

    id: str
    sample_id: str
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    chosen_score: float
    rejected_score: float
    margin: float
    candidates: list[Candidate]
    judge_model: str
    judge_prompt: str  # name@version#hash
    provenance: Provenance
    pairwise: list[PairwiseVerdict] = []  # both orders (A/B, B/A) when the pairwise judge ran
    length_diff: int = 0  # characters of chosen minus rejected (set from the texts when not given)

    @model_validator(mode="after")
    def _length_diff(self) -> PreferencePair:
        if not self.length_diff and self.chosen and self.rejected:
            self.length_diff = len(self.chosen[-1].content) - len(self.rejected[-1].content)
        return self

    schema_ = pa.schema(
        [
            ("id", pa.string()),
            ("sample_id", pa.string()),
            ("prompt", pa.list_(_MESSAGE)),
            ("chosen", pa.list_(_MESSAGE)),
            ("rejected", pa.list_(_MESSAGE)),
            ("chosen_score", pa.float64()),
            ("rejected_score", pa.float64()),
            ("margin", pa.float64()),
            ("candidates", pa.list_(_CANDIDATE)),
            ("judge_model", pa.string()),
            ("judge_prompt", pa.string()),
            ("provenance", _PROVENANCE),
            ("pairwise", pa.list_(_VERDICT)),
            ("length_diff", pa.int64()),
        ]
    )


class CurationDecision(Record):
    """One reviewed (or still pending) Argilla record as of the last `datapipe curate pull`."""

    record_id: str  # the sample id, or the preference pair id
    kind: str  # instruction | qa | preference
    dataset: str
    decision: Literal["accepted", "corrected", "discarded", "pending", "conflict"]
    corrected_text: str | None = None
    reviewers: list[str] = []
    keep_votes: int = 0
    discard_votes: int = 0
    drafts: int = 0
    quality: float | None = None
    detail: str = ""

    schema_ = pa.schema(
        [
            ("record_id", pa.string()),
            ("kind", pa.string()),
            ("dataset", pa.string()),
            ("decision", pa.string()),
            ("corrected_text", pa.string()),
            ("reviewers", pa.list_(pa.string())),
            ("keep_votes", pa.int32()),
            ("discard_votes", pa.int32()),
            ("drafts", pa.int32()),
            ("quality", pa.float64()),
            ("detail", pa.string()),
        ]
    )


class PublishedSample(Record):
    """A sample in a published version of the training data, with its source (the next diff compares these)."""

    id: str
    kind: str
    source_path: str
    document_id: str
    chunk_id: str

    schema_ = pa.schema(
        [
            ("id", pa.string()),
            ("kind", pa.string()),
            ("source_path", pa.string()),
            ("document_id", pa.string()),
            ("chunk_id", pa.string()),
        ]
    )
