"""Where a run lives: a local folder (the default) or any fsspec URL (``s3://``, ``gs://``, ``abfs://``, ...).

Paths are ``upath.UPath`` objects: for a local folder that is a real ``pathlib.Path`` (every local behaviour,
atomic renames and file locks included, stays as it was), for a URL a path on the matching fsspec filesystem,
carrying the store's options (``store_options`` in the config, e.g. an ``endpoint_url``) wherever it goes,
Ray workers included. Writes are whole-file: locally through a temporary file renamed into place, on an object
store as one upload (a PUT; s3fs uses a multipart upload above 100 MB), which readers see entire or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from datapipe.errors import ConfigError, MissingDependencyError

_EXTRAS = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "abfs": "adlfs", "az": "adlfs"}


def is_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and "://" in location and not location.startswith("file://")


def is_local(path: Path | UPath) -> bool:
    """A path on this machine's own filesystem (renames are atomic, fcntl locks work)."""
    return isinstance(path, Path) and getattr(path, "protocol", "") in ("", "file", "local")


def as_path(location: str | Path | UPath, options: dict[str, Any] | None = None) -> UPath:
    """The path for ``location``: a path object as it is, a URL with its filesystem options, or a local path
    (``~`` and variables expanded)."""
    if isinstance(location, UPath):
        return location
    if isinstance(location, Path):
        return UPath(location)
    if is_url(str(location)):
        protocol = str(location).split("://", 1)[0]
        try:
            path = UPath(str(location), **(options or {}))
            path.fs  # noqa: B018 - the filesystem is made lazily: make it here, so a missing package shows now
            return path
        except ImportError:
            package = _EXTRAS.get(protocol, f"the fsspec implementation for {protocol}://")
            raise MissingDependencyError(
                f"{package} (run store {protocol}:// URLs)", f"pip install {package}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"store: cannot use {location!r}: {exc}") from None
    text = str(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return UPath(os.path.expandvars(os.path.expanduser(text)))


def local(path: Path | UPath) -> Path:
    """A local UPath as a plain ``pathlib.Path`` (for os calls)."""
    return Path(str(path))


def _tmp(path: Path | UPath) -> Path:
    return local(path).with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes(path: Path | UPath, data: bytes, fsync: bool = False) -> None:
    """Write a whole file so that readers see the old content or the new, never a part."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        path.write_bytes(data)  # one upload: an object appears whole
        return
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, local(path))


def write_table(path: Path | UPath, table: pa.Table, fsync: bool = False) -> None:
    """A parquet file, written whole (see ``write_bytes``)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(path):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path.write_bytes(sink.getvalue().to_pybytes())
        return
    tmp = _tmp(path)
    pq.write_table(table, str(tmp))
    if fsync:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, local(path))


def read_table(path: UPath, columns: list[str] | None = None) -> pa.Table:
    if is_local(path):
        return pq.read_table(str(path), columns=columns)
    with path.open("rb") as fh:
        return pq.read_table(fh, columns=columns)


def remove_tree(path: UPath) -> None:
    if is_local(path):
        import shutil

        shutil.rmtree(local(path))
    else:
        path.fs.rm(path.path, recursive=True)
