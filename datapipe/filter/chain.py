"""The filter chain: every filter step in order, cheapest first, in this process or in slices (Ray tasks).

Filters come in two shapes:

- per-sample checks (``(sample) -> None | (reason, detail)``: the built-ins of :func:`datapipe.filter.build_filters`
  and those registered with ``@per_sample_check``) run together as the step ``heuristics``, followed by exact
  dedup across all samples;
- batch checks (``(samples, ctx) -> rejects``, registered with ``@batch_check``): privacy leaks,
  decontamination, grounding, near and semantic dedup, the judge, and any plugin's.

One chain runs them: steps that judge each sample alone (the per-sample checks; batch checks registered with
``per_sample=True``) go through the executor ``map_fn`` in slices of ``filter.near_dedup.slice_size``
samples (``map_fn`` = Ray tasks), or in one slice in this process when there is no executor; the other batch
checks see all samples at once. Either way the verdicts, the rejects (in order, with details), the kept
order and the per-step drop counts (``dropped_by_step``) are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datapipe.config import PipelineConfig
from datapipe.filter import _BATCH, BatchCheck, batch_check, exact_duplicate, filter_samples, verdict_reject
from datapipe.records import Reject, Sample

HEURISTICS_ORDER = 100  # where the per-sample checks run among the batch checks
TEACHER_ORDER = 900  # batch checks from here on call a teacher; the steps before are marked passed first
PASS_MARKED = ("decontamination", "grounding", "near_dedup", "semantic_dedup")
"""Verdicts every sample that reaches the teacher steps carries as passed (also when the step is off)."""


def local_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """The executor without one: each task in turn, in this process."""
    return [fn(x) for x in items]


@dataclass
class FilterContext:
    """What a batch check gets beside its samples: the run's config, the executor for tasks of its own
    (near dedup's partitions), the judge built for the run, a per-sample progress callback (for checks that
    report progress) and the embedding model, loaded on first use (cached per process by ``load_embedder``)."""

    cfg: PipelineConfig
    map_fn: Callable[[Callable[[Any], Any], list[Any]], list[Any]] = local_map
    judge: Any = None
    on_done: Callable[[], None] | None = None
    _model: Any = field(default=None, repr=False)

    @property
    def model(self) -> Any:
        if self._model is None:
            from datapipe.chunk import load_embedder

            self._model = load_embedder(self.cfg.chunk.model, self.cfg.chunk.backend)
        return self._model


@batch_check("privacy", enabled=lambda ctx: ctx.cfg.privacy.mode == "pseudonymize", order=0)
def privacy_leaks(samples: list[Sample], ctx: FilterContext) -> list[Reject]:
    """The batch check ``privacy`` (config: ``privacy.mode: pseudonymize``): samples in which a real value
    the run pseudonymised appears."""
    from datapipe.privacy import leak_rejects

    return leak_rejects(ctx.cfg, samples)


@batch_check("judge", enabled=lambda ctx: ctx.judge is not None, order=TEACHER_ORDER, reports_progress=True)
def judge_samples(samples: list[Sample], ctx: FilterContext) -> list[Reject]:
    """The batch check ``judge`` (config: ``filter.judge``): the LLM judge built for the run
    (:func:`build_judge`; the step is off when that is None: no sample of a judged kind), concurrently in
    one teacher session. It records scores and verdicts on the samples it keeps."""
    return [r for r in ctx.judge.run(samples, on_done=ctx.on_done) if isinstance(r, Reject)]


def batch_checks() -> list[BatchCheck]:
    """Every registered batch check in chain order (the built-ins register when their modules import)."""
    import datapipe.filter.decontam
    import datapipe.filter.dedup
    import datapipe.filter.grounding  # noqa: F401

    return sorted(_BATCH.values(), key=lambda c: c.order)


def build_judge(cfg: PipelineConfig, samples: list[Sample]) -> Any:
    """The LLM judge when enabled and some sample is of a judged kind, else None. It runs on
    ``filter.judge.teacher`` when set, else on the run's own teacher (the generator grading itself)."""
    from datapipe.filter.judge import QAJudge
    from datapipe.generate.prompts import load_prompt
    from datapipe.stages.teachers import build_teacher

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


def benchmark_digests(cfg: PipelineConfig) -> list[str]:
    """The decontamination benchmarks' digests (part of the filter's config hash)."""
    from datapipe.stages.extract import _file_digest

    out = []
    for b in cfg.filter.decontamination.benchmarks:
        p = cfg.resolve(b.path)
        out.append(_file_digest(p) if p.is_file() else f"{p}:{p.stat().st_mtime_ns if p.exists() else 'missing'}")
    return out


def filter_needs_model(cfg: PipelineConfig) -> bool:
    """Whether the filter loads the embedding model; when it does, the token bounds are checked with its
    tokenizer too (in one process or in slices alike)."""
    fcfg = cfg.filter
    return fcfg.semantic_dedup.enabled or fcfg.grounding.enabled or fcfg.min_response_tokens > 0


def token_counter(cfg: PipelineConfig, model: Any = None) -> Any:
    """The response token counter of the heuristics (``model``: the embedder when already loaded), or None."""
    from datapipe.chunk import count_tokens, load_embedder

    if not filter_needs_model(cfg):
        return None
    model = model or load_embedder(cfg.chunk.model, cfg.chunk.backend)
    return lambda text: count_tokens(model.tokenizer, [text])[0]


