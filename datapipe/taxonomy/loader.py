"""Loading validated taxonomy leaves into :class:`~datapipe.taxonomy.models.Leaf` objects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from datapipe.errors import ConfigError
from datapipe.taxonomy.models import DocumentRef, KnowledgeSeed, Leaf, QnA, SkillSeed
from datapipe.taxonomy.validate import find_leaf_files, leaf_kind, read_and_validate, taxonomy_path_of


def load_leaf(path: Path, root: Path) -> Leaf:
    """Validate and load one ``qna.yaml``.

    Raises :class:`~datapipe.errors.ConfigError` listing every problem (``path:line: message``)
    when the file is not a valid leaf, so generation never starts from a half-valid taxonomy.
    """
    path, root = Path(path), Path(root)
    problems, text = read_and_validate(path, root)
    if problems or text is None:
        listing = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(
            f"{path} is not a valid taxonomy leaf ({len(problems)} problem(s)); "
            f"fix them or run `datapipe taxonomy validate {root}`:\n{listing}"
        )
    data: dict[str, Any] = yaml.safe_load(text)
    return _build(path, root, data)


def iter_leaves(root: Path) -> Iterator[Leaf]:
    """Every leaf under ``root`` in taxonomy-path order; stops with ConfigError at the first invalid one."""
    root = Path(root)
    for path in find_leaf_files(root):
        yield load_leaf(path, root)


def _text(value: Any) -> str:
    return str(value).strip()


def _build(path: Path, root: Path, data: dict[str, Any]) -> Leaf:
    kind = leaf_kind(path, root, data)
    seeds: list[KnowledgeSeed] | list[SkillSeed]
    document: DocumentRef | None = None
    if kind == "knowledge":
        seeds = [
            KnowledgeSeed(
                context=_text(s["context"]),
                questions_and_answers=[
                    QnA(question=_text(q["question"]), answer=_text(q["answer"])) for q in s["questions_and_answers"]
                ],
            )
            for s in data["seed_examples"]
        ]
        doc = data["document"]
        document = DocumentRef(
            repo=_text(doc["repo"]) if doc.get("repo") is not None else None,
            commit=_text(doc["commit"]) if doc.get("commit") is not None else None,
            folder=_text(doc["folder"]) if doc.get("folder") is not None else None,
            patterns=[_text(p) for p in doc["patterns"]],
        )
        grounded = False
    else:
        seeds = [
            SkillSeed(
                question=_text(s["question"]),
                answer=_text(s["answer"]),
                context=_text(s["context"]) if s.get("context") is not None else None,
            )
            for s in data["seed_examples"]
        ]
        grounded = any(s.context is not None for s in seeds)
    return Leaf(
        path=path,
        taxonomy_path=taxonomy_path_of(path, root),
        kind=kind,
        grounded=grounded,
        version=int(data.get("version", 1)),
        created_by=_text(data["created_by"]),
        domain=_text(data["domain"]) if "domain" in data else None,
        task_description=_text(data["task_description"]) if "task_description" in data else None,
        document_outline=_text(data["document_outline"]) if "document_outline" in data else None,
        seed_examples=seeds,
        document=document,
    )
