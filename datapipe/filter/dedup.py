"""Near-duplicate (MinHash LSH, datasketch) and semantic (embedding cosine) deduplication.

Both keep the first sample of a cluster (input order) as its representative and reject the
others as ``duplicate_of:<representative id>``; the detail says which strength found it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from datapipe.config import NearDedupConfig, SemanticDedupConfig
from datapipe.errors import MissingDependencyError
from datapipe.filter import batch_check, normalise, sample_reject
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
    order = {s.id: i for i, s in enumerate(samples)}
    for s, m in zip(samples, hashes, strict=True):
        best: tuple[str, float] | None = None
        for cand in lsh.query(m):
            j = m.jaccard(by_id[cand])
            better = best is None or j > best[1] or (j == best[1] and order[cand] < order[best[0]])
            if j >= cfg.threshold and better:  # ties: the earliest sample, so the result is deterministic
                best = (cand, j)
        if best is not None:
            dupes[s.id] = best
            continue  # representatives only: a cluster is not chained through its members
        lsh.insert(s.id, m)
        by_id[s.id] = m
    return dupes


# Partitioned near-dedup: the same result as near_duplicates, computed in three steps whose first two
# run as independent tasks (locally, or as Ray tasks), so no process needs every sample:
#   1. signatures: per slice of samples, MinHash signatures cut into LSH bands; each (band, band hash)
#      is routed to a partition by its hash;
#   2. buckets: per partition, samples that share a band bucket are candidate pairs; each pair's
#      estimated Jaccard is checked there, and only pairs over the threshold leave the task;
#   3. resolve: one pass over the (sparse) pairs in input order keeps the first sample of each
#      cluster and maps the others to their most similar kept one -- exactly what near_duplicates does.
# Memory: step 1 holds a slice, step 2 a partition's band entries, step 3 the pairs over the threshold.

MapFn = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def _local_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(x) for x in items]


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) as datasketch's MinHashLSH picks them for this threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return int(lsh.b), int(lsh.r)


def band_entries(job: tuple[int, list[str], int, int, int, int, int]) -> list[list[tuple[int, bytes, int, bytes]]]:
    """Step 1 for one slice: per partition, the entries (band, band bytes, sample index, signature bytes)."""
    from datasketch import MinHash

    start, texts, shingle_words, num_perm, bands, rows, partitions = job
    out: list[list[tuple[int, bytes, int, bytes]]] = [[] for _ in range(partitions)]
    hashes = MinHash.bulk([shingles(t, shingle_words) for t in texts], num_perm=num_perm)
    for offset, m in enumerate(hashes):
        sig = np.asarray(m.hashvalues, dtype=np.uint64)
        blob = sig.tobytes()
        for b in range(bands):
            key = sig[b * rows : (b + 1) * rows].tobytes()
            part = int.from_bytes(hashlib.blake2b(bytes([b]) + key, digest_size=8).digest(), "little") % partitions
            out[part].append((b, key, start + offset, blob))
    return out


def bucket_pairs(job: tuple[list[tuple[int, bytes, int, bytes]], float]) -> list[tuple[int, int, float]]:
    """Step 2 for one partition: (later index, earlier index, estimated Jaccard) over the threshold."""
    entries, threshold = job
    buckets: dict[tuple[int, bytes], list[tuple[int, bytes]]] = {}
    for band, key, idx, blob in entries:
        buckets.setdefault((band, key), []).append((idx, blob))
    pairs: dict[tuple[int, int], float] = {}
    for members in buckets.values():
        if len(members) < 2:
            continue
        members.sort()
        sigs = [np.frombuffer(blob, dtype=np.uint64) for _, blob in members]
        for a in range(1, len(members)):
            for c in range(a):
                pair = (members[a][0], members[c][0])
                if pair not in pairs:
                    j = float(np.count_nonzero(sigs[a] == sigs[c])) / len(sigs[a])
                    if j >= threshold:
                        pairs[pair] = j
    return [(i, k, j) for (i, k), j in pairs.items()]


def resolve_clusters(n: int, pairs: list[tuple[int, int, float]]) -> dict[int, tuple[int, float]]:
    """Step 3: index -> (representative index, Jaccard), first-kept-wins in input order."""
    earlier: dict[int, list[tuple[int, float]]] = {}
    for i, k, j in pairs:
        earlier.setdefault(i, []).append((k, j))
    kept = np.ones(n, dtype=bool)
    dupes: dict[int, tuple[int, float]] = {}
    for i in sorted(earlier):
        best: tuple[int, float] | None = None
        for k, j in earlier[i]:
            if kept[k] and (best is None or j > best[1] or (j == best[1] and k < best[0])):
                best = (k, j)
        if best is not None:
            dupes[i] = best
            kept[i] = False
    return dupes


def near_duplicates_partitioned(
    samples: list[Sample],
    cfg: NearDedupConfig,
    partitions: int = 4,
    slice_size: int = 10_000,
    map_fn: MapFn = _local_map,
    texts: Callable[[Sample], str] = _text,
) -> dict[str, tuple[str, float]]:
    """near_duplicates as independent tasks run through ``map_fn`` (e.g. one Ray task per slice/partition)."""
    if len(samples) < 2:
        return {}
    bands, rows = lsh_bands(cfg.threshold, cfg.num_perm)
    jobs = [
        (start, [texts(s) for s in samples[start : start + slice_size]], cfg.shingle_words, cfg.num_perm)
        + (bands, rows, partitions)
        for start in range(0, len(samples), slice_size)
    ]
    per_slice = map_fn(band_entries, jobs)
    per_partition = [[e for sl in per_slice for e in sl[p]] for p in range(partitions)]
    del per_slice
    pairs = [pair for part in map_fn(bucket_pairs, [(e, cfg.threshold) for e in per_partition]) for pair in part]
    dupes = resolve_clusters(len(samples), pairs)
    return {samples[i].id: (samples[k].id, j) for i, (k, j) in dupes.items()}


def semantic_duplicates(
    samples: list[Sample], cfg: SemanticDedupConfig, model: Any, texts: Callable[[Sample], str] = _text
) -> dict[str, tuple[str, float]]:
    """sample id -> (representative id, cosine) for samples too close to an earlier kept one."""
    if len(samples) < 2:
        return {}
    return _duplicate_ids(samples, _embed(model, [texts(s) for s in samples], cfg.batch_size), cfg)


def _embed(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    emb = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(emb, dtype=np.float32)


def _duplicate_ids(samples: list[Sample], emb: np.ndarray, cfg: SemanticDedupConfig) -> dict[str, tuple[str, float]]:
    dupes = semantic_duplicates_of(emb, cfg)
    return {samples[i].id: (samples[k].id, c) for i, (k, c) in dupes.items()}


def embed_slice(job: tuple[str | None, str, int, list[str]]) -> np.ndarray:
    """One slice's normalised embeddings (float32), in whatever process runs it: a Ray task loads the embedder
    once per worker process (``load_embedder`` caches it)."""
    from datapipe.chunk import load_embedder

    model, backend, batch_size, texts = job
    return _embed(load_embedder(model, backend), texts, batch_size)


def semantic_duplicates_sliced(
    samples: list[Sample],
    cfg: SemanticDedupConfig,
    model: str | None,
    backend: str,
    map_fn: MapFn = _local_map,
    texts: Callable[[Sample], str] = _text,
) -> dict[str, tuple[str, float]]:
    """semantic_duplicates with the embedding -- nearly all of its cost -- as one task per ``cfg.slice_size``
    samples through ``map_fn`` (e.g. Ray tasks); the pairs are then found over all embeddings here, as one
    index (the rows of every slice can pair with any other's, so the search is not split)."""
    if len(samples) < 2:
        return {}
    size = cfg.slice_size or len(samples)
    all_texts = [texts(s) for s in samples]
    jobs = [(model, backend, cfg.batch_size, all_texts[i : i + size]) for i in range(0, len(all_texts), size)]
    return _duplicate_ids(samples, np.concatenate(map_fn(embed_slice, jobs)), cfg)


def semantic_duplicates_of(emb: np.ndarray, cfg: SemanticDedupConfig) -> dict[int, tuple[int, float]]:
    """index -> (representative index, cosine) over L2-normalised embeddings, first-kept-wins in input order:
    exact below ``cfg.ann_min_samples`` rows, through an approximate index from there on."""
    if len(emb) < 2:
        return {}
    if len(emb) < cfg.ann_min_samples:
        return exact_semantic_duplicates(emb, cfg.threshold)
    return resolve_clusters(len(emb), ann_pairs(emb, cfg.threshold, cfg.nprobe))


def exact_semantic_duplicates(emb: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Every pair compared (one BLAS call per block of rows): O(n^2), the reference the index is checked against."""
    n = len(emb)
    kept = np.zeros(n, dtype=bool)
    dupes: dict[int, tuple[int, float]] = {}
    block = 1024
    for start in range(0, n, block):
        end = min(n, start + block)
        sims = emb[start:end] @ emb[:end].T  # rows resolved in input order below
        for r in range(end - start):
            i = start + r
            row = sims[r, :i]
            hits = np.flatnonzero(kept[:i] & (row >= threshold))
            if hits.size:
                j = int(hits[np.argmax(row[hits])])
                dupes[i] = (j, float(row[j]))
            else:
                kept[i] = True
    return dupes


def ann_pairs(emb: np.ndarray, threshold: float, nprobe: int) -> list[tuple[int, int, float]]:
    """(later index, earlier index, cosine) of the pairs at or over ``threshold`` found through an inverted file:
    the rows are clustered (faiss spherical k-means, about 2*sqrt(n) cells), each row lives in its nearest cell
    and is compared with the rows living in its ``nprobe`` nearest cells. A pair is missed only when neither
    row's cell is among the other's ``nprobe`` nearest. The comparisons run cell by cell as one matrix product
    (the queries probing a cell against the rows living there), which BLAS does far faster than faiss'
    per-query IVF scan or range search; cost ~ n * nprobe * n/cells instead of n^2, memory: the embeddings,
    the probe lists and the pairs over the threshold."""
    try:
        import faiss
    except ImportError:
        raise MissingDependencyError(
            "faiss-cpu (semantic dedup of filter.semantic_dedup.ann_min_samples samples or more)",
            "pip install faiss-cpu, or raise filter.semantic_dedup.ann_min_samples",
        ) from None
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, dim = x.shape
    cells = max(1, min(int(2 * np.sqrt(n)), n // 39))
    probes = min(nprobe, cells)
    kmeans = faiss.Kmeans(dim, cells, niter=10, spherical=True, seed=0, max_points_per_centroid=32, verbose=False)
    kmeans.train(x)  # faiss samples the training rows with a fixed seed: the same input, the same cells
    centroids = faiss.IndexFlatIP(dim)
    centroids.add(kmeans.centroids)
    _, near = centroids.search(x, probes)  # (n, probes): a row's cells, nearest first; its home is near[:, 0]
    home_order = np.argsort(near[:, 0], kind="stable")
    home_bounds = np.searchsorted(near[home_order, 0], np.arange(cells + 1))
    flat = near.ravel()
    probe_order = np.argsort(flat, kind="stable")
    probe_rows = probe_order // probes
    probe_bounds = np.searchsorted(flat[probe_order], np.arange(cells + 1))
    later: list[np.ndarray] = []
    earlier: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    for c in range(cells):
        members = home_order[home_bounds[c] : home_bounds[c + 1]]
        queries = probe_rows[probe_bounds[c] : probe_bounds[c + 1]]
        if not len(members) or not len(queries):
            continue
        block = x[queries] @ x[members].T
        q, m = np.nonzero(block >= threshold)
        qi, mi = queries[q], members[m]
        keep = qi != mi
        qi, mi, val = qi[keep], mi[keep], block[q[keep], m[keep]]
        later.append(np.maximum(qi, mi))
        earlier.append(np.minimum(qi, mi))
        sims.append(val)
    if not later:
        return []
    i_all, j_all, s_all = np.concatenate(later), np.concatenate(earlier), np.concatenate(sims)
    _, first = np.unique(i_all.astype(np.int64) * n + j_all, return_index=True)  # a pair seen from both sides
    return [(int(i_all[k]), int(j_all[k]), float(s_all[k])) for k in first]


def as_rejects(samples: list[Sample], dupes: dict[str, tuple[str, float]], how: str) -> list[Reject]:
    return [
        sample_reject(s, f"duplicate_of:{dupes[s.id][0]}", f"{how} duplicate (similarity {dupes[s.id][1]:.3f})")
        for s in samples
        if s.id in dupes
    ]


@batch_check("near_dedup", enabled=lambda ctx: ctx.cfg.filter.near_dedup.enabled, order=400)
def near_dedup(samples: list[Sample], ctx: Any) -> list[Reject]:
    """The batch check ``near_dedup`` (config: ``filter.near_dedup``): MinHash LSH over all samples; with
    ``partitions > 1`` its tasks go through the chain's executor (``ctx.map_fn``, e.g. Ray tasks)."""
    cfg = ctx.cfg.filter.near_dedup
    if cfg.partitions > 1:
        near = near_duplicates_partitioned(samples, cfg, cfg.partitions, cfg.slice_size, ctx.map_fn)
    else:
        near = near_duplicates(samples, cfg)
    return as_rejects(samples, near, "near (MinHash)")


@batch_check("semantic_dedup", enabled=lambda ctx: ctx.cfg.filter.semantic_dedup.enabled, order=500)
def semantic_dedup(samples: list[Sample], ctx: Any) -> list[Reject]:
    """The batch check ``semantic_dedup`` (config: ``filter.semantic_dedup``): embedding cosine over all samples;
    with ``slice_size`` the embedding runs as tasks through the chain's executor (``ctx.map_fn``, e.g. Ray)."""
    cfg = ctx.cfg.filter.semantic_dedup
    if cfg.slice_size:
        found = semantic_duplicates_sliced(samples, cfg, ctx.cfg.chunk.model, ctx.cfg.chunk.backend, ctx.map_fn)
    else:
        found = semantic_duplicates(samples, cfg, ctx.model)
    return as_rejects(samples, found, "semantic (embedding cosine)")
