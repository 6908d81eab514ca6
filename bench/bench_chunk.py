"""Chunking throughput: datapipe's ``SemanticChunker`` (fast backend) vs the PyTorch model alone.

What is measured: sentences per second. The shared test documents
(``shared/corpus/docs``, or ``examples/docs`` when that folder is missing) are
extracted once with ``datapipe.extract.extract_file`` (untimed). Then, per document:

* datapipe: ``SemanticChunker(ChunkConfig(backend=B)).chunk(doc)`` (``--backend``, default
  ``openvino``: all-MiniLM-L6-v2 exported to ONNX and compiled by OpenVINO, which runs it in bfloat16 on a
  CPU with AMX/AVX512-BF16 and in float32 elsewhere; ``onnx-int8``: the same export with int8 weights on
  ONNX Runtime; see ``datapipe/chunk/quantised.py``) -- sentence splitting,
  token counting with the model's tokenizer, cutting over-long sentences,
  embedding, similarity breakpoints and building ``Chunk`` records;
* model alone: the packaged all-MiniLM-L6-v2 sentence-transformers model
  (``load_embedder(None)``, the very object the chunker uses) encoding the same
  sentence texts (``split_sentences(doc)``) with the chunker's encode arguments,
  one ``encode`` call per document as the chunker makes.

Both sides are credited with the same sentence count, ``len(split_sentences(doc))``.

Quality of the fast backend (untimed, before the rounds): the mean and minimum cosine between its
embedding of every sentence and PyTorch's, and the documents whose chunks (char spans) are exactly those
the PyTorch-backed chunker makes, plus the share of identical chunk spans and how many gaps the chunker
rescored on float32 embeddings (``chunk.exact_margin``; the timed rounds include that rescoring).
The document list is repeated until one model-alone pass takes a few seconds.
After an untimed warm-up, several rounds run within a time budget. In each round
the two sides take turns document by document, and which side goes first flips
every document and every round. Torch uses every core, so anything else running
on a 2-core machine slows a pass several-fold; with turns this fine-grained, such
slowdowns hit both sides alike. The headline figures are totals over all rounds.
Best-of-rounds figures and the median of the per-round ratios are printed as well.

Run from the project root:
  .venv/bin/python bench/bench_chunk.py [--backend openvino|onnx-int8|torch] [--rounds N] [--budget-s S]
      [--min-pass-s S]
Last line:  RESULT bench_chunk ratio=<datapipe/model-alone> cos_mean=... same_docs=... ...
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")

T_START = time.perf_counter()
LOAD_WARN = 2.5  # torch alone keeps both cores busy
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from loadcheck import load_at_start, report_load  # noqa: E402


def docs_dir() -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "docs"
    return shared if shared.is_dir() else ROOT / "examples" / "docs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="start no round that would end later than this many seconds after the script started "
        "(the first round always runs)",
    )
    ap.add_argument(
        "--min-pass-s",
        type=float,
        default=4.0,
        help="repeat the documents until one model-alone pass takes at least this long",
    )
    ap.add_argument(
        "--backend", choices=["openvino", "onnx-int8", "torch"], default="openvino", help="datapipe's backend"
    )
    args = ap.parse_args()

    from datapipe.chunk import SemanticChunker, default_model_path, load_embedder, split_sentences
    from datapipe.config import ChunkConfig, ExtractConfig
    from datapipe.extract import SourceFile, extract_file
    from datapipe.records import Document

    load_start = load_at_start()
    folder = docs_dir()
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    docs: list[Document] = []
    t0 = time.perf_counter()
    for p in files:
        out = extract_file(SourceFile(p), ExtractConfig())
        if isinstance(out, Document):
            docs.append(out)
        else:
            print(f"  skipped {p.name}: {out.reason}")
    print(f"documents: {folder} ({len(docs)} of {len(files)} extracted in {time.perf_counter() - t0:.1f}s, untimed)")

    cfg = ChunkConfig(backend=args.backend)
    t0 = time.perf_counter()
    chunker = SemanticChunker(cfg)  # the first onnx-int8 use exports the model into the cache
    precision = getattr(chunker.model, "precision", "f32")
    print(
        f"datapipe backend {args.backend}: loaded in {time.perf_counter() - t0:.1f}s, inference precision {precision}"
    )
    model = load_embedder(None)
    texts_per_doc = [[d.text[s.start : s.end] for s in split_sentences(d)] for d in docs]
    sents_per_pass = sum(len(t) for t in texts_per_doc)
    print(
        f"model: {default_model_path()}, torch threads: {_torch_threads()}, sentences per document pass: "
        f"{sents_per_pass}"
    )

    # quality against PyTorch (untimed): embeddings of the same sentences, and the chunks themselves
    enc = {"batch_size": cfg.batch_size, "normalize_embeddings": True, "convert_to_numpy": True}
    all_texts = [t for texts in texts_per_doc for t in texts]
    cos = np.sum(chunker.model.encode(all_texts, **enc) * model.encode(all_texts, **enc), axis=1)
    reference = SemanticChunker(ChunkConfig())
    same_docs = same_spans = n_spans = 0
    chunker.gaps_scored = chunker.gaps_refined = 0
    for d in docs:
        mine = [(c.char_start, c.char_end) for c in chunker.chunk(d)]
        theirs = [(c.char_start, c.char_end) for c in reference.chunk(d)]
        same_docs += mine == theirs
        same_spans += len(set(mine) & set(theirs))
        n_spans += len(theirs)
    print(
        f"quality vs PyTorch: cosine mean {cos.mean():.4f}, min {cos.min():.4f} over {len(all_texts)} sentences; "
        f"same chunks in {same_docs}/{len(docs)} documents ({100 * same_docs / len(docs):.0f}%), "
        f"{same_spans}/{n_spans} chunk spans identical ({100 * same_spans / max(1, n_spans):.1f}%); "
        f"gaps rescored on float32 (chunk.exact_margin {cfg.exact_margin}): {chunker.gaps_refined} of "
        f"{chunker.gaps_scored}"
    )
    refined = f"{chunker.gaps_refined}/{chunker.gaps_scored}"

    def run_datapipe(doc: Document) -> int:
        return len(chunker.chunk(doc))

    def run_model(texts: list[str]) -> None:
        model.encode(
            texts, batch_size=cfg.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )

    # warm-up, and calibrate how many times to repeat the documents
    n_chunks = sum(run_datapipe(d) for d in docs)
    t0 = time.perf_counter()
    for texts in texts_per_doc:
        run_model(texts)
    one = time.perf_counter() - t0
    reps = max(1, math.ceil(args.min_pass_s / max(one, 1e-3)))
    work = list(zip(docs, texts_per_doc, strict=True)) * reps
    sents = sents_per_pass * reps
    print(
        f"warm-up model pass {one:.2f}s -> repeating the documents {reps}x: {sents} sentences per timed pass "
        f"({n_chunks * reps} chunks)"
    )

    t_dp: list[float] = []
    t_m: list[float] = []
    for r in range(args.rounds):
        if r and time.perf_counter() - T_START + (sum(t_dp) + sum(t_m)) / r > args.budget_s:
            print(f"time budget of {args.budget_s:.0f}s would be exceeded: stopping after {r} round(s)")
            break
        times = {"datapipe": 0.0, "model": 0.0}
        for k, (doc, texts) in enumerate(work):
            order = ["datapipe", "model"] if (r + k) % 2 == 0 else ["model", "datapipe"]
            for name in order:
                t0 = time.perf_counter()
                if name == "datapipe":
                    run_datapipe(doc)
                else:
                    run_model(texts)
                times[name] += time.perf_counter() - t0
        t_dp.append(times["datapipe"])
        t_m.append(times["model"])
        print(
            f"round {r + 1}: datapipe {times['datapipe']:.2f}s ({sents / times['datapipe']:.1f} sent/s), "
            f"model alone {times['model']:.2f}s ({sents / times['model']:.1f} sent/s)"
        )

    n = len(t_dp)
    dp_best, m_best = sents / min(t_dp), sents / min(t_m)
    dp_mean, m_mean = sents * n / sum(t_dp), sents * n / sum(t_m)
    median_ratio = statistics.median(m / d for d, m in zip(t_dp, t_m, strict=True))
    print(f"datapipe chunker: best {dp_best:.1f} sentences/s, mean {dp_mean:.1f} ({sents * n} in {sum(t_dp):.2f}s)")
    print(f"model alone:      best {m_best:.1f} sentences/s, mean {m_mean:.1f} ({sents * n} in {sum(t_m):.2f}s)")
    print(
        f"ratio datapipe/model: best-of {dp_best / m_best:.2f}, mean {dp_mean / m_mean:.2f}, "
        f"median of rounds {median_ratio:.2f}"
    )
    load_end = report_load(load_start, LOAD_WARN)
    print(
        f"RESULT bench_chunk backend={args.backend} precision={precision} ratio={dp_mean / m_mean:.2f} "
        f"cos_mean={cos.mean():.4f} "
        f"same_docs={same_docs}/{len(docs)} same_spans={same_spans}/{n_spans} refined={refined} "
        f"datapipe_sent_per_s={dp_mean:.1f} "
        f"model_sent_per_s={m_mean:.1f} best_ratio={dp_best / m_best:.2f} median_ratio={median_ratio:.2f} "
        f"sentences={sents} docs={len(docs)}x{reps} rounds={n} load={load_start:.2f}/{load_end:.2f}"
    )
    return 0


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
