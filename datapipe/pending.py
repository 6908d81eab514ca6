"""What a run does when a stage ends with pending records (a retry can fix them: see :mod:`datapipe.reasons`).

By default such a run is not complete: it publishes nothing and ends with :class:`PendingError` (the CLI
exits with :data:`PENDING_EXIT`, a Prefect task retries, a deployment run ends Failed); the next run
computes the partial shards again, sending only the requests the response cache has no answer for.
With ``allow_partial`` the run goes on without the pending records and the version says how many.
"""

from __future__ import annotations

from typing import Any

from datapipe.errors import PendingError
from datapipe.store import RunStore

PENDING_EXIT = 4
"""Exit status of a command that ended with records pending: everything received is saved, re-running resumes."""

TEACHER_STAGES = ("generate", "filter", "preference")


def pending_counts(store: RunStore) -> dict[str, int]:
    """Records pending per stage, from the current manifests (stages with none left out)."""
    out: dict[str, int] = {}
    for stage in TEACHER_STAGES:
        m = store.read_manifest(stage)
        if m and (n := m.get("counts", {}).get("pending", 0)):
            out[stage] = n
    return out


def pending_message(manifest: dict[str, Any]) -> str:
    """What is pending after a stage, why, and what to do."""
    stage = manifest.get("stage", "?")
    n = manifest["counts"].get("pending", 0)
    why = ", ".join(f"{k}: {v}" for k, v in manifest.get("pending_by_reason", {}).items())
    teacher = manifest.get("teacher") or {}
    lines = [f"{stage}: {n} records pending ({why}); they are not rejects, and nothing was published"]
    if teacher.get("unreachable"):
        lines.append(f"{stage} stopped early: {teacher['unreachable']}")
    lines.append(
        "every answer received is saved; run the same command again when the teacher is back to resume (only the "
        "missing requests are sent), or pass --allow-partial (allow_partial: true) to publish without them"
    )
    return "\n".join(lines)


def check_pending(manifest: dict[str, Any], allow_partial: bool) -> dict[str, Any]:
    """``manifest`` as it is, or :class:`PendingError` when the stage left records pending and that is not allowed."""
    n = manifest.get("counts", {}).get("pending", 0)
    if n and not allow_partial:
        raise PendingError(pending_message(manifest), {manifest.get("stage", "?"): n})
    return manifest
