"""The export flow: (curation pull ->) export -> publish, on a schedule of its own.

It re-exports a run's current records without extracting or generating anything, and
publishes a new version when the exported data changed. Reviewers' decisions change the
data between pipeline runs, so this flow first pulls them from Argilla (when the run has
been pushed there: ``<run>/curated/push.json``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from datapipe.runs import load_target
from datapipe.store import store_for
from flows.pipeline import _published, _task_opts, export_formats, export_task, guarded_run, publish_task


@task(name="curation-pull", **_task_opts)
def curation_pull_task(target: str) -> dict[str, Any]:
    from datapipe.curate import pull

    cfg = load_target(target)
    return pull(cfg, store_for(cfg)).manifest


@flow(name="datapipe-export")
def export_flow(target: str, export_format: str | None = None, pull: bool | None = None) -> dict[str, Any]:
    """Pull reviewers' decisions (``pull``; default: when the run was pushed to Argilla), export the run's
    kept samples (and DPO pairs when enabled) and publish a version if they changed."""
    with guarded_run(target, "datapipe-export") as record:
        out: dict[str, Any] = {}
        if pull is None:
            pull = store_for(load_target(target)).read_json("curate", "push.json") is not None
        if pull:
            out["curation_pull"] = curation_pull_task(target)
        formats = export_formats(load_target(target), export_format)
        for fmt in formats[1:]:
            out[f"export_{fmt}"] = export_task(target, fmt)
        out["export"] = export_task(target, formats[0])
        out["publish"] = publish_task(target, formats)
        record.update(_published(out["publish"]))
    return out
