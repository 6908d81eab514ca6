"""Rules about a knowledge leaf's document reference shared by validation and resolution.

Kept apart so the validator and :mod:`datapipe.taxonomy.documents` refuse exactly the same
patterns and agree on which ``repo`` values are local.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlparse

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCP_LIKE = re.compile(r"^[^/\\@]+@[^/\\:]+:")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")

PATTERN_RULE = "patterns are globs relative to the repository root and must stay inside it"


def is_remote_repo(repo: str) -> bool:
    """Whether ``repo`` names a repository on another machine (a URL or ``user@host:path``).

    ``file://`` URLs and plain paths are local.
    """
    repo = repo.strip()
    if repo.lower().startswith("file://"):
        return False
    return bool(_URL.match(repo) or _SCP_LIKE.match(repo))


def local_repo_path(repo: str, leaf_dir: Path) -> Path:
    """The filesystem path of a local ``repo`` value; relative paths are relative to the leaf's folder."""
    repo = repo.strip()
    if repo.lower().startswith("file://"):
        return Path(unquote(urlparse(repo).path))
    path = Path(repo).expanduser()
    return path if path.is_absolute() else leaf_dir / path


def normalise_repo_url(url: str) -> str:
    """The form used to match a leaf's ``repo`` against repo-map keys: no trailing ``/`` or ``.git``."""
    url = url.strip().rstrip("/")
    if url.endswith(".git"):
        url = url[: -len(".git")]
    return url.rstrip("/")


def is_commit_sha(commit: str) -> bool:
    """Whether ``commit`` is an abbreviated or full commit SHA (7 to 40 hex digits)."""
    return bool(_COMMIT.match(commit))


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` could reach outside the repository, or None when it stays inside.

    Patterns are globs relative to the repository root: absolute paths, home-relative paths
    and ``..`` components are refused before anything touches the filesystem.
    """
    if "\x00" in pattern:
        return "contains a NUL character"
    if pattern.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(pattern):
        return "is an absolute path"
    if pattern.startswith("~"):
        return "is a home-relative path"
    if any(part == ".." for part in re.split(r"[\\/]+", pattern)):
        return "climbs out of the repository with '..'"
    return None
