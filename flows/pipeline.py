"""The pipeline as a Prefect flow: one task per stage, retried only for transient failures.

The stages themselves live in ``datapipe.stages`` (its registry names their runners) and know nothing
of Prefect. A run holds the run folder's lock, draws on one teacher budget, ends by publishing a new version of the
training data when it changed (``datapipe.versions``) and records its outcome in
``<run>/last_run.json``. Every stage skips the shards it already has, so a scheduled run over
the same sources is an incremental refresh, and a killed run resumes when started again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}.items():
    os.environ.setdefault(_k, _v)

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.states import Failed, State  # noqa: E402

from datapipe import versions  # noqa: E402
from datapipe.config import PipelineConfig  # noqa: E402
from datapipe.errors import MissingDependencyError, PendingError, is_transient  # noqa: E402
from datapipe.fsio import is_url  # noqa: E402
from datapipe.pending import check_pending, pending_counts  # noqa: E402
from datapipe.runs import load_target  # noqa: E402
from datapipe.stages import STAGES, runner_of  # noqa: E402
from datapipe.stages.runner import NullProgress, Progress  # noqa: E402
from datapipe.stages.teachers import run_budget_key  # noqa: E402
from datapipe.store import _atomic_write_bytes, run_lock, store_for  # noqa: E402
from datapipe.teacher.budget import BudgetExceeded, ray_run_budget, run_budget  # noqa: E402

LAST_RUN = "last_run.json"

_progress: Progress = NullProgress()
_workers: dict[str, set[str]] = {}  # stage -> "host:pid" of the processes that ran its parts (Ray runner)


def set_progress(progress: Progress) -> None:
    """Where stage progress is shown (the CLI passes a rich display); not a task parameter."""
    global _progress
    _progress = progress


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


_task_opts: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": _retry_if_transient,
    "cache_policy": NO_CACHE,
}


STOP = "budget_stop"


def _budgeted(stage: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a stage that asks the teacher; reaching the budget is a clean stop, not a task failure to retry."""
    try:
        result: dict[str, Any] = stage(*args, **kwargs)
    except BudgetExceeded as exc:
        return {STOP: str(exc)}
    return result


def _stop(record: dict[str, Any], message: str) -> State:
    """End the flow run at the budget: everything so far is persisted, the next run continues."""
    record.update(status="budget_reached", message=message)
    return Failed(name="BudgetReached", message=message)


@task(name="extract", **_task_opts)
def extract_task(target: str, done_elsewhere: dict[str, float] | None = None) -> dict[str, Any]:
    return runner_of("extract")(load_target(target), _progress, done_elsewhere=done_elsewhere)


@task(name="chunk", **_task_opts)
def chunk_task(target: str, done_elsewhere: dict[str, float] | None = None) -> dict[str, Any]:
    return runner_of("chunk")(load_target(target), _progress, done_elsewhere=done_elsewhere)


_earlier_attempts: dict[tuple[str, str], dict[str, Any]] = {}
"""(target, stage) -> teacher statistics of the task's attempts that ended with records pending, so the
manifest of the attempt that completes counts every request, retry and fault of the run (not the last try's)."""


def _complete(result: dict[str, Any], allow_partial: bool, target: str = "") -> dict[str, Any]:
    """A stage's manifest, or PendingError (transient: the task is retried) when it left records pending."""
    if STOP in result:
        return result
    stage = result.get("stage", "")
    try:
        out = check_pending(result, allow_partial)
    except PendingError:
        if "teacher" in result:  # what this flow run's teacher did so far (concurrency traces are per attempt)
            skip = ("concurrency", "endpoints", "unreachable")
            _earlier_attempts[(target, stage)] = {k: v for k, v in result["teacher"].items() if k not in skip}
        raise
    _earlier_attempts.pop((target, stage), None)
    return out


