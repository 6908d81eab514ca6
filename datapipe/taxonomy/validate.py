"""Validation of taxonomy ``qna.yaml`` files against InstructLab's versioned schema.

The rules follow instructlab/schema: knowledge leaves are version 3; skill leaves are version
2 or 3, or legacy version 1 when the file has no ``version`` key (the foundational skills in
instructlab/taxonomy are written that way). Checks run on the YAML node tree, not on loaded
Python values, so every problem carries the line it refers to. The YAML is only composed with
the safe loader: no Python object is ever constructed from a tag.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from datapipe.errors import ConfigError
from datapipe.taxonomy.models import TAXONOMY_FOLDERS, LeafKind, Problem
from datapipe.taxonomy.refs import PATTERN_RULE, is_commit_sha, is_remote_repo, pattern_problem
from datapipe.yamlsafe import alias_problem

LEAF_FILE = "qna.yaml"

KNOWLEDGE_VERSIONS = (3,)
SKILL_VERSIONS = (1, 2, 3)
MIN_KNOWLEDGE_SEEDS = 5
MIN_SKILL_SEEDS = {1: 1, 2: 5, 3: 5}
MIN_QNA_PER_KNOWLEDGE_SEED = 3

_KNOWLEDGE_KEYS = ("version", "created_by", "domain", "seed_examples", "document_outline", "document")
_SKILL_KEYS = ("version", "created_by", "task_description", "seed_examples")
_DOCUMENT_KEYS = ("repo", "commit", "patterns", "folder")

_WRONG_KIND_HINTS = {
    (True, "task_description"): "knowledge leaves (version 3) describe their document with domain and document_outline",
    (False, "domain"): "skill leaves have no domain; describe the task in task_description",
    (False, "document_outline"): "skill leaves have no document_outline",
    (False, "document"): "skill leaves have no document; put material in each seed example's context (grounded skill)",
}

_TAG = "tag:yaml.org,2002:"
_ALLOWED_TAGS = {_TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "seq", "map")}
_WHOLE_PLACEHOLDER = re.compile(r"^<[^<>]+>$")
_ANY_PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")


@dataclass
class _Checker:
    """Collects problems for one file."""

    path: Path
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: Node | int, message: str) -> None:
        line = where if isinstance(where, int) else where.start_mark.line + 1
        self.problems.append(Problem(self.path, line, message))


def find_leaf_files(root: Path) -> list[Path]:
    """Every ``qna.yaml`` under ``root``, sorted by taxonomy path; hidden folders (``.git``) are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(
            f"taxonomy root {root} is not a folder; pass the folder holding "
            "knowledge/, compositional_skills/ or foundational_skills/"
        )
    found = [p for p in root.rglob(LEAF_FILE) if p.is_file() and not _hidden(p.relative_to(root))]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def taxonomy_path_of(path: Path, root: Path) -> str:
    """The leaf's folder relative to ``root``, ``/``-joined (its identity in generated samples)."""
    folder = Path(path).parent
    for a, b in ((folder, Path(root)), (folder.absolute(), Path(root).absolute()), (folder.resolve(), root.resolve())):
        try:
            rel = a.relative_to(b)
        except ValueError:
            continue
        return rel.as_posix() if rel.parts else "."
    return folder.as_posix()


def leaf_kind(path: Path, root: Path, top_keys: Iterable[str]) -> LeafKind:
    """The kind of leaf, from its top-level folder as InstructLab does.

    Outside the known folders (e.g. ``docs/template_qna.yaml``) a file with a ``document`` key is
    read as knowledge, anything else as a compositional skill.
    """
    rel_parts = Path(taxonomy_path_of(path, root)).parts
    if rel_parts and rel_parts[0] in TAXONOMY_FOLDERS:
        return TAXONOMY_FOLDERS[rel_parts[0]]
    for part in reversed(Path(path).absolute().parts[:-1]):
        if part in TAXONOMY_FOLDERS:
            return TAXONOMY_FOLDERS[part]
    return "knowledge" if "document" in set(top_keys) else "compositional_skill"


def validate_tree(root: Path) -> list[Problem]:
    """Problems in every ``qna.yaml`` under ``root``; an empty list means the taxonomy is valid."""
    problems: list[Problem] = []
    for path in find_leaf_files(Path(root)):
        problems.extend(validate_file(path, root))
    return problems


def validate_file(path: Path, root: Path) -> list[Problem]:
    """Problems in one taxonomy file, ordered by line; an empty list means it is a valid leaf."""
    return read_and_validate(Path(path), Path(root))[0]


