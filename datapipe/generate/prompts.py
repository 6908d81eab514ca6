"""Versioned prompt templates: ``prompts/<name>/<version>.yaml`` with fixed sections.

Templates are rendered with Jinja's ``StrictUndefined``, so a missing variable fails
loudly instead of producing a prompt with a hole in it. A prompt's name, version
and content hash go into every sample's provenance.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from datapipe.errors import ConfigError

_REQUIRED = ("name", "version", "user")
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


def default_prompts_dir() -> Path:
    """The prompts/ folder next to the package (a source checkout or an installed share dir)."""
    here = Path(__file__).resolve().parents[2] / "prompts"
    return here


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    hash: str
    system: str | None
    user: str
    path: Path

    def render(self, **variables: Any) -> list[dict[str, str]]:
        """Chat messages for these variables; raises ConfigError naming the missing variable."""
        try:
            messages = []
            if self.system:
                messages.append(
                    {"role": "system", "content": _ENV.from_string(self.system).render(**variables).strip()}
                )
            messages.append({"role": "user", "content": _ENV.from_string(self.user).render(**variables).strip()})
            return messages
        except jinja2.UndefinedError as exc:
            raise ConfigError(f"prompt {self.path}: {exc.message}; pass that variable or fix the template") from None


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)) or (0,)


def load_prompt(name: str, version: str | None = None, prompts_dir: Path | None = None) -> Prompt:
    folder = (prompts_dir or default_prompts_dir()) / name
    if not folder.is_dir():
        raise ConfigError(f"prompt {name!r}: folder {folder} does not exist; check generate.*_prompt and prompts_dir")
    files = sorted(folder.glob("*.yaml"), key=lambda p: _version_key(p.stem))
    if version:
        files = [f for f in files if f.stem == version]
    if not files:
        raise ConfigError(f"prompt {name!r}: no version {version or '(any)'} in {folder}")
    path = files[-1]
    raw = path.read_bytes()
    data = yaml.safe_load(raw) or {}
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ConfigError(f"prompt {path}: missing section(s) {', '.join(missing)}")
    return Prompt(
        name=str(data["name"]),
        version=str(data["version"]),
        hash=hashlib.sha256(raw).hexdigest()[:16],
        system=data.get("system"),
        user=str(data["user"]),
        path=path,
    )
