"""The pipeline as a Prefect flow: one task per stage, retried only for transient failures.

The stages themselves live in ``datapipe.pipeline`` and know nothing of Prefect.
"""

from __future__ import annotations

import os
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

from datapipe import pipeline as stages  # noqa: E402
from datapipe.config import PipelineConfig  # noqa: E402
from datapipe.errors import MissingDependencyError, is_transient  # noqa: E402
from datapipe.runs import load_target  # noqa: E402

_progress: stages.Progress = stages.NullProgress()
_workers: dict[str, set[str]] = {}  # stage -> "host:pid" of the processes that ran its parts (Ray runner)


def set_progress(progress: stages.Progress) -> None:
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


@task(name="extract", **_task_opts)
def extract_task(target: str, done_elsewhere: dict[str, float] | None = None) -> dict[str, Any]:
    return stages.run_extract(load_target(target), _progress, done_elsewhere=done_elsewhere)


@task(name="chunk", **_task_opts)
def chunk_task(target: str, done_elsewhere: dict[str, float] | None = None) -> dict[str, Any]:
    return stages.run_chunk(load_target(target), _progress, done_elsewhere=done_elsewhere)


@task(name="generate", **_task_opts)
def generate_task(
    target: str, done_elsewhere: dict[str, float] | None = None, stats_elsewhere: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    cfg = load_target(target)
    return stages.run_generate(cfg, _progress, done_elsewhere=done_elsewhere, stats_elsewhere=stats_elsewhere)


@task(name="filter", **_task_opts)
def filter_task(target: str, distributed: bool = False) -> dict[str, Any]:
    return stages.run_filter(load_target(target), _progress, map_fn=ray_map if distributed else None)


PART_RUNNERS = {"extract": stages.run_extract, "chunk": stages.run_chunk, "generate": stages.run_generate}


@task(name="stage-part", **_task_opts)
def part_task(target: str, stage: str, i: int, n: int) -> dict[str, Any]:
    """One share of a stage's shards (a Ray task under the Ray runner); the stage's task then records them."""
    import socket

    result = PART_RUNNERS[stage](load_target(target), part=(i, n))  # type: ignore[operator]
    return {**result, "worker": f"{socket.gethostname()}:{os.getpid()}"}


def ray_map(fn: Any, items: list[Any]) -> list[Any]:
    """Run ``fn`` over ``items`` as Ray tasks (used inside a task that already runs on the cluster)."""
    import ray

    remote = ray.remote(fn)
    return list(ray.get([remote.remote(x) for x in items]))


def run_parts(target: str, stage: str, n: int) -> dict[str, Any]:
    """Run a stage's shards as ``n`` parallel part tasks; what the stage's own task needs to record them."""
    futures = [part_task.submit(target, stage, i, n) for i in range(n)]
    done: dict[str, float] = {}
    stats: list[dict[str, Any]] = []
    _progress.start(f"{stage} parts", n)
    for future in futures:
        result = future.result()
        _workers.setdefault(stage, set()).add(result["worker"])
        _progress.advance(f"{stage} parts")
        done.update(result["computed"])
        if "teacher" in result:
            stats.append(result["teacher"])
    out: dict[str, Any] = {"done_elsewhere": done}
    if stage == "generate":
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
def preference_task(target: str) -> dict[str, Any]:
    return stages.run_preference(load_target(target), _progress)


@task(name="export", **_task_opts)
def export_task(target: str, export_format: str | None = None) -> dict[str, Any]:
    return stages.run_export(load_target(target), export_format, progress=_progress)


@flow(name="datapipe-pipeline")
def pipeline_flow(target: str, export_format: str | None = None) -> dict[str, Any]:
    """extract -> chunk -> generate -> filter [-> preference] -> export for one pipeline config (or run folder).

    With preference pairs enabled, the DPO export is written next to the configured format.
    """
    target = str(Path(target).resolve())  # tasks may run in other processes (Ray workers) with another cwd
    cfg = load_target(target)
    if cfg.runner.kind == "ray":
        n = _parts_for(cfg)
        out = {"extract": extract_task(target, **run_parts(target, "extract", n))}
        out["chunk"] = chunk_task(target, **run_parts(target, "chunk", n))
        out["generate"] = generate_task(target, **run_parts(target, "generate", n))
        out["filter"] = filter_task(target, distributed=True)
        out["workers"] = {stage: sorted(w) for stage, w in _workers.items()}
    else:
        out = {
            "extract": extract_task(target),
            "chunk": chunk_task(target),
            "generate": generate_task(target),
            "filter": filter_task(target),
        }
    if load_target(target).generate.preference.enabled:
        out["preference"] = preference_task(target)
        if export_format is None:
            out["export_dpo"] = export_task(target, "dpo")
    out["export"] = export_task(target, export_format)
    return out
