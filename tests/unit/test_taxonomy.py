"""Taxonomy leaves: the real InstructLab files, the validator's messages, document resolution with real git."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datapipe.errors import ConfigError
from datapipe.taxonomy import (
    KnowledgeSeed,
    Leaf,
    find_leaf_files,
    iter_leaves,
    load_leaf,
    render_tree,
    resolve_documents,
    validate_file,
    validate_tree,
)
from datapipe.taxonomy.cli import taxonomy_app

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL = SHARED / "taxonomy-instructlab"
TEMPLATE = REAL / "docs" / "template_qna.yaml"
BUNDLE = SHARED / "taxonomy-instructlab-docs" / "Summit_knowledge.bundle"
CHICKADEE = REAL / "knowledge/science/animals/birds/black_capped_chickadee/qna.yaml"
SUMMIT_URL = "https://github.com/juliadenham/Summit_knowledge"
PINNED = "5f7158a5ce83c4ff493bfe341fe31ecad64ff697"
CHICKADEE_DELETED = "05ca610"  # the commit before PINNED, where chickadee.md had been deleted
EXAMPLES = REPO / "taxonomies"

REAL_LEAVES = sorted(p.parent.relative_to(REAL).as_posix() for p in REAL.rglob("qna.yaml")) if REAL.is_dir() else []


def _leaf(path: Path = CHICKADEE, root: Path = REAL) -> Leaf:
    return load_leaf(path, root)


def _with_document(leaf: Leaf, **changes: object) -> Leaf:
    assert leaf.document is not None
    return leaf.model_copy(update={"document": leaf.document.model_copy(update=changes)})


def _copy_leaf(tmp_path: Path, source: Path, rel: str, edit: tuple[str, str] | None = None) -> Path:
    target = tmp_path / "tax" / rel / "qna.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    text = source.read_text(encoding="utf-8")
    if edit is not None:
        assert edit[0] in text, f"test setup: {edit[0]!r} not in {source}"
        text = text.replace(edit[0], edit[1], 1)
    target.write_text(text, encoding="utf-8")
    return target


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_real_taxonomy_has_16_leaves_and_all_validate() -> None:
    files = find_leaf_files(REAL)
    assert len(files) == 16
    assert validate_tree(REAL) == []
    kinds = Counter(leaf.kind for leaf in iter_leaves(REAL))
    assert kinds == {"knowledge": 2, "compositional_skill": 3, "foundational_skill": 11}


@pytest.mark.parametrize("taxonomy_path", REAL_LEAVES, ids=REAL_LEAVES)
def test_each_real_leaf_loads(taxonomy_path: str) -> None:
    leaf = load_leaf(REAL / taxonomy_path / "qna.yaml", REAL)
    assert leaf.taxonomy_path == taxonomy_path
    assert leaf.created_by
    assert leaf.seed_count >= (5 if leaf.version >= 2 else 1)
    if leaf.kind == "knowledge":
        assert leaf.version == 3 and leaf.document is not None and leaf.domain and leaf.document_outline
        assert all(len(s.questions_and_answers) >= 3 and s.context for s in leaf.knowledge_seeds())
    else:
        assert leaf.task_description and leaf.document is None
        assert all(s.question and s.answer for s in leaf.skill_seeds())


def test_chickadee_leaf_fields() -> None:
    leaf = _leaf()
    assert leaf.taxonomy_path == "knowledge/science/animals/birds/black_capped_chickadee"
    assert (leaf.kind, leaf.version, leaf.grounded, leaf.created_by) == ("knowledge", 3, False, "juliadenham")
    assert leaf.domain == "animals"
    assert leaf.seed_count == 5 and leaf.qna_count == 15
    first = leaf.seed_examples[0]
    assert isinstance(first, KnowledgeSeed)
    assert first.context.startswith("The **black-capped chickadee**")
    assert first.questions_and_answers[0].question == "Where do black-capped chickadees live?"
    assert leaf.document is not None
    assert (leaf.document.repo, leaf.document.commit, leaf.document.patterns) == (SUMMIT_URL, PINNED, ["chickadee.md"])


@pytest.mark.parametrize(
    ("taxonomy_path", "kind", "version", "grounded"),
    [
        ("compositional_skills/grounded/linguistics/inclusion", "compositional_skill", 3, True),
        ("compositional_skills/linguistics/synonyms", "compositional_skill", 3, False),
        ("foundational_skills/reasoning/theory_of_mind", "foundational_skill", 1, False),
    ],
    ids=["grounded-skill", "ungrounded-skill", "legacy-foundational-without-version"],
)
def test_skill_kinds_and_grounding(taxonomy_path: str, kind: str, version: int, grounded: bool) -> None:
    leaf = load_leaf(REAL / taxonomy_path / "qna.yaml", REAL)
    assert (leaf.kind, leaf.version, leaf.grounded) == (kind, version, grounded)
    assert all((s.context is not None) == grounded for s in leaf.skill_seeds())


def test_template_fails_with_path_line_messages() -> None:
    problems = validate_file(TEMPLATE, REAL)
    assert problems
    for problem in problems:
        assert str(problem).startswith(f"{TEMPLATE}:{problem.line}: ")
    by_line = {(p.line, p.message.split(" ", 1)[0]) for p in problems}
    expected = {
        (2, "domain"),
        (3, "created_by"),
        (5, "seed_examples[0].context"),
        (26, "seed_examples[2].questions_and_answers[0].question"),
        (34, "seed_examples[3].questions_and_answers"),
        (46, "document_outline"),
        (49, "document.repo"),
        (50, "document.commit"),
        (52, "document.patterns[0]"),
        (56, "document.patterns[4]"),
    }
    assert expected <= by_line, sorted(expected - by_line)
    messages = {(p.line, p.message) for p in problems}
    placeholder = "still holds the template placeholder '<The knowledge domain which is used in prompts to the tea...'"
    assert (2, f"domain {placeholder}; replace it") in messages
    assert (
        34,
        "seed_examples[3].questions_and_answers has 2 question/answer pair(s); each knowledge seed example needs 3",
    ) in messages
    assert (50, "document.commit still holds the template placeholder '<full commit SHA>'; replace it") in messages
    with pytest.raises(ConfigError, match=r"template_qna\.yaml:2: domain"):
        load_leaf(TEMPLATE, REAL)


def test_template_fails_the_cli(tmp_path: Path) -> None:
    leaf = _copy_leaf(tmp_path, TEMPLATE, "knowledge/template")
    result = CliRunner().invoke(taxonomy_app, ["validate", str(tmp_path / "tax")])
    assert result.exit_code == 1
    assert f"{leaf}:3: created_by still holds the template placeholder" in result.stdout
    assert result.stdout.strip().splitlines()[-1].endswith("in 1 of 1 leaves")


def test_yaml_syntax_error_points_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "compositional_skills" / "broken" / "qna.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("version: 3\ncreated_by: me\nseed_examples:\n  - question: what: now\n    answer: x\n")
    problems = validate_file(path, tmp_path)
    assert [(p.line, p.message) for p in problems] == [(4, "YAML syntax error: mapping values are not allowed here")]
    assert str(problems[0]) == f"{path}:4: YAML syntax error: mapping values are not allowed here"


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (("version: 3", "version: 2"), 2, "version 2 is not supported for knowledge leaves"),
        (("version: 3\n", ""), 1, "required key 'version' is missing"),
        (("domain: animals", "domain: animals\ncolour: grey"), 4, "unknown key 'colour'"),
        (("domain: animals", "domain: animals\ndomian: birds"), 4, "did you mean 'domain'?"),
        (("domain: animals", "domain: 42"), 3, "domain must be a string, got a number"),
        (("domain: animals", "domain: animals\ndomain: birds"), 4, "duplicate key 'domain' (first at line 3)"),
        (("    - chickadee.md", "    - ../chickadee.md"), 189, "'../chickadee.md' climbs out of the repository"),
        (("    - chickadee.md", "    - /etc/passwd"), 189, "'/etc/passwd' is an absolute path"),
        (("commit: 5f7158a5ce83c4ff493bfe341fe31ecad64ff697", "commit: main"), 187, "must be a commit SHA"),
        (("  commit: 5f7158a5ce83c4ff493bfe341fe31ecad64ff697\n", ""), 186, "document.commit is missing"),
        (("document_outline: |", "document_outlines: |"), 1, "required key 'document_outline' is missing"),
        (("domain: animals", "domain: !!python/object/apply:os.getcwd []"), 3, "unsupported YAML tag"),
        (("question: What do black-capped chickadees eat?", "question: 2024"), 136, "must be a string, got a number"),
    ],
    ids=[
        "old-version",
        "no-version",
        "unknown-key",
        "misspelt-key",
        "wrong-type",
        "duplicate-key",
        "dotdot-pattern",
        "absolute-pattern",
        "branch-not-commit",
        "url-without-commit",
        "missing-required",
        "python-tag",
        "question-not-string",
    ],
)
def test_broken_chickadee_variants(tmp_path: Path, edit: tuple[str, str], line: int, message: str) -> None:
    path = _copy_leaf(tmp_path, CHICKADEE, "knowledge/birds/chickadee", edit)
    problems = validate_file(path, tmp_path / "tax")
    assert any(p.line == line and message in p.message for p in problems), "\n".join(map(str, problems))
    with pytest.raises(ConfigError):
        load_leaf(path, tmp_path / "tax")


def test_knowledge_needs_five_seed_examples(tmp_path: Path) -> None:
    text = CHICKADEE.read_text(encoding="utf-8")
    cut = text.index("  - context: |\n      Black-capped chickadees are primarily subject to predation")
    end = text.index("document_outline:")
    path = tmp_path / "tax" / "knowledge" / "four" / "qna.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text[:cut] + text[end:], encoding="utf-8")
    problems = validate_file(path, tmp_path / "tax")
    assert [(p.line, p.message) for p in problems] == [
        (5, "seed_examples has 4 seed example(s); knowledge leaves need at least 5")
    ]


def test_mixed_context_skill_is_refused(tmp_path: Path) -> None:
    source = REAL / "compositional_skills/grounded/linguistics/writing/rewriting/qna.yaml"
    edit = ("    context: 'The exponential growth", "    contexts: 'The exponential growth")
    path = _copy_leaf(tmp_path, source, "compositional_skills/rewriting", edit)
    messages = [p.message for p in validate_file(path, tmp_path / "tax")]
    assert any("unknown key 'seed_examples[1].contexts'" in m for m in messages)
    assert any("4 of 5 seed examples have a context" in m for m in messages)


def test_resolve_chickadee_from_the_bundle_at_the_pinned_commit(tmp_path: Path) -> None:
    leaf = _leaf()
    files = resolve_documents(leaf, {SUMMIT_URL: BUNDLE}, tmp_path / "cache")
    assert [f.name for f in files] == ["chickadee.md"]
    assert files[0].is_relative_to(tmp_path / "cache")
    assert "Poecile atricapillus" in files[0].read_text(encoding="utf-8")
    assert _git(files[0].parent, "rev-parse", "HEAD") == PINNED
    files[0].write_text("edited in the cache", encoding="utf-8")
    again = resolve_documents(leaf, {SUMMIT_URL + ".git/": BUNDLE}, tmp_path / "cache")
    assert again == files
    assert "Poecile atricapillus" in again[0].read_text(encoding="utf-8")


def test_resolve_fails_clearly_for_missing_commit_or_file(tmp_path: Path) -> None:
    leaf = _leaf()
    with pytest.raises(ConfigError, match="commit 0123456789abcdef is not in"):
        resolve_documents(_with_document(leaf, commit="0123456789abcdef"), {SUMMIT_URL: BUNDLE}, tmp_path)
    with pytest.raises(ConfigError, match=r"'chickadee\.md' matches no file in .* at commit 05ca610"):
        resolve_documents(_with_document(leaf, commit=CHICKADEE_DELETED), {SUMMIT_URL: BUNDLE}, tmp_path)


def test_remote_repo_without_a_local_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not use the network.*repo map"):
        resolve_documents(_leaf(), None, tmp_path)
    with pytest.raises(ConfigError, match="does not use the network"):
        resolve_documents(_leaf(), {"https://github.com/someone/else": BUNDLE}, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("pattern", ["../chickadee.md", "/etc/passwd", "docs/../../x.md", "~/notes.md"])
def test_resolve_refuses_escaping_patterns(tmp_path: Path, pattern: str) -> None:
    leaf = _with_document(_leaf(), patterns=[pattern])
    with pytest.raises(ConfigError, match="must stay inside"):
        resolve_documents(leaf, {SUMMIT_URL: BUNDLE}, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_resolve_refuses_a_symlink_leading_outside_the_repo(tmp_path: Path) -> None:
    outside = tmp_path / "secret.md"
    outside.write_text("not part of the repository")
    repo = tmp_path / "docs-repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "fine.md").write_text("# fine\n")
    (repo / "sneaky.md").symlink_to(outside)
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "docs")
    commit = _git(repo, "rev-parse", "HEAD")
    leaf = _with_document(_leaf(), repo=str(repo), commit=commit, patterns=["fine.md"])
    assert [f.name for f in resolve_documents(leaf, None, tmp_path / "cache")] == ["fine.md"]
    with pytest.raises(ConfigError, match="leads outside the repository"):
        resolve_documents(_with_document(leaf, patterns=["*.md"]), None, tmp_path / "cache")


def test_local_git_repo_by_relative_path_and_plain_folder(tmp_path: Path) -> None:
    clone = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", str(BUNDLE), str(clone)], check=True, capture_output=True)
    leaf_path = _copy_leaf(tmp_path, CHICKADEE, "knowledge/birds/chickadee", (SUMMIT_URL, "../../../../mirror"))
    leaf = load_leaf(leaf_path, tmp_path / "tax")
    files = resolve_documents(leaf, None, tmp_path / "cache")
    assert [f.name for f in files] == ["chickadee.md"] and files[0].is_relative_to(tmp_path / "cache")
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "notes.md").write_text("plain folder")
    plain = _with_document(leaf, repo=str(folder), commit=None, patterns=["*.md"])
    assert resolve_documents(plain, None, tmp_path / "cache") == [folder.resolve() / "notes.md"]
    with pytest.raises(ConfigError, match="not a git repository or bundle"):
        resolve_documents(_with_document(plain, commit=PINNED), None, tmp_path / "cache")


def test_example_taxonomy_validates_and_resolves(tmp_path: Path) -> None:
    assert validate_tree(EXAMPLES) == []
    leaves = {leaf.taxonomy_path: leaf for leaf in iter_leaves(EXAMPLES)}
    assert set(leaves) == {
        "compositional_skills/grounded/writing/passage_to_slide_bullets",
        "compositional_skills/writing/summarise_slide",
        "knowledge/law/bankruptcy/us_trustee_handbook",
    }
    assert leaves["compositional_skills/grounded/writing/passage_to_slide_bullets"].grounded
    assert not leaves["compositional_skills/writing/summarise_slide"].grounded
    handbook = leaves["knowledge/law/bankruptcy/us_trustee_handbook"]
    assert handbook.document is not None and handbook.document.commit is None
    assert resolve_documents(handbook, None, tmp_path) == [REPO / "examples" / "docs" / "handbook-1p.docx"]
    assert not any(tmp_path.iterdir()), "a plain folder is used in place, not cached"


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(taxonomy_app, ["validate", str(REAL)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == "16 leaves valid, 0 problems"
    assert runner.invoke(taxonomy_app, ["validate", str(EXAMPLES)]).exit_code == 0
    assert runner.invoke(taxonomy_app, ["validate", str(TEMPLATE)]).exit_code == 1
    assert runner.invoke(taxonomy_app, ["validate", str(tmp_path / "missing")]).exit_code == 2
    (tmp_path / "empty").mkdir()
    assert runner.invoke(taxonomy_app, ["validate", str(tmp_path / "empty")]).exit_code == 1


def test_show_lists_kinds_and_counts(tmp_path: Path) -> None:
    text = render_tree(REAL)
    assert "16 leaves: 3 compositional_skill, 11 foundational_skill, 2 knowledge" in text
    assert "black_capped_chickadee  knowledge  v3  5 seeds, 15 Q&A" in text
    assert "inclusion  compositional_skill (grounded)  v3  6 seeds" in text
    shutil.copytree(EXAMPLES, tmp_path / "tax")
    _copy_leaf(tmp_path, TEMPLATE, "knowledge/template")
    result = CliRunner().invoke(taxonomy_app, ["show", str(tmp_path / "tax")])
    assert result.exit_code == 0
    assert "INVALID" in result.stdout and "us_trustee_handbook" in result.stdout


def test_alias_bomb_leaf_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    leaf = tmp_path / "compositional_skills" / "bomb" / "qna.yaml"
    leaf.parent.mkdir(parents=True)
    lines = ["version: 2", "created_by: me", "task_description: laughs", "l0: &l0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    leaf.write_text("\n".join(lines) + "\nseed_examples: *l8\n")
    problems = validate_file(leaf, tmp_path)
    assert [p.message for p in problems] == [
        "anchors and aliases (&name, *name) expand this to more than 100000 values "
        "(a YAML alias bomb); write the values out instead"
    ]
    assert str(problems[0]).startswith(f"{leaf}:")
