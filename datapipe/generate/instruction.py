"""Instruction (SFT) data: per chunk, the teacher writes questions, then a grounded answer to each.

Each step is a task in distilabel's shape — ``format_input(row) -> chat messages`` and
``format_output(text, row) -> dict`` — driven by datapipe's own shard loop through the
:class:`~datapipe.teacher.Teacher`, so a failed parse becomes a ``parse_error`` reject
with the raw text kept rather than a silent ``None``.

Input columns: ``context`` (chunk text), ``heading``, ``title``, ``heading_path``,
``source_name``, ``language``. Output: samples with ``instruction`` (the last question) and
``response`` (the last answer), in one of two training formats (``generate.formats``):

- ``closed_book``: the user turn is the question alone (it must name its subject);
- ``open_book``: the user turn carries the source chunk among ``generate.open_book.distractors``
  chunks of other documents (RAFT-style), in a seeded random order; ``context_in_row`` is True.

With ``generate.multi_turn.turns`` > 1 the first question of a share of the chunks opens a
conversation whose follow-ups the teacher writes from the same chunk and its neighbours. A chunk's questions that
nearly repeat an earlier one are dropped (``duplicate_question``) before any answer is requested.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from datapipe.config import GenerateConfig
from datapipe.errors import TeacherError
from datapipe.generate.prompts import Prompt
from datapipe.reasons import teacher_failure
from datapipe.records import Chunk, Message, Provenance, Reject, Sample, TeacherCall, content_id
from datapipe.teacher import Teacher, TeacherResponse
from datapipe.teacher.budget import estimate_tokens

_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|q(?:uestion)?\s*\d*\s*[:.)-])\s*", re.IGNORECASE)
_ANSWER_PREFIX = re.compile(r"^\s*(?:answer|a)\s*[:.-]\s*", re.IGNORECASE)
# a question's kind label: "[fact] ...", "(fact) ...", "**fact**: ...", or "fact: ..."
_TYPE_TAG = re.compile(
    r"^\s*(?:[\[(]\s*([A-Za-z][A-Za-z -]{1,24}?)\s*[\])]|\*\*\s*([A-Za-z][A-Za-z -]{1,24}?)\s*:?\s*\*\*|"
    r"([A-Za-z][A-Za-z -]{1,24}?)\s*(?=[:–-]))\s*[:–-]?\s*(.+)$"
)

_PLACEHOLDER = re.compile(r"\.\.\.|…|<question>|<kind>")

# langdetect's codes -> the name a prompt uses; other codes reach the prompt as "the language with code xx"
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "sv": "Swedish", "da": "Danish", "no": "Norwegian", "fi": "Finnish", "pl": "Polish",
    "cs": "Czech", "ru": "Russian", "uk": "Ukrainian", "tr": "Turkish", "el": "Greek", "ja": "Japanese",
    "zh-cn": "Chinese", "zh-tw": "Chinese", "ko": "Korean", "ar": "Arabic", "he": "Hebrew", "hi": "Hindi",
}  # fmt: skip


class ParseError(ValueError):
    """The teacher's text does not have the shape the task asks for."""


def source_language(text: str) -> str | None:
    """The name of the chunk's language when langdetect is sure of it (p >= 0.9), else None (the prompt then
    asks for "the language of the passage")."""
    from datapipe.filter import detect_language

    found = detect_language(text)
    if found is None or found[1] < 0.9:
        return None
    return LANGUAGE_NAMES.get(found[0], f"the language with ISO 639-1 code {found[0]!r}")


