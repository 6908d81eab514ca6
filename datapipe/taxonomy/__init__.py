"""InstructLab-format taxonomies: ``qna.yaml`` leaves under knowledge/, compositional_skills/, foundational_skills/.

Read a taxonomy with :func:`iter_leaves`, check it with :func:`validate_tree` (problems carry
``path:line``), and turn a knowledge leaf's ``document`` reference into local files with
:func:`resolve_documents` (git at the pinned commit, never the network).
"""

from __future__ import annotations

from datapipe.taxonomy.documents import resolve_documents
from datapipe.taxonomy.loader import iter_leaves, load_leaf
from datapipe.taxonomy.models import DocumentRef, KnowledgeSeed, Leaf, LeafKind, Problem, QnA, SkillSeed
from datapipe.taxonomy.show import build_tree, render_tree
from datapipe.taxonomy.validate import find_leaf_files, validate_file, validate_tree

__all__ = [
    "DocumentRef",
    "KnowledgeSeed",
    "Leaf",
    "LeafKind",
    "Problem",
    "QnA",
    "SkillSeed",
    "build_tree",
    "find_leaf_files",
    "iter_leaves",
    "load_leaf",
    "render_tree",
    "resolve_documents",
    "validate_file",
    "validate_tree",
]
