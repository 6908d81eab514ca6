"""The one registry of stages: name -> run folder, runner, whether its shards run in Ray parts.

Stages are listed in run order. Runners are named by import path (``module:function``), so that
:mod:`datapipe.store` can read the folders without importing the stage modules (they import the store).
The CLI's stage commands and ``flows/`` look runners up here; the run store takes its folders from here.
Each stage module (``datapipe/stages/<name>.py``) supplies its jobs and their compute; the shard loop they
run on (keys, reuse, Ray parts, rejects, pending, manifest, progress) is :mod:`datapipe.stages.runner`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A stage of a run. ``folder``: its output under the run folder. ``runner``: ``module:function`` that runs
    it from a config (None: not run on its own by a flow or command, e.g. curate). ``parts``: its shards can be
    split into Ray parts (the runner takes ``part=(i, n)`` and, in the driver's pass, ``done_elsewhere``).
    ``teacher``: its parts return teacher statistics the driver adds up (``stats_elsewhere``)."""

    name: str
    folder: str
    runner: str | None = None
    parts: bool = False
    teacher: bool = False

    def run(self) -> Callable[..., dict[str, Any]]:
        """The stage's runner function (imported on first use)."""
        if self.runner is None:
            raise KeyError(f"stage {self.name!r} has no runner")
        module, _, attr = self.runner.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("extract", "documents", "datapipe.stages.extract:run_extract", parts=True),
        Stage("chunk", "chunks", "datapipe.stages.chunk:run_chunk", parts=True),
        Stage("generate", "samples", "datapipe.stages.generate:run_generate", parts=True, teacher=True),
        # samples made elsewhere (`datapipe import`), filtered beside generated ones
        Stage("import", "imported", "datapipe.importer:run_import"),
        Stage("filter", "filtered", "datapipe.stages.filter:run_filter"),
        Stage("preference", "preferences", "datapipe.stages.preference:run_preference", parts=True, teacher=True),
        Stage("curate", "curated"),
        Stage("export", "exports", "datapipe.stages.export:run_export"),
        Stage("publish", "versions", "datapipe.versions:run_publish"),
    )
}


def runner_of(name: str) -> Callable[..., dict[str, Any]]:
    """The runner of stage ``name`` (see :class:`Stage`)."""
    return STAGES[name].run()


def part_stages() -> list[str]:
    """The stages whose shards the Ray runner splits into parts, in run order."""
    return [s.name for s in STAGES.values() if s.parts]
