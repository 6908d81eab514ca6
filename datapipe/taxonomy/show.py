"""The taxonomy as a tree for ``datapipe taxonomy show``: folders, leaf kinds and seed counts."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from datapipe.taxonomy.loader import load_leaf
from datapipe.taxonomy.models import Leaf
from datapipe.taxonomy.validate import find_leaf_files, validate_file

_KIND_STYLE = {"knowledge": "cyan", "compositional_skill": "green", "foundational_skill": "magenta"}


def leaf_label(leaf: Leaf) -> Text:
    """One line describing a valid leaf: kind, version, seed and Q&A counts, documents."""
    name = Path(leaf.taxonomy_path).name
    label = Text(name, style="bold")
    kind = leaf.kind + (" (grounded)" if leaf.grounded else "")
    label.append(f"  {kind}", style=_KIND_STYLE.get(leaf.kind, ""))
    label.append(f"  v{leaf.version}  {leaf.seed_count} seeds")
    if leaf.is_knowledge:
        label.append(f", {leaf.qna_count} Q&A")
    if leaf.document is not None:
        label.append(f"  docs: {', '.join(leaf.document.patterns)}", style="dim")
    return label


def build_tree(root: Path) -> Tree:
    """A rich Tree of the taxonomy under ``root``; invalid leaves are shown with their problem count."""
    root = Path(root)
    tree = Tree(Text(str(root), style="bold"))
    folders: dict[tuple[str, ...], Tree] = {(): tree}
    counts: Counter[str] = Counter()
    for path in find_leaf_files(root):
        parts = path.parent.relative_to(root).parts
        for depth in range(1, len(parts)):
            key = parts[:depth]
            if key not in folders:
                folders[key] = folders[key[:-1]].add(Text(key[-1] + "/", style="blue"))
        parent = folders[parts[:-1]] if parts else tree
        problems = validate_file(path, root)
        if problems:
            counts["invalid"] += 1
            label = Text(parts[-1] if parts else path.name, style="bold")
            label.append(f"  INVALID: {len(problems)} problem(s), see `datapipe taxonomy validate`", style="red")
            parent.add(label)
            continue
        leaf = load_leaf(path, root)
        counts[leaf.kind] += 1
        parent.add(leaf_label(leaf))
    total = sum(counts.values())
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no qna.yaml found"
    tree.label = Text.assemble(Text(str(root), style="bold"), f"  ({total} leaves: {summary})")
    return tree


def render_tree(root: Path, width: int = 120) -> str:
    """The tree of :func:`build_tree` as plain text (no colour codes)."""
    buffer = io.StringIO()
    Console(width=width, file=buffer, color_system=None).print(build_tree(root))
    return buffer.getvalue()
