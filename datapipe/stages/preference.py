"""The preference stage: DPO pairs from the kept samples, in batches of 8 prompts (its shards)."""

from __future__ import annotations

import asyncio
from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import Reject, Sample, content_id
from datapipe.stages.runner import NullProgress, Part, Progress, ShardJob, ShardLoop
from datapipe.stages.teachers import build_teacher, teacher_record
from datapipe.store import StageRecorder, store_for


def run_preference(
    cfg: PipelineConfig,
    progress: Progress | None = None,
    part: Part = None,
    done_elsewhere: dict[str, float] | None = None,
    stats_elsewhere: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """DPO pairs from the kept samples: candidates per prompt, judged; pairs or rejects with reasons.
    Batches of 8 prompts are its shards; ``part``/``done_elsewhere``/``stats_elsewhere``: see :func:`run_generate`."""
    import contextlib

    from datapipe.generate.preference import PreferenceGenerator, preference_documents
    from datapipe.generate.prompts import load_prompt
    from datapipe.records import PreferencePair

    progress = progress or NullProgress()
    store = store_for(cfg)
    pcfg = cfg.generate.preference
    prompts_dir = cfg.resolve(cfg.prompts_dir) if cfg.prompts_dir else None
    teacher = build_teacher(cfg)
    second = build_teacher(cfg, pcfg.second_model) if pcfg.second_model else None
    judge_cfg = cfg.filter.judge.teacher if pcfg.judge == "filter_judge" else None
    judge = build_teacher(cfg, judge_cfg) if judge_cfg else None
    gen = PreferenceGenerator(
        pcfg,
        teacher,
        load_prompt(pcfg.judge_prompt, None, prompts_dir),
        second,
        judge=judge,
        candidate_prompt=load_prompt(pcfg.candidate_prompt, None, prompts_dir),
        pairwise_prompt=load_prompt(pcfg.pairwise_prompt, None, prompts_dir),
        documents=preference_documents(store) if pcfg.hard_negatives else None,
        filter_cfg=cfg.filter,
    )
    cfg_hash = gen.config_hash()
    rec = StageRecorder(store, "preference", cfg_hash)
    samples = sorted((s for s in store.iter_records("filter", Sample) if s.kind in pcfg.kinds), key=lambda s: s.id)
    skipped = samples[pcfg.max_prompts :] if pcfg.max_prompts else []
    samples = samples[: pcfg.max_prompts] if pcfg.max_prompts else samples
    batches = [samples[i : i + 8] for i in range(0, len(samples), 8)]
    skipped = [] if part is not None else skipped
    progress.start("preference", len(samples) + len(skipped))
    loop = ShardLoop(
        store, "preference", rec, PreferencePair, progress, part=part, done_elsewhere=done_elsewhere,
        compute_advances=True,
    )  # fmt: skip
    loop.rejects_before(
        "skipped-" + content_id([s.id for s in skipped], cfg_hash),
        [s.id for s in skipped],
        [
            Reject(
                stage="preference",
                record_id=s.id,
                reason="over_max_prompts",
                source_path=s.provenance.source_path,
                detail=f"generate.preference.max_prompts={pcfg.max_prompts} prompts were used",
            )
            for s in skipped
        ],
    )
    progress.advance("preference", len(skipped))

    def job(batch: list[Sample]) -> ShardJob:
        async def compute() -> tuple[list[PreferencePair], list[Reject]]:
            async def one(s: Sample) -> list[PreferencePair | Reject]:
                out = await gen.pairs_for(s)
                progress.advance("preference")
                return out

            results = [r for rs in await asyncio.gather(*(one(s) for s in batch)) for r in rs]
            return [r for r in results if isinstance(r, PreferencePair)], [r for r in results if isinstance(r, Reject)]

        return ShardJob(content_id([s.id for s in batch], cfg_hash), [s.id for s in batch], len(batch), compute)

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for t in (teacher, second, judge):
                if t is not None:
                    await stack.enter_async_context(t.session())
            await loop.arun([job(b) for b in batches], concurrency=1)  # one batch at a time

    asyncio.run(main())
    if part is not None:
        out: dict[str, Any] = {**loop.finish(), "teacher": teacher.stats.as_dict()}
        if second is not None:
            out["second_model"] = second.stats.as_dict()
        if judge is not None:
            out["judge"] = judge.stats.as_dict()
        return out
    rec.extra["teacher"] = teacher_record(teacher, stats_elsewhere)
    if second is not None:
        rec.extra["second_model"] = teacher_record(second, stats_elsewhere, "second_model")
    if judge is not None:
        rec.extra["judge"] = teacher_record(judge, stats_elsewhere, "judge")
    if pcfg.hard_negatives:
        rec.extra["hard_negatives"] = dict(gen.hard_negative_counts)  # this process's batches (not reused ones)
    return loop.finish()
