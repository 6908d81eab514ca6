"""Taxonomy QA data (kind ``qa``): question/answer pairs per InstructLab taxonomy leaf.

* Knowledge leaves: pairs grounded in chunks of the leaf's documents, with the leaf's seed
  examples as few-shot examples and its domain and outline in the prompt.
* Skill leaves: new examples in the style of the seed examples; grounded skills get a new
  context too, which becomes part of the user turn (as InstructLab does).

Every sample records its taxonomy path and leaf kind. Output that does not parse is a
``parse_error`` reject with the raw text kept.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Any

from datapipe.config import GenerationParams, QAConfig
from datapipe.errors import TeacherError
from datapipe.generate.instruction import ParseError
from datapipe.generate.prompts import Prompt
from datapipe.reasons import teacher_failure
from datapipe.records import Chunk, Message, Provenance, Reject, Sample, TeacherCall, content_id
from datapipe.taxonomy.models import Leaf
from datapipe.teacher import Teacher, TeacherResponse

_PAIR = re.compile(
    r"question\s*\d*\s*[:.]\s*(?P<q>.+?)\s*answer\s*\d*\s*[:.]\s*(?P<a>.+?)\s*(?=(?:question|context)\s*\d*\s*[:.]|\Z)",
    re.IGNORECASE | re.DOTALL,
)
_CONTEXT = re.compile(r"context\s*[:.]\s*(?P<c>.+?)\s*(?=question\s*\d*\s*[:.])", re.IGNORECASE | re.DOTALL)


_UNLABELLED = re.compile(r"^\s*(?P<q>[^\n?]{8,}\?)\s*\n+\s*(?P<a>\S.+)", re.DOTALL)


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``Question: ... Answer: ...`` pairs, in order; ParseError when there is none.

    A reply without labels whose first line is a question followed by more text counts
    as one pair: small teachers often drop the labels but keep the shape.
    """
    pairs = []
    for m in _PAIR.finditer(text):
        q, a = " ".join(m.group("q").split()), m.group("a").strip()
        if len(q) >= 8 and a:
            pairs.append((q, a))
    bare = _UNLABELLED.match(text) if not pairs else None
    if bare:
        pairs.append((" ".join(bare.group("q").split()), bare.group("a").strip()))
    if not pairs:
        raise ParseError("no 'Question: ... Answer: ...' pair in the teacher's output")
    return pairs


def parse_skill_example(text: str, grounded: bool) -> tuple[str | None, str, str]:
    """(context, question, answer) of one generated skill example."""
    q, a = parse_pairs(text)[0]
    if not grounded:
        return None, q, a
    m = _CONTEXT.search(text)
    if not m or not m.group("c").strip():
        raise ParseError("a grounded skill example needs a 'Context: ...' before its question")
    return m.group("c").strip(), q, a


def _rotate(items: list[Any], start: int, n: int) -> list[Any]:
    if not items or n <= 0:
        return []
    return [items[(start + i) % len(items)] for i in range(min(n, len(items)))]


def select_leaf_chunks(chunks: list[Chunk], n: int) -> list[Chunk]:
    """``n`` chunks spread over the leaf's documents: first chunks of every document first."""
    order = {doc: i for i, doc in enumerate(dict.fromkeys(c.document_id for c in chunks))}
    return sorted(chunks, key=lambda c: (c.index, order[c.document_id]))[:n]


