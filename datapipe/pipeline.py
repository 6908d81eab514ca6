"""The stage runners, re-exported from :mod:`datapipe.stages` (one module per stage on one shard loop,
:mod:`datapipe.stages.runner`), and the filter chain the filter stage runs.
Plain Python, no Prefect: ``flows/`` wraps the stages as tasks.
"""

from __future__ import annotations

from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import Reject, Sample
from datapipe.stages.chunk import run_chunk
from datapipe.stages.export import run_export
from datapipe.stages.extract import _file_digest, _record_extract, load_leaves, run_extract, taxonomy_sources
from datapipe.stages.filter import run_filter
from datapipe.stages.generate import (
    distilabel_jobs,
    instruction_generator,
    instruction_shard_key,
    pick_distractors,
    plan_instruction,
    plan_qa,
    question_dedup_record,
    run_generate,
    select_chunks,
)
from datapipe.stages.preference import run_preference
from datapipe.stages.runner import NullProgress, Part, Progress, in_part, local_map, write_output
from datapipe.stages.teachers import build_teacher, merge_stats, run_budget_key, teacher_cache_path, teacher_record
from datapipe.store import RunStore, store_for

__all__ = [
    "NullProgress",
    "Part",
    "Progress",
    "_record_extract",
    "build_teacher",
    "distilabel_jobs",
    "in_part",
    "instruction_generator",
    "instruction_shard_key",
    "load_leaves",
    "merge_stats",
    "pick_distractors",
    "plan_instruction",
    "plan_qa",
    "question_dedup_record",
    "run_budget_key",
    "run_chunk",
    "run_export",
    "run_extract",
    "run_filter",
    "run_generate",
    "run_preference",
    "select_chunks",
    "store_for",
    "taxonomy_sources",
    "teacher_cache_path",
    "teacher_record",
    "write_output",
]


def _build_judge(cfg: PipelineConfig, samples: list[Sample]) -> Any:
    """The LLM judge when enabled and some sample is of a judged kind, else None. It runs on
    ``filter.judge.teacher`` when set, else on the run's own teacher (the generator grading itself)."""
    from datapipe.filter.judge import QAJudge
    from datapipe.generate.prompts import load_prompt

    judge_cfg = cfg.filter.judge
    kinds = sorted({s.kind for s in samples if s.kind in judge_cfg.kinds})
    if not judge_cfg.enabled or not kinds:
        return None
    if judge_cfg.distilabel is not None:
        from datapipe.generate.distilabel_task import DistilabelJudge

        return DistilabelJudge(judge_cfg.distilabel, list(judge_cfg.kinds), build_teacher(cfg, judge_cfg.teacher))
    prompts_dir = cfg.resolve(cfg.prompts_dir) if cfg.prompts_dir else None
    prompts = {str(k): load_prompt(judge_cfg.prompt or f"{k}_judge", None, prompts_dir) for k in kinds}
    return QAJudge(judge_cfg, build_teacher(cfg, judge_cfg.teacher), prompts)


def _benchmark_digests(cfg: PipelineConfig) -> list[str]:
    out = []
    for b in cfg.filter.decontamination.benchmarks:
        p = cfg.resolve(b.path)
        out.append(_file_digest(p) if p.is_file() else f"{p}:{p.stat().st_mtime_ns if p.exists() else 'missing'}")
    return out


def _filter_needs_model(cfg: PipelineConfig) -> bool:
    """Whether the filter loads the embedding model; when it does, the token bounds are checked with its
    tokenizer too (in one process or in slices alike)."""
    fcfg = cfg.filter
    return fcfg.semantic_dedup.enabled or fcfg.grounding.enabled or fcfg.min_response_tokens > 0


def _token_counter(cfg: PipelineConfig, model: Any = None) -> Any:
    """The response token counter of the heuristics (``model``: the embedder when already loaded), or None."""
    from datapipe.chunk import count_tokens, load_embedder

    if not _filter_needs_model(cfg):
        return None
    model = model or load_embedder(cfg.chunk.model, cfg.chunk.backend)
    return lambda text: count_tokens(model.tokenizer, [text])[0]


