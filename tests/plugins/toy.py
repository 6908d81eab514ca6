"""A toy generation kind, a toy per-sample check and a toy batch check, written the way README "Adding a
generation kind" and "Adding a filter" say (README quotes this file; tests/integration/test_plugins.py runs it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datapipe.config import GenerationParams
from datapipe.errors import TeacherError
from datapipe.filter import batch_check, per_sample_check, sample_reject
from datapipe.generate.kinds import GenerateContext, Job, register_kind
from datapipe.generate.prompts import load_prompt
from datapipe.reasons import teacher_failure
from datapipe.records import Chunk, Message, Provenance, Reject, Sample, TeacherCall, content_id

PARAMS = GenerationParams(max_new_tokens=48, temperature=0.3, seed=1)


@register_kind("summary")
def plan_summary(ctx: GenerateContext) -> tuple[str, list[Job]]:
    """One job per chunk shard of plain sources: each chunk -> one 'summarise this section' sample."""
    prompt = load_prompt("toy_summary", None, Path(__file__).parent / "prompts")
    khash = content_id("summary", prompt.hash, ctx.teacher.identity, PARAMS.model_dump(), length=16)

    async def summarise(chunk: Chunk) -> Sample | Reject:
        messages = prompt.render(context=chunk.text)
        try:
            resp = await ctx.teacher.complete(messages, PARAMS)
        except TeacherError as exc:  # retryable failures stay pending; the next run asks again
            return Reject(stage="generate", record_id=chunk.id, reason=teacher_failure(exc), detail=str(exc))
        if not resp.text.strip():
            return Reject(stage="generate", record_id=chunk.id, reason="parse_error", detail="empty summary",
                          payload=json.dumps({"raw_output": resp.text}))  # fmt: skip
        ident = ctx.teacher.identity
        call = TeacherCall(step="summary", prompt_name=prompt.name, prompt_version=prompt.version,
                           prompt_hash=prompt.hash, backend=ident["backend"], model=ident["model"],
                           params=PARAMS.model_dump_json(), raw_output=resp.text, input_tokens=resp.input_tokens,
                           output_tokens=resp.output_tokens, cached=resp.cached)  # fmt: skip
        instruction = f"Summarise part {chunk.index + 1} of {Path(chunk.source_path).stem}."
        return Sample(
            id=content_id(khash, chunk.id),
            kind="instruction",
            instruction=instruction,
            response=resp.text.strip(),
            messages=[Message(role="user", content=instruction), Message(role="assistant", content=resp.text)],
            provenance=Provenance(
                source_path=chunk.source_path,
                document_id=chunk.document_id,
                chunk_id=chunk.id,
                char_start=chunk.char_start,
                char_end=chunk.char_end,
                pages=chunk.pages,
                heading=chunk.heading,
                context=chunk.text,
                teacher_calls=[call],
            ),  # fmt: skip
        )

    jobs: list[Job] = []
    for in_key, chunks in ctx.plain:

        async def job(chunks: list[Chunk] = chunks) -> tuple[list[Sample], list[Reject]]:
            out = [await summarise(c) for c in chunks]
            ctx.progress.advance("generate", len(chunks))
            return [s for s in out if isinstance(s, Sample)], [r for r in out if isinstance(r, Reject)]

        jobs.append((content_id(in_key, khash), [in_key], len(chunks), job))
    return khash, jobs


@per_sample_check("max_digits")
def max_digits(sample: Sample, options: dict[str, Any]) -> tuple[str, str] | None:
    """Drop answers with more digits than ``options['limit']``."""
    digits = sum(ch.isdigit() for ch in sample.response)
    if digits > options["limit"]:
        return "too_many_digits", f"{digits} digits in the answer > filter.checks.max_digits.limit={options['limit']}"
    return None


@batch_check("max_per_source")
def max_per_source(samples: list[Sample], ctx: Any) -> list[Reject]:
    """Keep the first ``limit`` samples of each source document (a check across samples: it sees them all)."""
    limit = ctx.cfg.filter.checks["max_per_source"]["limit"]
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        seen[s.provenance.source_path] = n = seen.get(s.provenance.source_path, 0) + 1
        if n > limit:
            out.append(sample_reject(s, "over_source_quota", f"{n}th sample of its source > limit={limit}"))
    return out
