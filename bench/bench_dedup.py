"""Dedup at volume: near-duplicate (MinHash LSH) over 100,000 generated samples and semantic
(embedding cosine) dedup, with wall time and peak memory (RSS growth) for each.

The samples are synthetic question/answer pairs built from a vocabulary of real words, with
10 % planted light edits of earlier samples, so the dedup has real work and a known answer.

Semantic dedup, two parts:
* ``--semantic`` (20,000) samples are embedded for real (``--backend``, default onnx-int8) and
  deduplicated twice on the same embeddings: brute force (every pair) and the approximate index
  (faiss IVF range search, forced on by ``ann_min_samples=0``). Printed: the share of the brute-force
  pairs over the threshold the index finds, and whether the kept/rejected decisions are the same.
* ``--scale`` (200,000) rows through the approximate index alone. With ``--scale-embed`` they are
  generated samples (10 % planted edits, like the others) embedded for real, and the embedding time
  is printed apart from the dedup's (about 10 minutes with ``--backend openvino`` on the 2-core
  development machine). Without it the rows are a quicker stand-in built from the real embeddings
  above: each is a real sample embedding plus isotropic noise (cosine ~0.6 to it, so rows from one
  sample are not duplicates of each other), and 10 % are planted paraphrases of an earlier row
  (cosine 0.85-0.97 to it). Timed: the dedup itself (index, search, resolution), not embedding.

Prints `RESULT bench_dedup ...` last. Targets (issue 5): near-dup of 100k under 60 s; (issue 22):
semantic dedup of 200,000 (beyond embedding) under 30 s, >= 99 % of brute-force pairs on 20,000.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from datapipe.chunk import load_embedder  # noqa: E402
from datapipe.config import NearDedupConfig, SemanticDedupConfig  # noqa: E402
from datapipe.filter.dedup import (  # noqa: E402
    ann_pairs,
    exact_semantic_duplicates,
    near_duplicates,
    semantic_duplicates_of,
)
from datapipe.records import Message, Provenance, Sample  # noqa: E402

WORDS = (
    "club founded stadium season league player goal manager city football team history record match cup final "
    "derby supporters canaries yellow green county river bridge market cathedral castle university library museum "
    "theatre railway station airport harbour village county council election parliament minister budget tax policy "
    "report research paper model layout detection document image text table figure dataset training evaluation"
).split()


def vocabulary() -> list[str]:
    """Distinct words of a real document (the shared corpus), so random texts are not near-identical."""
    src = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "docs" / "norwich-city.txt"
    if src.is_file():
        words = sorted({w.strip(".,;:()[]\"'").lower() for w in src.read_text(encoding="utf-8").split()})
        return [w for w in words if w.isalpha() and len(w) > 2]
    return WORDS


def make_samples(n: int, dup_share: float, seed: int = 0) -> tuple[list[Sample], set[int]]:
    """``n`` samples and the indices of the planted edits among them."""
    rng = random.Random(seed)
    vocab = vocabulary()
    out: list[Sample] = []
    planted: set[int] = set()
    prov = Provenance(
        source_path="bench",
        document_id="d",
        chunk_id="c",
        char_start=0,
        char_end=0,
        pages=[],
        context="",
        teacher_calls=[],
    )
    for i in range(n):
        if out and rng.random() < dup_share:
            src = out[rng.randrange(len(out))]
            words = src.response.split()
            words[rng.randrange(len(words))] = rng.choice(vocab)  # one word changed
            q, a = src.instruction.lower(), " ".join(words)
            planted.add(i)
        else:
            q = " ".join(rng.choice(vocab) for _ in range(10)) + "?"
            a = " ".join(rng.choice(vocab) for _ in range(40)) + "."
        out.append(
            Sample(
                id=f"s{i}",
                kind="instruction",
                instruction=q,
                response=a,
                messages=[Message(role="user", content=q), Message(role="assistant", content=a)],
                provenance=prov,
            )
        )
    return out, planted


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakGrowth:
    """The largest growth of the resident set over its size at entry, sampled every 5 ms from /proc (the
    process' all-time peak, ``ru_maxrss``, hides a step whose peak is lower than an earlier one's)."""

    def __enter__(self) -> PeakGrowth:
        import threading

        self.base = self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())

    @property
    def mb(self) -> float:
        return self.peak - self.base

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._now())

    @staticmethod
    def _now() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    import numpy as np
    from loadcheck import load_at_start, report_load

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--near", type=int, default=100_000, help="near-dup samples (0: skip)")
    ap.add_argument("--semantic", type=int, default=20_000, help="embedded samples: brute force vs index")
    ap.add_argument("--scale", type=int, default=200_000, help="rows through the index alone (0: skip)")
    ap.add_argument("--backend", choices=["onnx-int8", "openvino", "torch"], default="onnx-int8")
    ap.add_argument(
        "--scale-embed",
        action="store_true",
        help="embed the --scale samples for real (generated like the others, 10%% planted edits) instead of "
        "building stand-in rows; the embedding time is printed apart from the dedup's",
    )
    args = ap.parse_args()
    load_start = load_at_start()

    near_s = near_mb = 0.0
    near: dict = {}
    planted = 0
    if args.near:
        samples, planted_at = make_samples(args.near, 0.1)
        planted = len(planted_at)
        base = rss_mb()
        t0 = time.perf_counter()
        near = near_duplicates(samples, NearDedupConfig())
        near_s = time.perf_counter() - t0
        near_mb = rss_mb() - base
        del samples
        print(
            f"near-dup: {args.near} samples, {planted} planted edits, {len(near)} found in {near_s:.1f} s, "
            f"peak RSS +{near_mb:.0f} MB"
        )

    cfg = SemanticDedupConfig()
    model = load_embedder(None, args.backend)
    sem_samples, sem_planted = make_samples(args.semantic, 0.1, seed=1)
    t0 = time.perf_counter()
    emb = model.encode(
        [f"{s.instruction}\n{s.response}" for s in sem_samples],
        batch_size=cfg.batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
    )
    emb = np.asarray(emb, dtype=np.float32)
    embed_s = time.perf_counter() - t0
    print(f"embedded {args.semantic} samples ({args.backend}) in {embed_s:.1f} s ({args.semantic / embed_s:.0f}/s)")
    t0 = time.perf_counter()
    exact = exact_semantic_duplicates(emb, cfg.threshold)
    exact_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    approx = semantic_duplicates_of(emb, cfg.model_copy(update={"ann_min_samples": 0}))
    ann_s = time.perf_counter() - t0
    # every pair over the threshold, brute force, vs the index's pairs
    truth = set()
    for start in range(0, len(emb), 2048):
        sims = emb[start : start + 2048] @ emb.T
        for r, j in zip(*np.nonzero(sims >= cfg.threshold), strict=True):
            if j < start + r:
                truth.add((start + int(r), int(j)))
    found = {(i, j) for i, j, _ in ann_pairs(emb, cfg.threshold, cfg.nprobe)}
    pair_share = len(truth & found) / max(1, len(truth))
    same = sum(1 for i in exact if i in approx and approx[i][0] == exact[i][0])
    print(
        f"semantic {args.semantic}: brute force {exact_s:.1f} s, {len(exact)} duplicates ({len(sem_planted)} planted); "
        f"index {ann_s:.1f} s, {len(approx)} duplicates, {same} with the same representative; "
        f"pairs over {cfg.threshold}: {len(truth & found)}/{len(truth)} found by the index ({100 * pair_share:.2f}%)"
    )

    scale_s = scale_mb = scale_embed_s = 0.0
    scale_found = scale_planted = scale_hit = 0
    kind = "stand-in embeddings"
    if args.scale and args.scale_embed:
        kind = f"generated samples embedded with {args.backend} (not timed here)"
        scale_samples, scale_at = make_samples(args.scale, 0.1, seed=3)
        t0 = time.perf_counter()
        rows = np.empty((args.scale, emb.shape[1]), dtype=np.float32)
        step = 10_000
        for start in range(0, args.scale, step):
            part = scale_samples[start : start + step]
            rows[start : start + len(part)] = model.encode(
                [f"{s.instruction}\n{s.response}" for s in part],
                batch_size=cfg.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
            print(f"  embedded {start + len(part)}/{args.scale} ({time.perf_counter() - t0:.0f} s)", flush=True)
        scale_embed_s = time.perf_counter() - t0
        del scale_samples
        is_planted = np.zeros(args.scale, dtype=bool)
        is_planted[sorted(scale_at)] = True
    elif args.scale:
        rng = np.random.default_rng(2)
        n = args.scale
        rows = np.empty((n, emb.shape[1]), dtype=np.float32)
        is_planted = np.zeros(n, dtype=bool)

        def noisy(v: np.ndarray, cos: np.ndarray) -> np.ndarray:
            """Unit rows at cosine ``cos`` to the unit rows ``v`` (noise orthogonal to v)."""
            g = rng.standard_normal(v.shape).astype(np.float32)
            g -= np.sum(g * v, axis=1, keepdims=True) * v
            g /= np.linalg.norm(g, axis=1, keepdims=True)
            return cos[:, None] * v + np.sqrt(1 - cos[:, None] ** 2) * g

        for start in range(0, n, 10_000):
            end = min(n, start + 10_000)
            src = emb[rng.integers(0, len(emb), end - start)]
            rows[start:end] = noisy(src, np.full(end - start, 0.6, dtype=np.float32))
            if start:
                plant = np.flatnonzero(rng.random(end - start) < 0.1)
                earlier = rng.integers(0, start, plant.size)
                rows[start + plant] = noisy(rows[earlier], rng.uniform(0.85, 0.97, plant.size).astype(np.float32))
                is_planted[start + plant] = True
    if args.scale:
        n = args.scale
        scale_planted = int(is_planted.sum())
        with PeakGrowth() as growth:
            t0 = time.perf_counter()
            dupes = semantic_duplicates_of(rows, cfg.model_copy(update={"ann_min_samples": 0}))
            scale_s = time.perf_counter() - t0
        scale_mb = growth.mb
        scale_found = len(dupes)
        scale_hit = int(sum(1 for i in dupes if is_planted[i]))
        print(
            f"semantic {n} ({kind}, index only): {scale_s:.1f} s, "
            f"{scale_found} duplicates found, "
            f"{scale_hit} of {scale_planted} planted paraphrases ({100 * scale_hit / max(1, scale_planted):.2f}%), "
            f"RSS growth during the dedup, at most +{scale_mb:.0f} MB (the rows themselves, made before: "
            f"{rows.nbytes / 2**20:.0f} MB)"
        )
    load_end = report_load(load_start, 2.5)
    print(
        f"RESULT bench_dedup near_n={args.near} near_s={near_s:.1f} near_found={len(near)} near_planted={planted} "
        f"near_rss_mb={near_mb:.0f} semantic_n={args.semantic} embed_s={embed_s:.1f} exact_s={exact_s:.1f} "
        f"ann_s={ann_s:.1f} pairs_found={len(truth & found)}/{len(truth)} same_decisions={same}/{len(exact)} "
        f"scale_n={args.scale} scale_rows={'embedded' if args.scale_embed else 'stand-in'} "
        f"scale_embed_s={scale_embed_s:.0f} scale_s={scale_s:.1f} scale_found={scale_found} "
        f"planted_found={scale_hit}/{scale_planted} "
        f"scale_rss_mb={scale_mb:.0f} peak_rss_mb={rss_mb():.0f} load={load_start:.2f}/{load_end:.2f}"
    )


if __name__ == "__main__":
    main()
