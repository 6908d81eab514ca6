"""Near-duplicate (MinHash LSH, datasketch) and semantic (embedding cosine) deduplication.

Both keep the first sample of a cluster (input order) as its representative and reject the
others as ``duplicate_of:<representative id>``; the detail says which strength found it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from datapipe.config import NearDedupConfig, SemanticDedupConfig
from datapipe.filter import normalise
from datapipe.records import Reject, Sample


def _text(s: Sample) -> str:
    return f"{s.instruction}\n{s.response}"


def shingles(text: str, n: int) -> list[bytes]:
    words = normalise(text).split()
    if len(words) <= n:
        return [" ".join(words).encode()] if words else [b""]
    return list({" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)})


def near_duplicates(
    samples: list[Sample], cfg: NearDedupConfig, texts: Callable[[Sample], str] = _text
) -> dict[str, tuple[str, float]]:
    """sample id -> (representative id, estimated Jaccard) for every near-duplicate found."""
    from datasketch import MinHash, MinHashLSH

    if len(samples) < 2:
        return {}
    hashes = MinHash.bulk([shingles(texts(s), cfg.shingle_words) for s in samples], num_perm=cfg.num_perm)
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    dupes: dict[str, tuple[str, float]] = {}
    by_id: dict[str, Any] = {}
    for s, m in zip(samples, hashes, strict=True):
        best: tuple[str, float] | None = None
        for cand in lsh.query(m):
            j = m.jaccard(by_id[cand])
            if j >= cfg.threshold and (best is None or j > best[1]):
                best = (cand, j)
        if best is not None:
            dupes[s.id] = best
            continue  # representatives only: a cluster is not chained through its members
        lsh.insert(s.id, m)
        by_id[s.id] = m
    return dupes


def semantic_duplicates(
    samples: list[Sample], cfg: SemanticDedupConfig, model: Any, texts: Callable[[Sample], str] = _text
) -> dict[str, tuple[str, float]]:
    """sample id -> (representative id, cosine) for samples too close to an earlier kept one."""
    if len(samples) < 2:
        return {}
    emb = model.encode(
        [texts(s) for s in samples],
        batch_size=cfg.batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    emb = np.asarray(emb, dtype=np.float32)
    n = len(samples)
    kept = np.zeros(n, dtype=bool)
    dupes: dict[str, tuple[str, float]] = {}
    block = 1024
    for start in range(0, n, block):
        end = min(n, start + block)
        sims = emb[start:end] @ emb[:end].T  # one BLAS call per block; rows resolved in input order below
        for r in range(end - start):
            i = start + r
            row = sims[r, :i]
            hits = np.flatnonzero(kept[:i] & (row >= cfg.threshold))
            if hits.size:
                j = int(hits[np.argmax(row[hits])])
                dupes[samples[i].id] = (samples[j].id, float(row[j]))
            else:
                kept[i] = True
    return dupes


def as_rejects(samples: list[Sample], dupes: dict[str, tuple[str, float]], how: str) -> list[Reject]:
    return [
        Reject(
            stage="filter",
            record_id=s.id,
            reason=f"duplicate_of:{dupes[s.id][0]}",
            source_path=s.provenance.source_path,
            detail=f"{how} duplicate (similarity {dupes[s.id][1]:.3f})",
            payload=s.model_dump_json(),
        )
        for s in samples
        if s.id in dupes
    ]