def _heuristics_slice(job: tuple[PipelineConfig, list[Sample]]) -> list[Sample | Reject]:
    """A task of the distributed filter: the per-sample heuristics over one slice (exact dedup is global)."""
    from datapipe.filter import filter_samples
    from datapipe.plugins import load_plugins

    cfg, samples = job
    load_plugins(cfg.plugins)  # a Ray worker unpickles the config without validating (importing) it
    return list(filter_samples(samples, cfg.filter.model_copy(update={"dedup_exact": False}), _token_counter(cfg)))


def _content_slice(job: tuple[PipelineConfig, list[Sample]]) -> tuple[list[Sample], list[Reject], list[Reject]]:
    """A task of the distributed filter: decontamination and grounding over one slice; each judges a sample
    alone. Returns the slice's kept samples, decontamination rejects and grounding rejects."""
    from datapipe.chunk import load_embedder
    from datapipe.filter import grounding
    from datapipe.filter.decontam import Decontaminator

    cfg, kept = job
    fcfg = cfg.filter
    decon_rejects: list[Reject] = []
    ground_rejects: list[Reject] = []
    if fcfg.decontamination.benchmarks and kept:
        decon = Decontaminator.build(fcfg.decontamination, cfg.base_dir)
        checked = [(s, decon.check(s)) for s in kept]
        decon_rejects = [r for _, r in checked if r is not None]
        kept = [s for s, r in checked if r is None]
    if fcfg.grounding.enabled and kept:
        bad = grounding.check_grounding(kept, fcfg.grounding, load_embedder(cfg.chunk.model, cfg.chunk.backend))
        ground_rejects = grounding.as_rejects(kept, bad, fcfg.grounding)
        kept = [s for s in kept if s.id not in bad]
    return kept, decon_rejects, ground_rejects


def _distributed_per_sample_steps(cfg: PipelineConfig, samples: list[Sample], map_fn: Any, drop: Any) -> list[Sample]:
    """Heuristics, exact dedup, decontamination and grounding with the per-sample work split into tasks of
    ``filter.near_dedup.slice_size`` samples: the same verdicts, in the same order, as in one process."""
    from datapipe.filter import exact_duplicate, verdict_reject

    size = max(1, cfg.filter.near_dedup.slice_size)

    def slices(items: list[Sample]) -> list[tuple[PipelineConfig, list[Sample]]]:
        return [(cfg, items[i : i + size]) for i in range(0, len(items), size)]

    heur: list[Reject] = []
    kept: list[Sample] = []
    seen: dict[str, str] = {}
    for out in (o for part in map_fn(_heuristics_slice, slices(samples)) for o in part):
        if isinstance(out, Sample) and cfg.filter.dedup_exact and (verdict := exact_duplicate(out, seen)):
            out = verdict_reject(out, verdict)
        (kept if isinstance(out, Sample) else heur).append(out)  # type: ignore[arg-type]
    drop("heuristics", heur)
    if not kept or not (cfg.filter.decontamination.benchmarks or cfg.filter.grounding.enabled):
        return kept
    results = map_fn(_content_slice, slices(kept))
    if cfg.filter.decontamination.benchmarks:
        drop("decontamination", [r for _, d, _ in results for r in d])
    if cfg.filter.grounding.enabled:
        drop("grounding", [r for _, _, g in results for r in g])
    return [s for k, _, _ in results for s in k]


