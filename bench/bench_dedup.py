"""Dedup at volume: near-duplicate (MinHash LSH) over 100,000 generated samples and semantic
(embedding cosine) over 20,000, with wall time and peak memory (RSS growth) for each.

The samples are synthetic question/answer pairs built from a vocabulary of real words, with
10 % planted light edits of earlier samples, so the dedup has real work and a known answer.
Prints `RESULT bench_dedup ...` last. Targets (issue 5): near-dup of 100k under 60 s.
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

from datapipe.chunk import load_embedder  # noqa: E402
from datapipe.config import NearDedupConfig, SemanticDedupConfig  # noqa: E402
from datapipe.filter.dedup import near_duplicates, semantic_duplicates  # noqa: E402
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


def make_samples(n: int, dup_share: float, seed: int = 0) -> tuple[list[Sample], int]:
    rng = random.Random(seed)
    vocab = vocabulary()
    out: list[Sample] = []
    planted = 0
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
            planted += 1
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--near", type=int, default=100_000)
    ap.add_argument("--semantic", type=int, default=20_000)
    args = ap.parse_args()

    samples, planted = make_samples(args.near, 0.1)
    base = rss_mb()
    t0 = time.perf_counter()
    near = near_duplicates(samples, NearDedupConfig())
    near_s = time.perf_counter() - t0
    near_mb = rss_mb() - base
    print(
        f"near-dup: {args.near} samples, {planted} planted edits, {len(near)} found in {near_s:.1f} s, "
        f"peak RSS +{near_mb:.0f} MB"
    )

    model = load_embedder(None)
    sem_samples, sem_planted = make_samples(args.semantic, 0.1, seed=1)
    base = rss_mb()
    t0 = time.perf_counter()
    sem = semantic_duplicates(sem_samples, SemanticDedupConfig(), model)
    sem_s = time.perf_counter() - t0
    sem_mb = rss_mb() - base
    print(
        f"semantic: {args.semantic} samples, {sem_planted} planted edits, {len(sem)} found in {sem_s:.1f} s, "
        f"peak RSS +{sem_mb:.0f} MB (includes embedding {args.semantic} texts on CPU)"
    )
    print(
        f"RESULT bench_dedup near_n={args.near} near_s={near_s:.1f} near_found={len(near)} near_planted={planted} "
        f"near_rss_mb={near_mb:.0f} semantic_n={args.semantic} semantic_s={sem_s:.1f} semantic_found={len(sem)} "
        f"semantic_rss_mb={sem_mb:.0f}"
    )


if __name__ == "__main__":
    main()
