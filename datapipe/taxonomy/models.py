"""The parsed form of an InstructLab taxonomy leaf (a ``qna.yaml``) and of a validation problem.

A leaf is only built from a file that passed :func:`datapipe.taxonomy.validate.validate_file`,
so these models describe valid leaves; the validator, not pydantic, produces the user-facing
messages (with line numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

LeafKind = Literal["knowledge", "compositional_skill", "foundational_skill"]

TAXONOMY_FOLDERS: dict[str, LeafKind] = {
    "knowledge": "knowledge",
    "compositional_skills": "compositional_skill",
    "foundational_skills": "foundational_skill",
}
"""Top-level taxonomy folders and the leaf kind each holds."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a taxonomy file, pointing at the line to fix (1-based)."""

    path: Path
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QnA(_Strict):
    """A question/answer pair of a knowledge seed example."""

    question: str
    answer: str


class KnowledgeSeed(_Strict):
    """A knowledge seed example: a passage of the source document and the Q&A pairs it answers."""

    context: str
    questions_and_answers: list[QnA]


class SkillSeed(_Strict):
    """A skill seed example; ``context`` is set for grounded skills only."""

    question: str
    answer: str
    context: str | None = None


class DocumentRef(_Strict):
    """Where a knowledge leaf's source documents live.

    ``repo`` is a git URL (resolved through a repo map to a local clone or bundle), or a local
    path: a git repository or bundle (then ``commit`` pins the revision) or a plain folder
    (then ``commit`` is absent). ``folder`` is InstructLab's own spelling of a plain local folder.
    Relative local paths are relative to the folder holding the ``qna.yaml``.
    """

    repo: str | None = None
    commit: str | None = None
    folder: str | None = None
    patterns: list[str]


class Leaf(_Strict):
    """A validated taxonomy leaf.

    ``taxonomy_path`` is the leaf's folder relative to the taxonomy root, ``/``-joined; it is what
    generated samples record as their origin. Text values are stripped of the surrounding
    whitespace that YAML block scalars add. ``grounded`` marks a skill whose seed examples carry
    a ``context`` (generation must then produce a context too); it is False for knowledge leaves,
    whose grounding is their ``document``. ``version`` is 1 for legacy skill leaves that carry
    no ``version`` key (as InstructLab reads them).
    """

    path: Path
    taxonomy_path: str
    kind: LeafKind
    grounded: bool
    version: int
    created_by: str
    domain: str | None = None
    task_description: str | None = None
    document_outline: str | None = None
    seed_examples: list[KnowledgeSeed] | list[SkillSeed]
    document: DocumentRef | None = None

    @property
    def leaf_dir(self) -> Path:
        """The folder holding the ``qna.yaml``; relative local document paths start here."""
        return self.path.parent

    @property
    def is_knowledge(self) -> bool:
        return self.kind == "knowledge"

    @property
    def seed_count(self) -> int:
        """Number of seed examples."""
        return len(self.seed_examples)

    @property
    def qna_count(self) -> int:
        """Number of question/answer pairs over all seed examples (one per seed for skills)."""
        return sum(len(s.questions_and_answers) if isinstance(s, KnowledgeSeed) else 1 for s in self.seed_examples)

    def knowledge_seeds(self) -> list[KnowledgeSeed]:
        """The seed examples of a knowledge leaf (empty for skills)."""
        return [s for s in self.seed_examples if isinstance(s, KnowledgeSeed)]

    def skill_seeds(self) -> list[SkillSeed]:
        """The seed examples of a skill leaf (empty for knowledge)."""
        return [s for s in self.seed_examples if isinstance(s, SkillSeed)]