def apply_filters(
    cfg: PipelineConfig, samples: list[Sample], progress: Progress, judge: Any = None, map_fn: Any = None
) -> tuple[list[Sample], list[Reject], dict[str, int]]:
    """All filters in order, cheapest first; returns kept samples, rejects and per-filter drop counts.
    With ``map_fn`` (e.g. Ray tasks) the per-sample steps run in slices and the partitioned near-dedup's
    tasks through it; without, everything runs in this process."""
    from datapipe.chunk import load_embedder
    from datapipe.filter import dedup
    from datapipe.reasons import is_retryable

    fcfg = cfg.filter
    rejects: list[Reject] = []
    dropped: dict[str, int] = {}

    def drop(step: str, rs: list[Reject]) -> None:
        rejects.extend(rs)
        dropped[step] = dropped.get(step, 0) + len(rs)
        progress.advance("filter", len(rs))

    if cfg.privacy.mode == "pseudonymize":
        from datapipe.privacy import leak_rejects

        leaks = leak_rejects(cfg, samples)
        drop("privacy", leaks)
        samples = [s for s in samples if s.id not in {r.record_id for r in leaks}]
    if map_fn is not None:
        kept = _distributed_per_sample_steps(cfg, samples, map_fn, drop)
        model = load_embedder(cfg.chunk.model, cfg.chunk.backend) if (kept and fcfg.semantic_dedup.enabled) else None
    else:
        model = load_embedder(cfg.chunk.model, cfg.chunk.backend) if (samples and _filter_needs_model(cfg)) else None
        kept = _single_process_per_sample_steps(cfg, samples, model, drop)
    if fcfg.near_dedup.enabled and kept:
        if fcfg.near_dedup.partitions > 1:
            near = dedup.near_duplicates_partitioned(
                kept, fcfg.near_dedup, fcfg.near_dedup.partitions, fcfg.near_dedup.slice_size, map_fn or local_map
            )
        else:
            near = dedup.near_duplicates(kept, fcfg.near_dedup)
        drop("near_dedup", dedup.as_rejects(kept, near, "near (MinHash)"))
        kept = [s for s in kept if s.id not in near]
    if fcfg.semantic_dedup.enabled and kept and model is not None:
        sem = dedup.semantic_duplicates(kept, fcfg.semantic_dedup, model)
        drop("semantic_dedup", dedup.as_rejects(kept, sem, "semantic (embedding cosine)"))
        kept = [s for s in kept if s.id not in sem]
    for s in kept:
        s.verdicts.update({k: "pass" for k in ("decontamination", "grounding", "near_dedup", "semantic_dedup")})
    if judge is not None and kept:
        judged = judge.run(kept, on_done=lambda: progress.advance("filter"))
        judge_rejects = [r for r in judged if isinstance(r, Reject)]
        rejects.extend(judge_rejects)
        dropped["judge"] = sum(not is_retryable(r.reason) for r in judge_rejects)  # pending ones are not dropped
        kept = [s for s in judged if isinstance(s, Sample)]
    else:
        progress.advance("filter", len(kept))
    return kept, rejects, dropped


def _single_process_per_sample_steps(cfg: PipelineConfig, samples: list[Sample], model: Any, drop: Any) -> list[Sample]:
    """Heuristics with exact dedup, decontamination and grounding, in this process."""
    from datapipe.filter import filter_samples, grounding
    from datapipe.filter.decontam import Decontaminator

    fcfg = cfg.filter
    counter = _token_counter(cfg, model) if model is not None else None
    kept: list[Sample] = []
    heur: list[Reject] = []
    for out in filter_samples(samples, fcfg, counter):
        (kept if isinstance(out, Sample) else heur).append(out)  # type: ignore[arg-type]
    drop("heuristics", heur)
    if fcfg.decontamination.benchmarks and kept:
        decon = Decontaminator.build(fcfg.decontamination, cfg.base_dir)
        checked = [(s, decon.check(s)) for s in kept]
        drop("decontamination", [r for _, r in checked if r is not None])
        kept = [s for s, r in checked if r is None]
    if fcfg.grounding.enabled and kept and model is not None:
        bad = grounding.check_grounding(kept, fcfg.grounding, model)
        drop("grounding", grounding.as_rejects(kept, bad, fcfg.grounding))
        kept = [s for s in kept if s.id not in bad]
    return kept


def _filter_inputs(store: RunStore) -> tuple[list[str], list[Sample]]:
    """The shards the filter reads: generated samples and imported ones (`datapipe import`), whichever exist."""
    stages = [st for st in ("generate", "import") if store.read_manifest(st) is not None] or ["generate"]
    keys = [k for st in stages for k in store.current_keys(st)]
    return keys, [s for st in stages for s in store.iter_records(st, Sample)]