@dataclass(frozen=True)
class QuestionTask:
    prompt: Prompt
    n: int
    types: tuple[str, ...] = ()

    def format_input(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return self.prompt.render(
            context=row["context"],
            heading=row.get("heading"),
            n=self.n,
            title=row.get("title"),
            heading_path=row.get("heading_path") or [],
            source_name=row.get("source_name"),
            types=list(self.types),
            language=row.get("language"),
        )

    def typed_questions(self, text: str) -> list[tuple[str | None, str]]:
        """(kind, question) per question line; the kind is one of ``types`` when the line is labelled with it."""
        known = {t.lower() for t in self.types}
        out: list[tuple[str | None, str]] = []
        seen: set[str] = set()
        for line in text.splitlines():
            line = _BULLET.sub("", line).strip().strip('"').strip()
            kind: str | None = None
            if (m := _TYPE_TAG.match(line)) and (label := (m[1] or m[2] or m[3]).strip().lower()) in known:
                kind, line = label, m[4].strip().strip('"').strip()
            if "?" not in line:
                continue
            q = line[: line.index("?") + 1].strip()
            if _PLACEHOLDER.search(q):  # the prompt's own example echoed back ("fact: ...?"), not a question
                continue
            if len(q) >= 10 and q.lower() not in seen:
                seen.add(q.lower())
                out.append((kind, q))
        if not out:
            raise ParseError("no line with a question (ending in '?') in the teacher's output")
        return out[: self.n]

    def format_output(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        return {"questions": [q for _, q in self.typed_questions(text)]}


@dataclass(frozen=True)
class AnswerTask:
    prompt: Prompt

    def format_input(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return self.prompt.render(
            context=row["context"],
            question=row["question"],
            title=row.get("title"),
            heading_path=row.get("heading_path") or [],
            language=row.get("language"),
            conversation=row.get("conversation") or [],
            open_book=bool(row.get("open_book")),
        )

    def format_output(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        answer = _ANSWER_PREFIX.sub("", text.strip()).strip()
        if not answer:
            raise ParseError("the teacher returned an empty answer")
        return {"answer": answer}


@dataclass(frozen=True)
class FollowupTask:
    """The user's next question in a conversation about a chunk (and its neighbours)."""

    prompt: Prompt

    def format_input(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return self.prompt.render(
            context=row["context"],
            title=row.get("title"),
            heading_path=row.get("heading_path") or [],
            conversation=row["conversation"],
            language=row.get("language"),
        )

    def format_output(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        asked = {t["question"].lower() for t in row["conversation"]}
        for _, q in QuestionTask(self.prompt, 1).typed_questions(text):
            if q.lower() not in asked:
                return {"question": q}
        raise ParseError("the follow-up repeats a question already asked")


@dataclass
class _Conversation:
    """One sample being built: its turns and the teacher calls behind them."""

    fmt: str
    qtype: str | None
    turns: list[dict[str, str]] = field(default_factory=list)  # {"question", "answer"}
    calls: list[TeacherCall] = field(default_factory=list)


_TABLE_RULE = re.compile(r"^\|(?:\s*:?-{3,}:?\s*\|)+\s*$", re.MULTILINE)


def has_table(text: str) -> bool:
    """Whether a chunk holds a Markdown table (as extraction writes tables): a header rule line."""
    return bool(_TABLE_RULE.search(text))


class InstructionGenerator:
    def __init__(
        self,
        cfg: GenerateConfig,
        teacher: Teacher,
        question_prompt: Prompt,
        answer_prompt: Prompt,
        followup_prompt: Prompt | None = None,
        context_prompt: Prompt | None = None,
        table_prompt: Prompt | None = None,
    ) -> None:
        """``table_prompt``: the question prompt for chunks that hold a table (questions about cells)."""
        self.cfg = cfg
        self.teacher = teacher
        self.questions = QuestionTask(question_prompt, cfg.questions_per_chunk, tuple(cfg.question_types))
        self.table_questions = QuestionTask(table_prompt, cfg.questions_per_chunk) if table_prompt else None
        self.answers = AnswerTask(answer_prompt)
        self.formats = cfg.formats_of("instruction")
        self.turns = cfg.multi_turn.turns
        if self.turns > 1 and followup_prompt is None:
            raise ValueError("generate.multi_turn.turns > 1 needs the follow-up prompt")
        if "open_book" in self.formats and context_prompt is None:
            raise ValueError("open_book needs the open-book context prompt")
        self.followups = FollowupTask(followup_prompt) if followup_prompt and self.turns > 1 else None
        self.context_prompt = context_prompt if "open_book" in self.formats else None

    @property
    def prompts(self) -> list[Prompt]:
        extra = [t.prompt for t in (self.followups,) if t] + ([self.context_prompt] if self.context_prompt else [])
        table = [self.table_questions.prompt] if self.table_questions else []
        return [self.questions.prompt, self.answers.prompt, *extra, *table]

    def question_task(self, chunk: Chunk) -> QuestionTask:
        if self.table_questions is not None and has_table(chunk.text):
            return self.table_questions
        return self.questions

    def config_hash(self) -> str:
        return content_id(
            self.cfg.model_dump(mode="json"),
            self.teacher.identity,
            *[p.hash for p in self.prompts],
            length=16,
        )

    def _call(self, step: str, prompt: Prompt, params_json: str, resp: TeacherResponse) -> TeacherCall:
        ident = self.teacher.identity
        return TeacherCall(
            step=step,
            prompt_name=prompt.name,
            prompt_version=prompt.version,
            prompt_hash=prompt.hash,
            backend=ident["backend"],
            model=ident["model"],
            params=params_json,
            raw_output=resp.text,
            input_tokens=resp.input_tokens,
            output_tokens=resp.output_tokens,
            cached=resp.cached,
        )

    def base_row(self, chunk: Chunk) -> dict[str, Any]:
        """The variables every prompt of this chunk gets."""
        return {
            "context": chunk.text,
            "heading": chunk.heading,
            "title": chunk.document_title,
            "heading_path": chunk.heading_path,
            "source_name": PurePosixPath(chunk.source_path.replace("\\", "/")).stem.replace("_", " "),
            "language": self.cfg.language or source_language(chunk.text),
        }

    def dedup_questions(
        self, typed: list[tuple[str | None, str]], row: dict[str, Any]
    ) -> tuple[list[tuple[str | None, str]], list[tuple[str, str, int]]]:
        """Questions kept, and (dropped question, the kept one it repeats, answer tokens saved) per drop."""
        from rapidfuzz import fuzz

        from datapipe.filter import normalise

        kept: list[tuple[str | None, str]] = []
        dropped: list[tuple[str, str, int]] = []
        for kind, q in typed:
            nq = normalise(q)
            twin = next((k for _, k in kept if fuzz.ratio(nq, normalise(k)) / 100 >= self.cfg.question_dedup), None)
            if twin is None:
                kept.append((kind, q))
                continue
            saved = estimate_tokens(self.answers.format_input({**row, "question": q}))
            dropped.append((q, twin, saved + self.cfg.answer_params.max_new_tokens))
        return kept, dropped

    async def for_chunk(
        self, chunk: Chunk, neighbours: Sequence[Chunk] = (), distractors: Sequence[Chunk] = ()
    ) -> tuple[list[Sample], list[Reject]]:
        """Samples of one chunk. ``neighbours``: chunks around it in its document (multi-turn follow-ups see
        them); ``distractors``: other documents' chunks shown with it in open-book rows."""
        row = self.base_row(chunk)
        qtask = self.question_task(chunk)
        qparams, aparams = self.cfg.question_params, self.cfg.answer_params
        q_json = json.dumps(qparams.model_dump(mode="json"), sort_keys=True)
        a_json = json.dumps(aparams.model_dump(mode="json"), sort_keys=True)
        rejects: list[Reject] = []

        def reject(reason: str, record_id: str, detail: str, raw_output: str = "", question: str | None = None,
                   **extra: Any) -> None:  # fmt: skip
            payload = json.dumps({"chunk_id": chunk.id, "question": question, "raw_output": raw_output, **extra})
            rejects.append(
                Reject(
                    stage="generate",
                    record_id=record_id,
                    reason=reason,
                    detail=detail,
                    source_path=chunk.source_path,
                    payload=payload,
                )
            )

        try:
            q_resp = await self.teacher.complete(qtask.format_input(row), qparams)
        except TeacherError as exc:
            reject(teacher_failure(exc), chunk.id, f"questions for chunk {chunk.id}: {exc}")
            return [], rejects
        try:
            typed = qtask.typed_questions(q_resp.text)
        except ParseError as exc:
            reject("parse_error", chunk.id, f"questions for chunk {chunk.id}: {exc}", q_resp.text)
            return [], rejects
        q_call = self._call("questions", qtask.prompt, q_json, q_resp)
        typed, dropped = self.dedup_questions(typed, row)
        for q, twin, saved in dropped:
            reject(
                "duplicate_question",
                content_id(chunk.id, "question", q),
                f"question {q!r} nearly repeats {twin!r} (similarity >= generate.question_dedup="
                f"{self.cfg.question_dedup}); its answer was not requested",
                q_resp.text,
                q,
                answer_tokens_saved=saved,
            )

        k = self.cfg.multi_turn.neighbours
        ordered = sorted((c for c in neighbours if c.document_id == chunk.document_id), key=lambda c: c.index)
        before = [c for c in ordered if c.index < chunk.index][-k:] if k else []
        after = [c for c in ordered if c.index > chunk.index][:k]
        followup_chunks = [*before, chunk, *after]

        async def build(i: int, kind: str | None, question: str) -> Sample | None:
            fmt = self.formats[(chunk.index + i) % len(self.formats)]  # dealt in turn across a document's chunks
            turns = self.turns if i == 0 and self.converses(chunk) else 1
            # an open-book row carries only its chunk, so its follow-ups stay inside it
            around = [chunk] if fmt == "open_book" else followup_chunks
            shown = self.open_book_documents(chunk, distractors, question) if fmt == "open_book" else []
            ident: list[Any] = [
                chunk.id, "instruction", i, question,
                qtask.prompt.hash, self.answers.prompt.hash, self.teacher.identity, q_json, a_json,
            ]  # fmt: skip
            if fmt != "closed_book" or turns > 1:  # single-turn closed-book ids are as before these options
                ident += [
                    fmt,
                    turns,
                    [c.id for c in shown],
                    [c.id for c in around] if turns > 1 else [],
                    self.followups.prompt.hash if self.followups and turns > 1 else None,
                    self.context_prompt.hash if self.context_prompt and fmt == "open_book" else None,
                ]
            sample_id = content_id(*ident)
            conv = _Conversation(fmt, kind)
            conv.calls.append(q_call)
            ctx = "\n\n".join(c.text for c in around) if turns > 1 else chunk.text
            for turn in range(turns):
                if turn:
                    assert self.followups is not None
                    frow = {**row, "context": ctx, "conversation": conv.turns}
                    try:
                        f_resp = await self.teacher.complete(self.followups.format_input(frow), qparams)
                    except TeacherError as exc:
                        reject(teacher_failure(exc), sample_id, f"follow-up {turn + 1} of {question!r}: {exc}",
                               question=question)  # fmt: skip
                        return None
                    try:
                        question = self.followups.format_output(f_resp.text, frow)["question"]
                    except ParseError as exc:
                        reject("parse_error", sample_id, f"follow-up {turn + 1} of {question!r}: {exc}",
                               f_resp.text, question)  # fmt: skip
                        return None
                    conv.calls.append(self._call("followup", self.followups.prompt, q_json, f_resp))
                arow = {
                    **row,
                    "context": ctx if turn else chunk.text,
                    "question": question,
                    "conversation": list(conv.turns),
                    "open_book": fmt == "open_book",
                }
                try:
                    a_resp = await self.teacher.complete(self.answers.format_input(arow), aparams)
                except TeacherError as exc:
                    reject(teacher_failure(exc), sample_id, f"answer to {question!r}: {exc}", question=question)
                    return None
                try:
                    text = self.answers.format_output(a_resp.text, arow)["answer"]
                except ParseError as exc:
                    reject("parse_error", sample_id, f"answer to {question!r}: {exc}", a_resp.text, question)
                    return None
                conv.calls.append(self._call("answer", self.answers.prompt, a_json, a_resp))
                conv.turns.append({"question": question, "answer": text})
            return self.sample(sample_id, chunk, conv, shown, around if turns > 1 else [chunk], ctx)

        results = await asyncio.gather(*(build(i, kind, q) for i, (kind, q) in enumerate(typed)))
        return [s for s in results if s is not None], rejects

    def converses(self, chunk: Chunk) -> bool:
        """Whether the chunk's first question opens a conversation: a stable ``multi_turn.share`` of chunks."""
        if self.turns <= 1:
            return False
        return int(content_id(chunk.id, "multi_turn", length=8), 16) / 16**8 < self.cfg.multi_turn.share

    def open_book_documents(self, chunk: Chunk, distractors: Sequence[Chunk], question: str) -> list[Chunk]:
        """The source chunk among the distractors, in an order seeded by the config, chunk and question."""
        docs = [chunk, *distractors]
        random.Random(content_id(self.cfg.open_book.seed, chunk.id, question)).shuffle(docs)
        return docs

    def sample(
        self, sample_id: str, chunk: Chunk, conv: _Conversation, shown: list[Chunk], around: list[Chunk], ctx: str
    ) -> Sample:
        messages: list[Message] = []
        for n, turn in enumerate(conv.turns):
            user = turn["question"]
            if n == 0 and conv.fmt == "open_book":
                assert self.context_prompt is not None
                documents = [{"title": c.document_title, "text": c.text} for c in shown]
                user = self.context_prompt.render(documents=documents, question=user)[-1]["content"]
            messages += [Message(role="user", content=user), Message(role="assistant", content=turn["answer"])]
        return Sample(
            id=sample_id,
            kind="instruction",
            instruction=messages[-2].content,
            response=messages[-1].content,
            messages=messages,
            training_format=conv.fmt,  # type: ignore[arg-type]
            context_in_row=conv.fmt == "open_book",
            question_type=conv.qtype,
            provenance=Provenance(
                source_path=chunk.source_path,
                document_id=chunk.document_id,
                chunk_id=chunk.id,
                char_start=chunk.char_start,
                char_end=chunk.char_end,
                pages=chunk.pages,
                heading=chunk.heading,
                context=ctx,
                teacher_calls=conv.calls,
                document_title=chunk.document_title,
                heading_path=chunk.heading_path,
                neighbour_chunk_ids=[c.id for c in around if c.id != chunk.id],
                distractor_chunk_ids=[c.id for c in shown if c.id != chunk.id],
            ),
        )
