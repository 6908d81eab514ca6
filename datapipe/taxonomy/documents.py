"""Resolving a knowledge leaf's ``document`` reference to local files, without the network.

Where the documents come from:

* ``repo`` is a URL: it must be mapped to a local clone or git bundle through ``repo_map``
  (what an offline or air-gapped user configures); datapipe never fetches.
* ``repo`` is a local path (relative to the leaf's folder, absolute, or ``file://``):
  with ``commit`` it must be a git repository or bundle; without ``commit`` it is used as a
  plain folder, as it is on disk (git is not involved, even if the folder is inside a checkout).
* ``folder`` (InstructLab's key for local documents) is always a plain folder.

Git sources are cloned with ``git clone`` from the local path into ``cache_dir`` (one clone per
source and commit, reused on later runs) and checked out at exactly the pinned commit. Patterns
are globs relative to the repository root; a pattern or a matched symlink that leads outside it
is refused.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from datapipe.errors import ConfigError, MissingDependencyError
from datapipe.taxonomy.models import DocumentRef, Leaf
from datapipe.taxonomy.refs import PATTERN_RULE, is_remote_repo, local_repo_path, normalise_repo_url, pattern_problem

_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ALLOW_PROTOCOL": "file",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ADVICE": "0",
}
_GIT_SAFETY = ["-c", "protocol.allow=never", "-c", "protocol.file.allow=always", "-c", "advice.detachedHead=false"]


def resolve_documents(leaf: Leaf, repo_map: dict[str, Path] | None, cache_dir: Path) -> list[Path]:
    """The document files of a knowledge leaf, sorted, at the leaf's pinned commit.

    Raises :class:`~datapipe.errors.ConfigError` when the leaf has no document, the repository
    is remote and not in ``repo_map``, the commit is not in the repository, a pattern matches
    nothing, or a pattern or symlink leads outside the repository.
    """
    doc = leaf.document
    if doc is None:
        raise ConfigError(f"{leaf.path}: {leaf.kind} leaf {leaf.taxonomy_path!r} has no document to resolve")
    for pattern in doc.patterns:
        reason = pattern_problem(pattern)
        if reason:
            raise ConfigError(f"{leaf.path}: document pattern {pattern!r} {reason}; {PATTERN_RULE}")
    source, commit = _source(leaf, doc, repo_map)
    if commit is None:
        if not source.is_dir():
            raise ConfigError(
                f"{leaf.path}: document folder {source} does not exist or is not a folder; "
                "fix the path (relative paths start at the leaf's folder) or set document.commit for a git bundle"
            )
        root = source.resolve()
        where = f"folder {root}"
    else:
        root = _checkout(leaf, source, commit, Path(cache_dir).absolute())
        where = f"{source} at commit {commit}"
    return _match(leaf, root, doc.patterns, where)


def _source(leaf: Leaf, doc: DocumentRef, repo_map: dict[str, Path] | None) -> tuple[Path, str | None]:
    """The local path holding the documents and the commit to check out (None for a plain folder)."""
    if doc.folder is not None:
        return local_repo_path(doc.folder, leaf.leaf_dir), None
    if doc.repo is None:
        raise ConfigError(f"{leaf.path}: document has neither repo nor folder")
    mapped = _lookup(doc.repo, repo_map)
    if mapped is not None:
        if doc.commit is None:
            raise ConfigError(f"{leaf.path}: document.commit is missing; a git repository needs a pinned commit")
        return Path(mapped).expanduser(), doc.commit
    if is_remote_repo(doc.repo):
        raise ConfigError(
            f"{leaf.path}: document.repo {doc.repo} is a remote repository and datapipe does not use the network; "
            "clone it (or get a git bundle of it) and map the URL to that local path in the taxonomy repo map "
            f"(e.g. {doc.repo}: /path/to/clone-or.bundle)"
        )
    return local_repo_path(doc.repo, leaf.leaf_dir), doc.commit


def _lookup(repo: str, repo_map: dict[str, Path] | None) -> Path | None:
    if not repo_map:
        return None
    wanted = normalise_repo_url(repo)
    for url, path in repo_map.items():
        if normalise_repo_url(url) == wanted:
            return Path(path)
    return None


def _git(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if shutil.which("git") is None:
        raise MissingDependencyError("git (needed to resolve taxonomy documents)", "apt-get install git")
    env = {**os.environ, **_GIT_ENV}
    return subprocess.run(
        ["git", *_GIT_SAFETY, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600
    )


def _git_failure(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"git exited with status {proc.returncode}"


def _is_git_source(path: Path) -> bool:
    """A git bundle file, a working tree with ``.git``, or a bare repository."""
    if path.is_file():
        with path.open("rb") as fh:
            head = fh.read(32)
        return head.startswith(b"# v") and b" git bundle" in head
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


def _checkout(leaf: Leaf, source: Path, commit: str, cache_dir: Path) -> Path:
    """A clone of ``source`` in ``cache_dir`` checked out at ``commit``, reused when already there."""
    source = source.resolve()
    if not source.exists():
        raise ConfigError(
            f"{leaf.path}: document repository {source} does not exist; point the repo map or document.repo at a "
            "local clone or git bundle"
        )
    if not _is_git_source(source):
        raise ConfigError(
            f"{leaf.path}: {source} is not a git repository or bundle, but document.commit is set; "
            "remove commit to use it as a plain folder, or point at a git clone/bundle"
        )
    key = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", source.stem)[:40] or "repo"
    target = cache_dir / f"{name}-{key}" / commit.lower()
    if target.is_dir() and _at_commit(target, commit):
        _reset(leaf, target, commit)
        return target
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        proc = _git(["clone", "--quiet", "--no-checkout", str(source), str(tmp)])
        if proc.returncode != 0:
            raise ConfigError(f"{leaf.path}: git clone of {source} failed: {_git_failure(proc)}")
        if _git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=tmp).returncode != 0:
            raise ConfigError(
                f"{leaf.path}: commit {commit} is not in {source}; the clone or bundle is older than the leaf "
                "(update it) or document.commit is wrong"
            )
        _reset(leaf, tmp, commit)
        try:
            tmp.rename(target)
        except OSError:
            if not (target.is_dir() and _at_commit(target, commit)):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _at_commit(repo: Path, commit: str) -> bool:
    proc = _git(["rev-parse", "HEAD"], cwd=repo)
    return proc.returncode == 0 and proc.stdout.strip().lower().startswith(commit.lower())


def _reset(leaf: Leaf, repo: Path, commit: str) -> None:
    """Check out exactly ``commit``, discarding any local edits in the cached clone."""
    proc = _git(["checkout", "--quiet", "--force", "--detach", commit], cwd=repo)
    if proc.returncode != 0:
        raise ConfigError(f"{leaf.path}: git checkout of {commit} failed: {_git_failure(proc)}")
    _git(["clean", "--quiet", "-ffdx"], cwd=repo)


def _match(leaf: Leaf, root: Path, patterns: list[str], where: str) -> list[Path]:
    real_root = root.resolve()
    found: set[Path] = set()
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, root_dir=root, recursive=True))
        files: list[Path] = []
        for rel in matches:
            path = root / rel
            real = path.resolve()
            if not real.is_relative_to(real_root):
                raise ConfigError(
                    f"{leaf.path}: document pattern {pattern!r} matches {rel}, which leads outside the repository "
                    f"(to {real}); refusing it"
                )
            if ".git" in Path(rel).parts or not real.is_file():
                continue
            files.append(path)
        if not files:
            raise ConfigError(f"{leaf.path}: document pattern {pattern!r} matches no file in {where}")
        found.update(files)
    return sorted(found)
