"""Deterministic train/validation split by a stable hash of the record id.

A record's split depends on its own id and the train fraction only: re-exports, added or
removed records, other formats and other machines never move it. Raising the fraction
only moves records from validation to train, never the other way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

SPLITS = ("train", "validation")
_SCALE = float(1 << 64)


def split_point(record_id: str) -> float:
    """The id's place in [0, 1): the first 8 bytes of SHA-256 of the id, read as a fraction of 2^64."""
    return int.from_bytes(hashlib.sha256(record_id.encode("utf-8")).digest()[:8], "big") / _SCALE


def split_of(record_id: str, train_fraction: float) -> str:
    """``train`` when the id's split point is below ``train_fraction``, else ``validation``."""
    if train_fraction >= 1.0:
        return "train"
    return "train" if split_point(record_id) < train_fraction else "validation"


def train_mask(record_ids: Sequence[str], train_fraction: float) -> list[bool]:
    """``split_of(id) == "train"`` for many ids (the same rule, without a call per id)."""
    if train_fraction >= 1.0:
        return [True] * len(record_ids)
    sha, frombytes = hashlib.sha256, int.from_bytes
    return [frombytes(sha(i.encode("utf-8")).digest()[:8], "big") / _SCALE < train_fraction for i in record_ids]
