"""Modules named under ``plugins:`` in pipeline.yaml: importing one registers its generation kinds
(:func:`datapipe.generate.kinds.register_kind`) and per-sample checks (:func:`datapipe.filter.per_sample_check`).

They are imported when the config is validated (so ``generate.kinds`` and ``filter.checks`` may name what they
register) and again by every process that runs a stage's part or a filter slice (a Ray worker unpickles a
config without validating it), which is harmless: Python imports a module once per process.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from datapipe.errors import ConfigError


def load_plugins(modules: Iterable[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"plugins: cannot import {name!r} ({exc}); name a module importable by the run's Python "
                "(installed, or on PYTHONPATH in every process that runs stages)"
            ) from exc
