"""Instruction (SFT) data: per chunk, the teacher writes questions, then a grounded answer to each.

Each step is a task in distilabel's shape — ``format_input(row) -> chat messages`` and
``format_output(text, row) -> dict`` — driven by datapipe's own shard loop through the
:class:`~datapipe.teacher.Teacher`, so a failed parse becomes a ``parse_error`` reject
with the raw text kept rather than a silent ``None``.

Input columns: ``context`` (chunk text), ``heading``. Output: samples with
``instruction`` (the question) and ``response`` (the answer).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from datapipe.config import GenerateConfig
from datapipe.errors import TeacherError
from datapipe.generate.prompts import Prompt
from datapipe.records import Chunk, Message, Provenance, Reject, Sample, TeacherCall, content_id
from datapipe.teacher import Teacher, TeacherResponse

_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.):]|q(?:uestion)?\s*\d*\s*[:.)-])\s*", re.IGNORECASE)
_ANSWER_PREFIX = re.compile(r"^\s*(?:answer|a)\s*[:.-]\s*", re.IGNORECASE)


class ParseError(ValueError):
    """The teacher's text does not have the shape the task asks for."""


@dataclass(frozen=True)
class QuestionTask:
    prompt: Prompt
    n: int

    def format_input(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return self.prompt.render(context=row["context"], heading=row.get("heading"), n=self.n)

    def format_output(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        questions: list[str] = []
        for line in text.splitlines():
            line = _BULLET.sub("", line).strip().strip('"').strip()
            if "?" not in line:
                continue
            q = line[: line.index("?") + 1].strip()
            if len(q) >= 10 and q.lower() not in {x.lower() for x in questions}:
                questions.append(q)
        if not questions:
            raise ParseError("no line with a question (ending in '?') in the teacher's output")
        return {"questions": questions[: self.n]}


@dataclass(frozen=True)
class AnswerTask:
    prompt: Prompt

    def format_input(self, row: dict[str, Any]) -> list[dict[str, str]]:
        return self.prompt.render(context=row["context"], question=row["question"])

    def format_output(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        answer = _ANSWER_PREFIX.sub("", text.strip()).strip()
        if not answer:
            raise ParseError("the teacher returned an empty answer")
        return {"answer": answer}


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
        table_prompt: Prompt | None = None,
    ) -> None:
        """``table_prompt``: the question prompt for chunks that hold a table (questions about cells)."""
        self.cfg = cfg
        self.teacher = teacher
        self.plain_questions = QuestionTask(question_prompt, cfg.questions_per_chunk)
        self.table_questions = QuestionTask(table_prompt, cfg.questions_per_chunk) if table_prompt else None
        self.answers = AnswerTask(answer_prompt)

    def question_task(self, chunk: Chunk) -> QuestionTask:
        if self.table_questions is not None and has_table(chunk.text):
            return self.table_questions
        return self.plain_questions

    def config_hash(self) -> str:
        return content_id(
            self.cfg.model_dump(mode="json"),
            self.teacher.identity,
            self.plain_questions.prompt.hash,
            self.answers.prompt.hash,
            *([self.table_questions.prompt.hash] if self.table_questions else []),
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

    async def for_chunk(self, chunk: Chunk) -> tuple[list[Sample], list[Reject]]:
        row = {"context": chunk.text, "heading": chunk.heading}
        qtask = self.question_task(chunk)
        qparams, aparams = self.cfg.question_params, self.cfg.answer_params
        q_json = json.dumps(qparams.model_dump(mode="json"), sort_keys=True)
        a_json = json.dumps(aparams.model_dump(mode="json"), sort_keys=True)
        rejects: list[Reject] = []

        def reject(reason: str, record_id: str, detail: str, raw_output: str = "", question: str | None = None) -> None:
            payload = json.dumps({"chunk_id": chunk.id, "question": question, "raw_output": raw_output})
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
            reject("teacher_error", chunk.id, f"questions for chunk {chunk.id}: {exc}")
            return [], rejects
        try:
            questions = qtask.format_output(q_resp.text, row)["questions"]
        except ParseError as exc:
            reject("parse_error", chunk.id, f"questions for chunk {chunk.id}: {exc}", q_resp.text)
            return [], rejects
        q_call = self._call("questions", qtask.prompt, q_json, q_resp)

        async def answer(i: int, question: str) -> Sample | None:
            sample_id = content_id(
                chunk.id,
                "instruction",
                i,
                question,
                qtask.prompt.hash,
                self.answers.prompt.hash,
                self.teacher.identity,
                q_json,
                a_json,
            )
            arow = {**row, "question": question}
            try:
                a_resp = await self.teacher.complete(self.answers.format_input(arow), aparams)
            except TeacherError as exc:
                reject("teacher_error", sample_id, f"answer to {question!r}: {exc}", question=question)
                return None
            try:
                text = self.answers.format_output(a_resp.text, arow)["answer"]
            except ParseError as exc:
                reject("parse_error", sample_id, f"answer to {question!r}: {exc}", a_resp.text, question)
                return None
            return Sample(
                id=sample_id,
                kind="instruction",
                instruction=question,
                response=text,
                messages=[Message(role="user", content=question), Message(role="assistant", content=text)],
                provenance=Provenance(
                    source_path=chunk.source_path,
                    document_id=chunk.document_id,
                    chunk_id=chunk.id,
                    char_start=chunk.char_start,
                    char_end=chunk.char_end,
                    pages=chunk.pages,
                    heading=chunk.heading,
                    context=chunk.text,
                    teacher_calls=[q_call, self._call("answer", self.answers.prompt, a_json, a_resp)],
                ),
            )

        results = await asyncio.gather(*(answer(i, q) for i, q in enumerate(questions)))
        return [s for s in results if s is not None], rejects
