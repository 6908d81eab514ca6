"""The export flow: (curation pull ->) export -> publish, on a schedule of its own.

It re-exports a run's current records without extracting or generating anything, and
publishes a new version when the exported data changed. Reviewers' decisions change the
data between pipeline runs, so this flow is where they are pulled in: the marked place
below is where the curation pull task goes once ``datapipe/curate`` exists.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from datapipe.runs import load_target
from flows.pipeline import _published, export_formats, export_task, guarded_run, publish_task


@flow(name="datapipe-export")
def export_flow(target: str, export_format: str | None = None) -> dict[str, Any]:
    """Export the run's kept samples (and DPO pairs when enabled) and publish a version if they changed."""
    with guarded_run(target, "datapipe-export") as record:
        out: dict[str, Any] = {}
        # Curation pull goes here, before the export reads the records (issue 6):
        #     out["curation_pull"] = curation_pull_task(target)
        # and its decisions belong in datapipe.versions.export_inputs, so that changed decisions
        # publish a new version.
        formats = export_formats(load_target(target), export_format)
        for fmt in formats[1:]:
            out[f"export_{fmt}"] = export_task(target, fmt)
        out["export"] = export_task(target, formats[0])
        out["publish"] = publish_task(target, formats)
        record.update(_published(out["publish"]))
    return out
