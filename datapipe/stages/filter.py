"""The filter stage: one shard over all samples (dedup is global), through the filter chain."""

from __future__ import annotations

from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import Sample, content_id
from datapipe.stages.runner import NullProgress, Progress, ShardJob, ShardLoop
from datapipe.store import StageRecorder, store_for


def run_filter(cfg: PipelineConfig, progress: Progress | None = None, map_fn: Any = None) -> dict[str, Any]:
    """One filter shard over all samples (dedup is global); ``map_fn``: see :func:`apply_filters`."""
    # the filter chain stays in datapipe.pipeline for now (it moves to datapipe.filter.chain; import it from there)
    from datapipe.pipeline import _benchmark_digests, _build_judge, _filter_inputs, apply_filters

    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys, samples = _filter_inputs(store)
    judge = _build_judge(cfg, samples)
    judge_key = [judge.teacher.identity, judge.prompt_hashes] if judge else None
    cfg_hash = content_id(cfg.section_hash("filter", "chunk"), judge_key, _benchmark_digests(cfg), length=16)
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