class QAGenerator:
    def __init__(self, cfg: QAConfig, teacher: Teacher, knowledge_prompt: Prompt, skill_prompt: Prompt) -> None:
        self.cfg = cfg
        self.teacher = teacher
        self.knowledge_prompt = knowledge_prompt
        self.skill_prompt = skill_prompt

    def config_hash(self) -> str:
        return content_id(
            self.cfg.model_dump(mode="json"),
            self.teacher.identity,
            self.knowledge_prompt.hash,
            self.skill_prompt.hash,
            length=16,
        )

    def _call(self, prompt: Prompt, params: GenerationParams, resp: TeacherResponse) -> TeacherCall:
        ident = self.teacher.identity
        return TeacherCall(
            step="qa",
            prompt_name=prompt.name,
            prompt_version=prompt.version,
            prompt_hash=prompt.hash,
            backend=ident["backend"],
            model=ident["model"],
            params=params.model_dump_json(),
            raw_output=resp.text,
            input_tokens=resp.input_tokens,
            output_tokens=resp.output_tokens,
            cached=resp.cached,
        )

    @staticmethod
    def _reject(
        leaf: Leaf,
        reason: str,
        record_id: str,
        detail: str,
        raw: str = "",
        chunk_id: str | None = None,
        source_path: str | None = None,
    ) -> Reject:
        payload = json.dumps({"taxonomy_path": leaf.taxonomy_path, "chunk_id": chunk_id, "raw_output": raw})
        return Reject(
            stage="generate",
            record_id=record_id,
            reason=reason,
            detail=detail,
            source_path=source_path or str(leaf.path),
            payload=payload,
        )

    async def for_knowledge(self, leaf: Leaf, chunks: list[Chunk]) -> tuple[list[Sample], list[Reject]]:
        cfg = self.cfg
        rejects: list[Reject] = []
        if not chunks:
            rejects.append(
                self._reject(
                    leaf,
                    "no_chunks",
                    leaf.taxonomy_path,
                    "the leaf's documents yielded no chunk; see the extract rejects",
                )
            )
            return [], rejects
        chosen = select_leaf_chunks(chunks, math.ceil(cfg.samples_per_leaf / cfg.pairs_per_chunk))
        chosen_ids = {c.id for c in chosen}
        for c in chunks:
            if c.id not in chosen_ids:
                rejects.append(
                    self._reject(
                        leaf,
                        "over_samples_per_leaf",
                        c.id,
                        f"generate.qa.samples_per_leaf="
                        f"{cfg.samples_per_leaf} reached with other chunks of {leaf.taxonomy_path}",
                        chunk_id=c.id,
                        source_path=c.source_path,
                    )
                )
        seeds = leaf.knowledge_seeds()

        async def one(i: int, chunk: Chunk) -> list[Sample]:
            examples = [s.model_dump() for s in _rotate(seeds, i, cfg.few_shot)]
            messages = self.knowledge_prompt.render(
                domain=leaf.domain or "",
                outline=leaf.document_outline or "",
                examples=examples,
                context=chunk.text,
                n=cfg.pairs_per_chunk,
            )
            try:
                resp = await self.teacher.complete(messages, cfg.params)
            except TeacherError as exc:
                rejects.append(
                    self._reject(
                        leaf, teacher_failure(exc), chunk.id, str(exc), chunk_id=chunk.id, source_path=chunk.source_path
                    )
                )
                return []
            try:
                pairs = parse_pairs(resp.text)[: cfg.pairs_per_chunk]
            except ParseError as exc:
                rejects.append(
                    self._reject(
                        leaf,
                        "parse_error",
                        chunk.id,
                        f"{leaf.taxonomy_path}: {exc}",
                        resp.text,
                        chunk.id,
                        chunk.source_path,
                    )
                )
                return []
            call = self._call(self.knowledge_prompt, cfg.params, resp)
            return [self._sample(leaf, j, q, a, chunk.text, call, chunk=chunk) for j, (q, a) in enumerate(pairs)]

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(chosen)))
        samples = [s for group in results for s in group][: cfg.samples_per_leaf]
        return samples, rejects

    async def for_skill(self, leaf: Leaf) -> tuple[list[Sample], list[Reject]]:
        cfg = self.cfg
        rejects: list[Reject] = []
        seeds = leaf.skill_seeds()

        async def one(i: int) -> Sample | None:
            examples = [s.model_dump() for s in _rotate(seeds, i, max(cfg.few_shot, 1) + 1)]
            messages = self.skill_prompt.render(
                task_description=leaf.task_description or "", examples=examples, grounded=leaf.grounded
            )
            base = cfg.params.seed or 0
            params = cfg.params.model_copy(update={"seed": base + i})
            record_id = content_id(leaf.taxonomy_path, i, self.skill_prompt.hash, params.model_dump(mode="json"))
            try:
                resp = await self.teacher.complete(messages, params)
            except TeacherError as exc:
                rejects.append(self._reject(leaf, teacher_failure(exc), record_id, str(exc)))
                return None
            try:
                context, q, a = parse_skill_example(resp.text, leaf.grounded)
            except ParseError as exc:
                rejects.append(self._reject(leaf, "parse_error", record_id, f"{leaf.taxonomy_path}: {exc}", resp.text))
                return None
            return self._sample(leaf, i, q, a, context or "", self._call(self.skill_prompt, params, resp))

        results = await asyncio.gather(*(one(i) for i in range(cfg.samples_per_leaf)))
        return [s for s in results if s is not None], rejects

    def _sample(
        self,
        leaf: Leaf,
        index: int,
        question: str,
        answer: str,
        context: str,
        call: TeacherCall,
        chunk: Chunk | None = None,
    ) -> Sample:
        user = f"{context}\n\n{question}" if (leaf.grounded and context) else question
        sample_id = content_id(
            leaf.taxonomy_path,
            chunk.id if chunk else None,
            index,
            question,
            call.prompt_hash,
            self.teacher.identity,
            call.params,
        )
        return Sample(
            id=sample_id,
            kind="qa",
            instruction=user,
            response=answer,
            messages=[Message(role="user", content=user), Message(role="assistant", content=answer)],
            provenance=Provenance(
                source_path=chunk.source_path if chunk else str(leaf.path),
                document_id=chunk.document_id if chunk else "",
                chunk_id=chunk.id if chunk else "",
                char_start=chunk.char_start if chunk else 0,
                char_end=chunk.char_end if chunk else 0,
                pages=chunk.pages if chunk else [],
                heading=chunk.heading if chunk else None,
                taxonomy_path=leaf.taxonomy_path,
                leaf_kind=leaf.kind,
                context=context,
                teacher_calls=[call],
                document_title=chunk.document_title if chunk else None,
                heading_path=chunk.heading_path if chunk else [],
            ),
        )
