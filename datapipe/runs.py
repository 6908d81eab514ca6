"""Resolve what a command is pointed at: a pipeline.yaml, or a run folder made from one.

Each run folder keeps ``config.json``, the validated config it was made with (absolute
paths, no secrets) and the pipeline file's folder (``base_dir``: chunk ids name documents
relative to it), so any stage can be re-run on the folder alone and makes the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path

from upath import UPath

from datapipe.config import PipelineConfig, load_config
from datapipe.errors import ConfigError
from datapipe.fsio import as_path, is_url
from datapipe.store import _atomic_write_bytes

RUN_CONFIG = "config.json"


def snapshot_config(cfg: PipelineConfig) -> UPath:
    """Write the run's config into its folder; it holds env var *names*, never their values."""
    data = cfg.model_dump(mode="json")
    data["base_dir"] = str(cfg.base_dir.resolve())  # chunk ids name documents relative to it
    data["store"] = cfg.store if is_url(cfg.store) else str(cfg.resolve(cfg.store).resolve())
    data["sources"] = [
        s if is_url(s) or Path(s).is_absolute() else str((cfg.base_dir / s).resolve()) for s in cfg.sources
    ]
    if cfg.prompts_dir:
        data["prompts_dir"] = str(cfg.resolve(cfg.prompts_dir).resolve())
    for key in ("tokenizer", "out"):  # paths, relative to the config file like every other path
        if data["export"].get(key):
            data["export"][key] = str(cfg.resolve(data["export"][key]).resolve())
    if data["teacher"].get("cache_path"):
        data["teacher"]["cache_path"] = str(cfg.resolve(cfg.teacher.cache_path or "").resolve())
    path = cfg.run_dir / RUN_CONFIG
    text = json.dumps(data, indent=2, sort_keys=True).encode("utf-8")
    try:
        if path.read_bytes() == text:  # every stage, task and Ray worker loads the config: write only changes
            return path
    except OSError:
        pass
    _atomic_write_bytes(path, text)  # a kill leaves old or new
    return path


def load_target(target: str | Path | UPath) -> PipelineConfig:
    """A pipeline YAML file, or a run folder containing config.json (a local folder or a store URL).

    A run on a URL that needs ``store_options`` (an S3 endpoint) is reached through its pipeline.yaml."""
    p = as_path(target)
    if is_url(str(target)) or p.is_dir():
        cfg_file = p / RUN_CONFIG
        if not cfg_file.is_file():
            raise ConfigError(
                f"{p} is a folder without {RUN_CONFIG}: pass a pipeline.yaml or a run folder "
                f"made by `datapipe run` / `datapipe extract`"
            )
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
        base = data.pop("base_dir", None)  # the pipeline file's folder (older run folders lack it)
        if base is None:
            base = p.resolve() if isinstance(p, Path) else Path(".")
        return PipelineConfig(**data, base_dir=Path(base))
    cfg = load_config(Path(str(p)))
    snapshot_config(cfg)
    return cfg