def read_and_validate(path: Path, root: Path) -> tuple[list[Problem], str | None]:
    """Validate ``path``; also return its text, so a caller building a leaf does not read it twice."""
    chk = _Checker(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        chk.add(1, f"cannot read the file: {exc.strerror or exc}")
        return chk.problems, None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        chk.add(raw[: exc.start].count(b"\n") + 1, "the file is not UTF-8 text; save it as UTF-8")
        return chk.problems, None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.context_mark is not None and exc.problem:
            detail = f"{exc.problem} ({exc.context} at line {exc.context_mark.line + 1})"
        chk.add(mark.line + 1 if mark is not None else 1, f"YAML syntax error: {detail}")
        return chk.problems, None
    except yaml.YAMLError as exc:
        chk.add(1, f"YAML error: {exc}")
        return chk.problems, None
    except RecursionError:
        chk.add(1, "the YAML nests lists or mappings too deeply to read; a taxonomy leaf is a few levels deep")
        return chk.problems, None
    if node is None:
        chk.add(1, "the file is empty; a taxonomy leaf needs version, created_by and seed_examples")
        return chk.problems, None
    if (bad := alias_problem(node)) is not None:
        chk.add(bad[0], bad[1])
        return chk.problems, None
    _check_tags(chk, node)
    if not isinstance(node, MappingNode):
        chk.add(node, f"the top level must be a mapping of keys (version, created_by, ...), got {_describe(node)}")
    else:
        _check_leaf(chk, node, path, root)
    chk.problems.sort(key=lambda p: p.line)
    return chk.problems, text


def _check_tags(chk: _Checker, root: Node) -> None:
    """Refuse explicit tags (``!!python/object`` and friends): a leaf is plain data."""
    stack: list[Node] = [root]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag not in _ALLOWED_TAGS:
            chk.add(node, f"unsupported YAML tag {node.tag!r}; a taxonomy leaf holds plain strings, numbers and lists")
        if isinstance(node, SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, MappingNode):
            for k, v in node.value:
                stack.extend((k, v))


def _check_leaf(chk: _Checker, top: MappingNode, path: Path, root: Path) -> None:
    items = _mapping(chk, top, "the file")
    kind = leaf_kind(path, root, items)
    knowledge = kind == "knowledge"
    version = _check_version(chk, top, items, knowledge)
    allowed = _KNOWLEDGE_KEYS if knowledge else _SKILL_KEYS
    required = [k for k in allowed if not (k == "version" and not knowledge and version == 1)]
    label = "knowledge" if knowledge else kind.replace("_", " ")
    _check_keys(chk, top, items, "", allowed, required, hint_kind=knowledge, label=f"a {label} leaf")

    if "created_by" in items:
        _string(chk, items["created_by"][1], "created_by", anywhere=True)
    if knowledge:
        for key in ("domain", "document_outline"):
            if key in items:
                _string(chk, items[key][1], key, anywhere=key == "domain")
        if "seed_examples" in items:
            _check_knowledge_seeds(chk, items["seed_examples"][1])
        if "document" in items:
            _check_document(chk, items["document"][1])
    else:
        if "task_description" in items:
            _string(chk, items["task_description"][1], "task_description")
        if "seed_examples" in items:
            _check_skill_seeds(chk, items["seed_examples"][1], version)


def _check_version(chk: _Checker, top: MappingNode, items: dict[str, tuple[ScalarNode, Node]], knowledge: bool) -> int:
    """The schema version to check against; problems with the version itself are reported here."""
    supported = KNOWLEDGE_VERSIONS if knowledge else SKILL_VERSIONS
    latest = supported[-1]
    if "version" not in items:
        if knowledge:
            chk.add(top, f"required key 'version' is missing; knowledge leaves need 'version: {latest}'")
            return latest
        return 1
    node = items["version"][1]
    if not (isinstance(node, ScalarNode) and node.tag == _TAG + "int"):
        chk.add(node, f"version must be a whole number such as {latest}, got {_describe(node)}")
        return latest
    version = int(SafeConstructor().construct_yaml_int(node))
    if version not in supported:
        what = "knowledge" if knowledge else "skill"
        chk.add(
            node,
            f"version {version} is not supported for {what} leaves (supported: "
            f"{', '.join(map(str, supported))}); rewrite the leaf in the version {latest} format",
        )
        return latest
    return version


def _check_knowledge_seeds(chk: _Checker, node: Node) -> None:
    seeds = _sequence(chk, node, "seed_examples", f"add at least {MIN_KNOWLEDGE_SEEDS} seed examples")
    if seeds is None:
        return
    if len(seeds) < MIN_KNOWLEDGE_SEEDS:
        chk.add(
            node,
            f"seed_examples has {len(seeds)} seed example(s); knowledge leaves need at least {MIN_KNOWLEDGE_SEEDS}",
        )
    _check_unique(chk, seeds, "seed_examples", "seed example")
    for i, seed in enumerate(seeds):
        where = f"seed_examples[{i}]"
        items = _mapping(chk, seed, where)
        if not isinstance(seed, MappingNode):
            continue
        keys = ("context", "questions_and_answers")
        _check_keys(chk, seed, items, where + ".", keys, keys, label="a knowledge seed example")
        if "context" in items:
            _string(chk, items["context"][1], where + ".context")
        if "questions_and_answers" in items:
            _check_qnas(chk, items["questions_and_answers"][1], where + ".questions_and_answers")


def _check_qnas(chk: _Checker, node: Node, where: str) -> None:
    qnas = _sequence(chk, node, where, f"add {MIN_QNA_PER_KNOWLEDGE_SEED} question/answer pairs")
    if qnas is None:
        return
    if len(qnas) < MIN_QNA_PER_KNOWLEDGE_SEED:
        chk.add(
            node,
            f"{where} has {len(qnas)} question/answer pair(s); each knowledge seed example needs "
            f"{MIN_QNA_PER_KNOWLEDGE_SEED}",
        )
    _check_unique(chk, qnas, where, "question/answer pair")
    for j, qna in enumerate(qnas):
        item_where = f"{where}[{j}]"
        items = _mapping(chk, qna, item_where)
        if not isinstance(qna, MappingNode):
            continue
        keys = ("question", "answer")
        _check_keys(chk, qna, items, item_where + ".", keys, keys, label="a question/answer pair")
        for key in keys:
            if key in items:
                _string(chk, items[key][1], f"{item_where}.{key}")


def _check_skill_seeds(chk: _Checker, node: Node, version: int) -> None:
    minimum = MIN_SKILL_SEEDS.get(version, MIN_SKILL_SEEDS[SKILL_VERSIONS[-1]])
    seeds = _sequence(chk, node, "seed_examples", f"add at least {minimum} seed examples")
    if seeds is None:
        return
    if len(seeds) < minimum:
        chk.add(
            node, f"seed_examples has {len(seeds)} seed example(s); version {version} skills need at least {minimum}"
        )
    if version >= 2:
        _check_unique(chk, seeds, "seed_examples", "seed example")
    with_context: list[bool] = []
    for i, seed in enumerate(seeds):
        where = f"seed_examples[{i}]"
        items = _mapping(chk, seed, where)
        if not isinstance(seed, MappingNode):
            continue
        _check_keys(
            chk,
            seed,
            items,
            where + ".",
            ("question", "answer", "context"),
            ("question", "answer"),
            label="a skill seed",
        )
        for key in ("question", "answer", "context"):
            if key in items:
                _string(chk, items[key][1], f"{where}.{key}")
        with_context.append("context" in items)
    if any(with_context) and not all(with_context):
        first = next(seed for seed, has in zip(seeds, with_context, strict=False) if not has)
        chk.add(
            first,
            f"seed_examples: {with_context.count(True)} of {len(with_context)} seed examples have a context; "
            "a grounded skill needs a context in every seed example, an ungrounded one in none",
        )


def _check_document(chk: _Checker, node: Node) -> None:
    items = _mapping(chk, node, "document")
    if not isinstance(node, MappingNode):
        return
    _check_keys(chk, node, items, "document.", _DOCUMENT_KEYS, ("patterns",), label="document")
    repo: str | None = None
    if "repo" in items:
        repo = _string(chk, items["repo"][1], "document.repo", anywhere=True)
    if "folder" in items:
        _string(chk, items["folder"][1], "document.folder", anywhere=True)
        if "repo" in items:
            chk.add(items["folder"][0], "document: give either repo or folder, not both")
    elif "repo" not in items:
        chk.add(node, "document needs repo (a git URL, or a local path to a git repository, bundle or folder)")
    commit_node = items["commit"][1] if "commit" in items else None
    has_commit = commit_node is not None and not _is_null(commit_node)
    if commit_node is not None and has_commit:
        commit = _string(chk, commit_node, "document.commit", anywhere=True)
        if commit is not None and not is_commit_sha(commit.strip()):
            chk.add(
                commit_node,
                f"document.commit must be a commit SHA (7 to 40 hex digits), got {_short(commit)!r}; "
                "pin the exact commit the documents were taken from",
            )
        if "folder" in items:
            chk.add(commit_node, "document.commit does not apply to folder (a plain local folder); use repo for git")
    if repo is not None and is_remote_repo(repo) and not has_commit and not _ANY_PLACEHOLDER.search(repo):
        chk.add(
            items["repo"][1],
            "document.commit is missing: a git URL needs the SHA of the commit holding the documents",
        )
    if "patterns" in items:
        _check_patterns(chk, items["patterns"][1])


def _check_patterns(chk: _Checker, node: Node) -> None:
    patterns = _sequence(chk, node, "document.patterns", "list the document files, e.g. - chickadee.md")
    if patterns is None:
        return
    if not patterns:
        chk.add(node, "document.patterns is empty; list at least one glob pattern such as '*.md'")
    _check_unique(chk, patterns, "document.patterns", "pattern")
    for i, item in enumerate(patterns):
        where = f"document.patterns[{i}]"
        pattern = _string(chk, item, where, anywhere=True)
        if pattern is None:
            continue
        reason = pattern_problem(pattern.strip())
        if reason:
            chk.add(item, f"{where}: {pattern!r} {reason}; {PATTERN_RULE}")


def _check_keys(
    chk: _Checker,
    node: MappingNode,
    items: dict[str, tuple[ScalarNode, Node]],
    prefix: str,
    allowed: Iterable[str],
    required: Iterable[str],
    *,
    label: str,
    hint_kind: bool | None = None,
) -> None:
    allowed = tuple(allowed)
    for key, (key_node, _) in items.items():
        if key in allowed:
            continue
        hint = _WRONG_KIND_HINTS.get((hint_kind, key)) if hint_kind is not None else None
        if hint is None:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        chk.add(key_node, f"unknown key '{prefix}{key}' in {label}; {hint}")
    for key in required:
        if key not in items:
            chk.add(node, f"required key '{prefix}{key}' is missing")


def _mapping(chk: _Checker, node: Node, where: str) -> dict[str, tuple[ScalarNode, Node]]:
    """The keys of a mapping node with their key and value nodes; reports non-mappings and duplicate keys."""
    if not isinstance(node, MappingNode):
        chk.add(node, f"{where} must be a mapping of keys, got {_describe(node)}")
        return {}
    items: dict[str, tuple[ScalarNode, Node]] = {}
    for key_node, value_node in node.value:
        if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
            chk.add(key_node, f"{where}: keys must be plain words, got {_describe(key_node)}")
            continue
        key = key_node.value
        if key in items:
            first = items[key][0].start_mark.line + 1
            chk.add(key_node, f"duplicate key '{key}' (first at line {first}); YAML would keep only the last one")
            continue
        items[key] = (key_node, value_node)
    return items


def _sequence(chk: _Checker, node: Node, where: str, todo: str) -> list[Node] | None:
    if _is_null(node):
        chk.add(node, f"{where} is empty; {todo}")
        return None
    if not isinstance(node, SequenceNode):
        chk.add(node, f"{where} must be a list ('- ' items), got {_describe(node)}")
        return None
    return list(node.value)


def _string(chk: _Checker, node: Node, where: str, *, anywhere: bool = False) -> str | None:
    """The string value of ``node``, or None after reporting why it is not a usable string.

    ``anywhere`` flags a ``<placeholder>`` inside the value (for short fields such as URLs);
    otherwise only a value that is entirely a placeholder is flagged, so prose contexts may
    quote HTML.
    """
    if _is_null(node):
        chk.add(node, f"{where} is empty")
        return None
    if not isinstance(node, ScalarNode):
        chk.add(node, f"{where} must be a string, got {_describe(node)}")
        return None
    if node.tag != _TAG + "str":
        chk.add(node, f"{where} must be a string, got {_describe(node)} {node.value!r}; put it in quotes")
        return None
    value: str = node.value
    if not value.strip():
        chk.add(node, f"{where} is empty")
        return None
    stripped = value.strip()
    placeholder = _ANY_PLACEHOLDER.search(stripped) if anywhere else _WHOLE_PLACEHOLDER.match(stripped)
    if placeholder:
        chk.add(node, f"{where} still holds the template placeholder {_short(placeholder.group(0))!r}; replace it")
        return None
    return value


def _check_unique(chk: _Checker, nodes: list[Node], where: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        plain = _plain(node)
        if not _has_content(plain):
            continue  # empty items are reported as empty; calling them repeats only adds noise
        key = json.dumps(plain, sort_keys=True, default=str)
        if key in seen:
            chk.add(node, f"{where}[{i}] repeats {what} {where}[{seen[key]}]; each {what} must be different")
        else:
            seen[key] = i


def _plain(node: Node) -> Any:
    """A comparable plain-Python view of a node (scalars as their stripped source text)."""
    if isinstance(node, MappingNode):
        return {str(_plain(k)): _plain(v) for k, v in node.value}
    if isinstance(node, SequenceNode):
        return [_plain(v) for v in node.value]
    return None if _is_null(node) else str(node.value).strip()


def _has_content(plain: Any) -> bool:
    if isinstance(plain, dict):
        return any(_has_content(v) for v in plain.values())
    if isinstance(plain, list):
        return any(_has_content(v) for v in plain)
    return isinstance(plain, str) and bool(plain) and not _WHOLE_PLACEHOLDER.match(plain)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


def _describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    names = {"null": "an empty value", "str": "a string", "int": "a number", "float": "a number", "bool": "true/false"}
    return names.get(node.tag.removeprefix(_TAG), f"a {node.tag} value")


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
