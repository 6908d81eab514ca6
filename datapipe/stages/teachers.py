"""The run's teachers for the stages that ask one: built on the run's budget and response cache, and their
statistics (added up over a stage's Ray parts) for the manifests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from datapipe.config import PipelineConfig


def merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Teacher statistics of several processes (stage parts) added up: numbers summed, lists joined,
    nested dicts merged the same way, anything else kept from the first that has it."""
    out: dict[str, Any] = {}
    for st in stats:
        for k, v in st.items():
            if isinstance(v, dict):
                out[k] = merge_stats([out.get(k, {}), v]) if isinstance(out.get(k, {}), dict) else out[k]
            elif isinstance(v, list):
                out[k] = (out.get(k, []) + v)[:100]
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(out.get(k, 0), (int, float)):
                out[k] = round(out.get(k, 0) + v, 3)
            else:
                out.setdefault(k, v)
    return out


def teacher_record(teacher: Any, stats_elsewhere: list[dict[str, Any]] | None, role: str = "teacher") -> dict[str, Any]:
    """A teacher's identity and statistics for a manifest, with those its stage's parts reported under ``role``
    (``{"teacher": ..., "second_model": ...}`` per part) added up."""
    parts = [st[role] for st in stats_elsewhere or [] if role in st]
    own = teacher.stats.as_dict()
    merged = merge_stats([own, *parts])
    if parts:  # a maximum is not a sum
        merged["retry_after_max_s"] = max(p.get("retry_after_max_s", 0.0) for p in [own, *parts])
    return {**teacher.identity, **merged}


def teacher_cache_path(cfg: PipelineConfig) -> Path | None:
    if not cfg.teacher.cache:
        return None
    if cfg.teacher.cache_path:
        return cfg.resolve(cfg.teacher.cache_path)
    if not cfg.store_is_local:  # SQLite wants a local disk: one cache per machine for a store on a URL
        digest = hashlib.sha256(str(cfg.run_dir).encode()).hexdigest()[:16]
        return (
            Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
            / "datapipe"
            / "teacher"
            / f"{digest}.sqlite"
        )
    return cfg.resolve(cfg.store) / ".cache" / "teacher.sqlite"


def run_budget_key(cfg: PipelineConfig) -> str:
    return str(cfg.run_dir.resolve()) if cfg.store_is_local else str(cfg.run_dir)


def build_teacher(cfg: PipelineConfig, teacher_cfg: Any = None) -> Any:
    """The run's teacher (or ``teacher_cfg``, e.g. a second model), drawing on the run's budget."""
    from datapipe.privacy import wrap_teacher
    from datapipe.teacher import Teacher
    from datapipe.teacher.budget import budget_for

    budget = budget_for(run_budget_key(cfg), cfg.budget)
    tcfg = teacher_cfg or cfg.teacher
    return wrap_teacher(cfg, Teacher(tcfg, teacher_cache_path(cfg), budget), tcfg)
