"""The filter stage: one shard over all samples (dedup is global), through the filter chain."""

from __future__ import annotations

from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import Sample, content_id
from datapipe.stages.runner import NullProgress, Progress, ShardJob, ShardLoop
from datapipe.store import RunStore, StageRecorder, store_for


def _filter_inputs(store: RunStore) -> tuple[list[str], list[Sample]]:
    """The shards the filter reads: generated samples and imported ones (`datapipe import`), whichever exist."""
    stages = [st for st in ("generate", "import") if store.read_manifest(st) is not None] or ["generate"]
    keys = [k for st in stages for k in store.current_keys(st)]
    return keys, [s for st in stages for s in store.iter_records(st, Sample)]


def run_filter(cfg: PipelineConfig, progress: Progress | None = None, map_fn: Any = None) -> dict[str, Any]:
    """One filter shard over all samples (dedup is global) through the chain of :mod:`datapipe.filter.chain`;
    ``map_fn``: see :func:`datapipe.filter.chain.apply_filters`."""
    from datapipe.filter.chain import apply_filters, benchmark_digests, build_judge

    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys, samples = _filter_inputs(store)
    judge = build_judge(cfg, samples)
    judge_key = [judge.teacher.identity, judge.prompt_hashes] if judge else None
    cfg_hash = content_id(cfg.section_hash("filter", "chunk"), judge_key, benchmark_digests(cfg), length=16)
    rec = StageRecorder(store, "filter", cfg_hash)
    progress.start("filter", len(samples))
    loop = ShardLoop(store, "filter", rec, Sample, progress, compute_advances=True)

    def compute() -> tuple[list[Sample], list[Any]]:
        kept, rejects, dropped = apply_filters(cfg, samples, progress, judge, map_fn)
        if judge is not None:
            rec.extra["teacher"] = {**judge.teacher.identity, **judge.teacher.stats.as_dict(), "step": "judge"}
        rec.extra["dropped_by_step"] = dropped
        return kept, rejects

    loop.run([ShardJob(content_id(in_keys, cfg_hash), in_keys, len(samples), compute)])
    return loop.finish()
