"""Atomic file writes for the export folder (local or on a store URL): a reader never sees a half-written file."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from upath import UPath

from datapipe import fsio


def write_bytes(path: Path | UPath, data: bytes) -> None:
    fsio.write_bytes(path if isinstance(path, UPath) else UPath(path), data)


def write_table(path: Path | UPath, table: pa.Table) -> None:
    fsio.write_table(path if isinstance(path, UPath) else UPath(path), table)
