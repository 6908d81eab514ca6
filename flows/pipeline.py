"""The pipeline as a Prefect flow: one task per stage, retried only for transient failures.

The stages themselves live in ``datapipe.pipeline`` and know nothing of Prefect.
"""

from __future__ import annotations

import os
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
from datapipe.errors import is_transient  # noqa: E402
from datapipe.runs import load_target  # noqa: E402

_progress: stages.Progress = stages.NullProgress()


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
def extract_task(target: str) -> dict[str, Any]:
    return stages.run_extract(load_target(target), _progress)


@task(name="chunk", **_task_opts)
def chunk_task(target: str) -> dict[str, Any]:
    return stages.run_chunk(load_target(target), _progress)


@task(name="generate", **_task_opts)
def generate_task(target: str) -> dict[str, Any]:
    return stages.run_generate(load_target(target), _progress)


@task(name="filter", **_task_opts)
def filter_task(target: str) -> dict[str, Any]:
    return stages.run_filter(load_target(target), _progress)


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
