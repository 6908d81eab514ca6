"""What Argilla reviewers read: dataset guidelines and question texts, from prompts/review_guidelines/.

The text lives in a versioned file (not in code) so the criteria can be read, reviewed and changed like the
prompts, and so the guidelines say the same as the filters and the judge rubric. ``curate push`` sends the
guidelines and question texts of the newest version with every dataset, and updates them on every push.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import yaml

from datapipe.errors import ConfigError
from datapipe.generate.prompts import default_prompts_dir

NAME = "review_guidelines"
QUESTIONS = ("keep", "quality", "correction")


@dataclass(frozen=True)
class QuestionText:
    title: str
    description: str


@dataclass(frozen=True)
class Guidelines:
    """The guidelines of one sample kind (markdown) and the title/description of each question."""

    kind: str
    text: str
    questions: dict[str, QuestionText]
    version: str
    hash: str
    path: Path


def load_guidelines(kind: str, prompts_dir: Path | None = None) -> Guidelines:
    """The newest ``review_guidelines`` version for ``kind`` (instruction, qa or preference)."""
    folder = (prompts_dir or default_prompts_dir()) / NAME
    files = sorted(folder.glob("*.yaml"), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0))
    if not files:
        raise ConfigError(f"no review guidelines in {folder}: restore prompts/{NAME}/v1.yaml from the repository")
    path = files[-1]
    raw = path.read_bytes()
    try:
        spec = yaml.safe_load(raw)
        kinds = spec["kinds"]
        questions = {
            q: QuestionText(spec["questions"][q]["title"].strip(), spec["questions"][q]["description"].strip())
            for q in QUESTIONS
        }
        common = spec["common"]
    except (yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a review guidelines file ({type(exc).__name__}: {exc})") from None
    if kind not in kinds:
        raise ConfigError(f"{path} has no guidelines for sample kind {kind!r} (it has {sorted(kinds)}); add them")
    text = kinds[kind].strip() + "\n\n" + common.strip()  # Argilla strips surrounding whitespace
    return Guidelines(
        kind=kind,
        text=text,
        questions=questions,
        version=str(spec.get("version", path.stem)),
        hash=hashlib.sha256(raw).hexdigest()[:12],
        path=path,
    )