def _with_earlier(target: str, stage: str, stats_elsewhere: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    earlier = _earlier_attempts.get((target, stage))
    return [*(stats_elsewhere or []), *([{"teacher": earlier}] if earlier else [])]


@task(name="generate", **_task_opts)
def generate_task(
    target: str,
    done_elsewhere: dict[str, float] | None = None,
    stats_elsewhere: list[dict[str, Any]] | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    cfg = load_target(target)
    stats = _with_earlier(target, "generate", stats_elsewhere)
    result = _budgeted(runner_of("generate"), cfg, _progress, done_elsewhere=done_elsewhere, stats_elsewhere=stats)
    return _complete(result, allow_partial, target)


@task(name="filter", **_task_opts)
def filter_task(target: str, distributed: bool = False, allow_partial: bool = False) -> dict[str, Any]:
    result = _budgeted(runner_of("filter"), load_target(target), _progress, map_fn=ray_map if distributed else None)
    return _complete(result, allow_partial)


@task(name="stage-part", **_task_opts)
def part_task(target: str, stage: str, i: int, n: int) -> dict[str, Any]:
    """One share of a stage's shards (a Ray task under the Ray runner); the stage's task then records them.
    The stages that run in parts are those the registry marks so (:func:`datapipe.stages.part_stages`)."""
    import socket

    if not STAGES[stage].parts:
        raise ValueError(f"stage {stage!r} does not run in parts")
    result = _budgeted(runner_of(stage), load_target(target), part=(i, n))
    return {**result, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def ray_map(fn: Any, items: list[Any]) -> list[Any]:
    """Run ``fn`` over ``items`` as Ray tasks (used inside a task that already runs on the cluster)."""
    import ray

    remote = ray.remote(fn)
    return list(ray.get([remote.remote(x) for x in items]))


def run_parts(target: str, stage: str, n: int) -> dict[str, Any]:
    """Run a stage's shards as ``n`` parallel part tasks on the Ray runner; what the stage's own task needs
    to record them."""
    from prefect_ray.context import remote_options

    with remote_options(scheduling_strategy="SPREAD"):  # one part per node first, not all on the first
        futures = [part_task.submit(target, stage, i, n) for i in range(n)]
    done: dict[str, float] = {}
    stats: list[dict[str, Any]] = []
    _progress.start(f"{stage} parts", n)
    stopped = None
    for future in futures:
        result = future.result()
        _workers.setdefault(stage, set()).add(result["worker"])
        _progress.advance(f"{stage} parts")
        if STOP in result:  # this part reached the run's budget; the others finish what they started
            stopped = result[STOP]
            continue
        done.update(result["computed"])
        stats.append({k: result[k] for k in ("teacher", "second_model") if k in result})
    if stopped is not None:
        return {STOP: stopped}
    out: dict[str, Any] = {"done_elsewhere": done}
    if STAGES[stage].teacher:  # its parts asked a teacher: the driver adds up their statistics
        out["stats_elsewhere"] = stats
    return out


def ray_task_runner(cfg: PipelineConfig) -> Any:
    """prefect-ray's RayTaskRunner for ``runner.address`` (or $RAY_ADDRESS; else a local Ray for the run)."""
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise MissingDependencyError("prefect-ray (runner.kind: ray)", "pip install prefect-ray ray") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.runner.address or os.environ.get("RAY_ADDRESS")
    return RayTaskRunner(address=address, init_kwargs={"include_dashboard": False})


def _on_ray() -> bool:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and type(ctx.task_runner).__name__ == "RayTaskRunner"


def flow_for(target: str) -> Any:
    """The pipeline flow with the task runner the config names (runner.kind: local | ray)."""
    cfg = load_target(target)
    if cfg.runner.kind == "ray":
        return pipeline_flow.with_options(task_runner=ray_task_runner(cfg))
    return pipeline_flow


def _parts_for(cfg: PipelineConfig) -> int:
    if cfg.runner.parts:
        return cfg.runner.parts
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1))) if ray.is_initialized() else 2


@task(name="preference", **_task_opts)
def preference_task(
    target: str,
    done_elsewhere: dict[str, float] | None = None,
    stats_elsewhere: list[dict[str, Any]] | None = None,
    allow_partial: bool = False,
) -> dict[str, Any]:
    cfg = load_target(target)
    stats = _with_earlier(target, "preference", stats_elsewhere)
    result = _budgeted(runner_of("preference"), cfg, _progress, done_elsewhere=done_elsewhere, stats_elsewhere=stats)
    return _complete(result, allow_partial, target)


@task(name="export", **_task_opts)
def export_task(target: str, export_format: str | None = None) -> dict[str, Any]:
    return runner_of("export")(load_target(target), export_format, progress=_progress)


@task(name="publish", **_task_opts)
def publish_task(target: str, formats: list[str]) -> dict[str, Any]:
    return versions.run_publish(load_target(target), formats, _progress)


def export_formats(cfg: PipelineConfig, export_format: str | None) -> list[str]:
    """The formats a run exports and publishes: the configured one, and dpo when preference pairs are on."""
    formats = [export_format or cfg.export.format]
    if cfg.generate.preference.enabled and export_format is None and "dpo" not in formats:
        formats.append("dpo")
    return formats


