"""The registry of generation kinds: the one list of kinds that ``generate.kinds`` may name.

A kind plans its jobs from the run's chunks: ``plan(ctx) -> (config hash, jobs)``, where a job is
``(shard key, input keys, records in, coroutine factory)`` and the coroutine returns the shard's samples and
rejects. :func:`datapipe.stages.generate.run_generate` runs every planned job through the one shard loop (reuse,
Ray parts, pending records, manifest); a kind never writes to the store itself. The config hash goes into
the generate manifest's hash and should change whenever the kind's output would.

Built-in kinds are named here by import path, so that config validation does not import the generators;
a plugin module registers its own with :func:`register_kind` (see README "Adding a generation kind").

Beside its plan a kind may register an estimator for ``datapipe run --dry-run``
(``estimate(ectx) -> datapipe.estimate.KindEstimate``, :func:`register_estimator`), built from the same
shard-key functions as its plan so that the estimate skips exactly the shards the run would reuse. A kind
without one is reported as "not estimated".
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from datapipe.records import Chunk, Reject, Sample

JobFn = Callable[[], Awaitable[tuple[list[Sample], list[Reject]]]]
Job = tuple[str, list[str], int, JobFn]


@dataclass
class GenerateContext:
    """What a kind's plan sees: the config, the run's Teacher, progress, and the chunk shards (``all_shards``:
    every chunk shard, pseudonymised when privacy is on; ``plain``: those of plain sources, not taxonomy leaves)."""

    cfg: Any
    teacher: Any
    progress: Any
    all_shards: list[tuple[str, list[Chunk]]]
    plain: list[tuple[str, list[Chunk]]]


Plan = Callable[[GenerateContext], tuple[str, list[Job]]]

_BUILTIN: dict[str, str] = {
    "instruction": "datapipe.stages.generate:plan_instruction",
    "qa": "datapipe.stages.generate:plan_qa",
}
_REGISTERED: dict[str, Plan] = {}
_BUILTIN_ESTIMATORS: dict[str, str] = {
    "instruction": "datapipe.estimate:estimate_instruction",
    "qa": "datapipe.estimate:estimate_qa",
}
_ESTIMATORS: dict[str, Callable[[Any], Any]] = {}


def register_kind(name: str) -> Callable[[Plan], Plan]:
    """Register ``plan`` as generation kind ``name`` (a decorator)."""

    def deco(plan: Plan) -> Plan:
        if name in _BUILTIN:
            raise ValueError(f"generation kind {name!r} is built in")
        _REGISTERED[name] = plan
        return plan

    return deco


def kind_names() -> list[str]:
    """Every kind ``generate.kinds`` may name: the built-in ones first, in the order their shards are planned."""
    return [*_BUILTIN, *_REGISTERED]


def plan_of(name: str) -> Plan:
    if name in _REGISTERED:
        return _REGISTERED[name]
    module, _, attr = _BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


def register_estimator(name: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register ``estimate(ectx) -> KindEstimate`` (see :mod:`datapipe.estimate`) as kind ``name``'s dry-run
    estimator (a decorator)."""

    def deco(estimate: Callable[[Any], Any]) -> Callable[[Any], Any]:
        _ESTIMATORS[name] = estimate
        return estimate

    return deco


def estimator_of(name: str) -> Callable[[Any], Any] | None:
    """Kind ``name``'s dry-run estimator, or None when it registers none."""
    if name in _ESTIMATORS:
        return _ESTIMATORS[name]
    if name not in _BUILTIN_ESTIMATORS:
        return None
    module, _, attr = _BUILTIN_ESTIMATORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