def heuristics_slice(job: tuple[PipelineConfig, list[Sample]]) -> list[Sample | Reject]:
    """A task of the chain: the per-sample checks over one slice (exact dedup is global: the driver's)."""
    from datapipe.plugins import load_plugins

    cfg, samples = job
    load_plugins(cfg.plugins)  # a Ray worker unpickles the config without validating (importing) it
    return list(filter_samples(samples, cfg.filter.model_copy(update={"dedup_exact": False}), token_counter(cfg)))


@dataclass
class SliceResult:
    """What a slice of per-sample batch checks returns: the samples it kept and the rejects of each check
    that ran (a check runs while the slice still has samples)."""

    kept: list[Sample]
    rejects: dict[str, list[Reject]]


def checks_slice(job: tuple[PipelineConfig, list[str], list[Sample]]) -> SliceResult:
    """A task of the chain: the named per-sample batch checks, in order, over one slice."""
    from datapipe.plugins import load_plugins

    cfg, names, kept = job
    load_plugins(cfg.plugins)
    registry = {c.name: c for c in batch_checks()}
    ctx = FilterContext(cfg)
    out: dict[str, list[Reject]] = {}
    for name in names:
        if not kept:
            break
        out[name] = registry[name].run(kept, ctx)
        kept = _without(kept, out[name])
    return SliceResult(kept, out)


def _without(samples: list[Sample], rejects: list[Reject]) -> list[Sample]:
    gone = {r.record_id for r in rejects}
    return [s for s in samples if s.id not in gone] if gone else samples


def apply_filters(
    cfg: PipelineConfig, samples: list[Sample], progress: Any, judge: Any = None, map_fn: Any = None
) -> tuple[list[Sample], list[Reject], dict[str, int]]:
    """All filters in order, cheapest first; returns kept samples, rejects and per-step drop counts (a
    reject a retry can fix, e.g. a judge call that failed, is pending, not counted as dropped). With
    ``map_fn`` (e.g. Ray tasks) the per-sample steps run in slices and near dedup's tasks through it;
    without, everything runs in this process."""
    from datapipe.reasons import is_retryable

    rejects: list[Reject] = []
    dropped: dict[str, int] = {}
    size = max(1, cfg.filter.near_dedup.slice_size) if map_fn is not None else max(1, len(samples))
    ctx = FilterContext(cfg, map_fn or local_map, judge, on_done=lambda: progress.advance("filter"))

    def slices(items: list[Sample], *extra: Any) -> list[Any]:
        return [(cfg, *extra, items[i : i + size]) for i in range(0, len(items), size)]

    def drop(check: BatchCheck | str, rs: list[Reject]) -> None:
        name = check if isinstance(check, str) else check.name
        rejects.extend(rs)
        dropped[name] = dropped.get(name, 0) + sum(not is_retryable(r.reason) for r in rs)
        if isinstance(check, str) or not check.reports_progress:
            progress.advance("filter", len(rs))

    steps: list[BatchCheck | None] = [c for c in batch_checks() if c.enabled(ctx)]  # None: the heuristics
    steps.insert(sum(c.order < HEURISTICS_ORDER for c in steps if c), None)  # type: ignore[union-attr]
    kept = samples
    marked = reported = False
    i = 0
    while i < len(steps):
        step = steps[i]
        if step is None:
            kept = _heuristics(cfg, kept, ctx.map_fn, slices, drop)
            i += 1
            continue
        if step.order >= TEACHER_ORDER and not marked:
            _mark_passed(kept, steps)
            marked = True
        if step.per_sample:  # a run of per-sample batch checks: one task per slice runs them all
            group = [step]
            while i + len(group) < len(steps) and (nxt := steps[i + len(group)]) and nxt.per_sample:
                group.append(nxt)
            if kept:
                results = ctx.map_fn(checks_slice, slices(kept, [c.name for c in group]))
                for c in group:
                    if any(c.name in r.rejects for r in results):
                        drop(c, [x for r in results for x in r.rejects.get(c.name, [])])
                kept = [s for r in results for s in r.kept]
            i += len(group)
            continue
        if kept:
            rs = step.run(kept, ctx)
            drop(step, rs)
            kept = _without(kept, rs)
            reported = reported or step.reports_progress
        i += 1
    if not marked:
        _mark_passed(kept, steps)
    if not reported:
        progress.advance("filter", len(kept))
    return kept, rejects, dropped


def _heuristics(cfg: PipelineConfig, samples: list[Sample], map_fn: Any, slices: Any, drop: Any) -> list[Sample]:
    """The per-sample checks in slices, then exact dedup over all of them in input order."""
    heur: list[Reject] = []
    kept: list[Sample] = []
    seen: dict[str, str] = {}
    for out in (o for part in map_fn(heuristics_slice, slices(samples)) for o in part):
        if isinstance(out, Sample) and cfg.filter.dedup_exact and (verdict := exact_duplicate(out, seen)):
            out = verdict_reject(out, verdict)
        (kept if isinstance(out, Sample) else heur).append(out)
    drop("heuristics", heur)
    return kept


def _mark_passed(kept: list[Sample], steps: list[BatchCheck | None]) -> None:
    names = [*PASS_MARKED, *(c.name for c in steps if c and HEURISTICS_ORDER < c.order < TEACHER_ORDER)]
    for s in kept:
        s.verdicts.update({k: "pass" for k in names})