def write_last_run(cfg: PipelineConfig, record: dict[str, Any]) -> None:
    _atomic_write_bytes(cfg.run_dir / LAST_RUN, json.dumps(record, indent=2, sort_keys=True).encode())


def _budget_scope(cfg: PipelineConfig) -> Any:
    """The run's budget: in this process, or (Ray runner) a Ray actor every worker's teacher draws on."""
    key = run_budget_key(cfg)
    if cfg.runner.kind == "ray":
        import ray

        if ray.is_initialized():
            return ray_run_budget(key, cfg.budget)
    return run_budget(key, cfg.budget)


@contextmanager
def guarded_run(target: str, flow_name: str) -> Iterator[dict[str, Any]]:
    """The run folder's lock and budget around a flow, and its outcome in last_run.json (also when it stops)."""
    cfg = load_target(target)
    started = time.time()
    record: dict[str, Any] = {"flow": flow_name, "target": str(target), "started": started}
    with run_lock(cfg.run_dir), _budget_scope(cfg) as budget:
        try:
            yield record
        except PendingError as exc:  # not a failure of the run's own: the teacher was down; re-running resumes
            record.update(status="pending", message=str(exc), pending=pending_counts(store_for(cfg)))
            raise
        except Exception as exc:
            record.update(status="failed", message=f"{type(exc).__name__}: {exc}")
            raise
        else:
            record.setdefault("status", "completed")
        finally:
            record.update(finished=time.time(), seconds=round(time.time() - started, 3), teacher=budget.as_dict())
            write_last_run(cfg, record)


@flow(name="datapipe-pipeline")
def pipeline_flow(
    target: str, export_format: str | None = None, allow_partial: bool | None = None
) -> dict[str, Any] | State:
    """extract -> chunk -> generate -> filter [-> preference] -> export -> publish for one pipeline config
    (or run folder): an incremental refresh that publishes a new version when the training data changed.

    With preference pairs enabled, the DPO export is written next to the configured format. A stage that
    ends with records pending (the teacher was down) fails the run, which publishes nothing, unless
    ``allow_partial`` (default: the config's ``allow_partial``).
    """
    if not is_url(target):  # tasks may run in other processes (Ray workers) with another cwd
        target = str(Path(target).resolve())
    if load_target(target).runner.kind == "ray" and not _on_ray():
        # a deployment (`datapipe serve`, prefect.yaml) runs this flow as defined, on the local task runner:
        # the run goes on as a subflow on the Ray runner, and its final state is this flow's
        state: State = flow_for(target)(target, export_format, allow_partial, return_state=True)
        if state.is_completed():
            result: dict[str, Any] = state.result()  # type: ignore[assignment]
            return result
        return state
    _earlier_attempts.clear()  # attempts of an earlier flow run in this process are not this run's
    with guarded_run(target, "datapipe-pipeline") as record:
        cfg = load_target(target)
        partial = cfg.allow_partial if allow_partial is None else allow_partial
        out: dict[str, Any] = {}
        n = _parts_for(cfg) if cfg.runner.kind == "ray" else 0
        for name, stage_task in (
            ("extract", extract_task),
            ("chunk", chunk_task),
            ("generate", generate_task),
            ("filter", filter_task),
        ):
            opts = {"allow_partial": partial} if name in ("generate", "filter") else {}
            if n and not STAGES[name].parts:  # the filter: its slices run as Ray tasks inside its own task
                out[name] = filter_task(target, distributed=True, **opts)
            elif n:
                parts = run_parts(target, name, n)
                out[name] = parts if STOP in parts else stage_task(target, **parts, **opts)
            else:
                out[name] = stage_task(target, **opts)
            if STOP in out[name]:
                return _stop(record, out[name][STOP])
        formats = export_formats(cfg, export_format)
        if cfg.generate.preference.enabled:
            parts = run_parts(target, "preference", n) if n else {}
            out["preference"] = parts if STOP in parts else preference_task(target, **parts, allow_partial=partial)
            if STOP in out["preference"]:
                return _stop(record, out["preference"][STOP])
        if n:
            out["workers"] = {stage: sorted(w) for stage, w in _workers.items()}
        if cfg.generate.preference.enabled:
            if "dpo" in formats[1:]:
                out["export_dpo"] = export_task(target, "dpo")
        out["export"] = export_task(target, export_format)
        out["publish"] = publish_task(target, formats)
        record.update(_published(out["publish"]))
        if pending := pending_counts(store_for(cfg)):
            record.update(status="completed_partial", pending=pending)
    return out


def _published(publish: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "new_version", "path", "documents", "samples")
    return {k: publish[k] for k in keys if k in publish}
