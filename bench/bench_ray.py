"""CPU stages on Ray: extraction, chunking and partitioned near-dedup with 1 vs 2 Ray workers (and locally).

What is measured: wall time of datapipe's CPU stages over a corpus, run three ways on this machine:

* local: ``run_extract`` and ``run_chunk`` in this process, near-dedup with ``partitions`` tasks run here;
* Ray, 1 worker: a local Ray cluster (``ray start --head --num-cpus 1``); each stage's shards are split into
  parts (``run_extract(cfg, part=(i, n))``, the same functions the Prefect Ray runner calls), run as Ray tasks,
  then the stage's driver pass records them; near-dedup's slice and band-partition tasks run as Ray tasks;
* Ray, 2 workers: the same with a second node (``ray start --address ... --num-cpus 1``).

Each configuration starts from an empty run store, so every worker pays its own start-up (imports,
unstructured and spaCy, the embedding model): that is part of the honest cost. Corpora: ``../shared/corpus/docs``
(or examples/docs) and a generated one (``--gen-docs`` text files of ``--gen-words`` words built from the corpus's
sentences). Near-dedup runs over ``--dedup-n`` samples made as bench_dedup makes them.

Run from the project root:  .venv/bin/python bench/bench_ray.py [--gen-docs N] [--dedup-n N]
Last line:  RESULT bench_ray speedup_2v1=<t(1 worker)/t(2 workers)> ...
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from loadcheck import load_at_start, report_load  # noqa: E402

RAY = str(Path(sys.executable).with_name("ray"))


def corpus_dir() -> Path:
    shared = ROOT.parent / "shared" / "corpus" / "docs"
    return shared if shared.is_dir() else ROOT / "examples" / "docs"


def generated_corpus(dest: Path, n_docs: int, words: int, seed: int = 0) -> Path:
    text = " ".join(p.read_text(errors="ignore") for p in corpus_dir().glob("*.txt"))
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(".") if len(s.split()) > 5]
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        out, count = [], 0
        while count < words:
            s = rng.choice(sentences)
            out.append(s)
            count += len(s.split())
        paras = [" ".join(out[j : j + 6]) for j in range(0, len(out), 6)]
        (dest / f"doc-{i:04d}.txt").write_text(f"Document {i}\n\n" + "\n\n".join(paras), encoding="utf-8")
    return dest


def config(store: Path, sources: Path) -> Any:
    from datapipe.config import PipelineConfig

    return PipelineConfig(run_id="bench", store=str(store), sources=[str(sources)], base_dir=store.parent)


def part(job: tuple[str, Any, int, int]) -> dict[str, Any]:
    from datapipe import pipeline as stages

    stage, cfg, i, n = job
    runner = {"extract": stages.run_extract, "chunk": stages.run_chunk}[stage]
    return runner(cfg, part=(i, n))  # type: ignore[operator]


def run_stages(cfg: Any, map_fn: Any, n: int) -> dict[str, float]:
    from datapipe import pipeline as stages

    times = {}
    for stage, fn in (("extract", stages.run_extract), ("chunk", stages.run_chunk)):
        t = time.perf_counter()
        if n > 1 or map_fn is not stages.local_map:
            done: dict[str, float] = {}
            for r in map_fn(part, [(stage, cfg, i, n) for i in range(n)]):
                done.update(r["computed"])
            fn(cfg, done_elsewhere=done)
        else:
            fn(cfg)
        times[stage] = time.perf_counter() - t
    return times


def dedup_samples(n: int) -> list[Any]:
    """bench_dedup's synthetic samples: distinct word salads, every fifth (on average) a one-word edit of one."""
    from bench_dedup import make_samples

    return make_samples(n, dup_share=0.2, seed=1)[0]


def time_dedup(samples: list[Any], map_fn: Any, partitions: int) -> tuple[float, int]:
    from datapipe.config import NearDedupConfig
    from datapipe.filter.dedup import near_duplicates_partitioned

    cfg = NearDedupConfig(partitions=partitions, slice_size=max(1, len(samples) // (2 * partitions)))
    t = time.perf_counter()
    found = near_duplicates_partitioned(samples, cfg, cfg.partitions, cfg.slice_size, map_fn)
    return time.perf_counter() - t, len(found)


def start_cluster(workers: int, tmp: Path) -> str:
    port = 6500 + random.randrange(1000)
    head = [
        RAY,
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=1",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={tmp}",
    ]
    subprocess.run(head, check=True, capture_output=True, timeout=180)
    for _ in range(workers - 1):
        subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1"], check=True, capture_output=True, timeout=180
        )
    return f"127.0.0.1:{port}"


def stop_cluster() -> None:
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen-docs", type=int, default=120)
    parser.add_argument("--gen-words", type=int, default=1000)
    parser.add_argument("--dedup-n", type=int, default=40_000)
    args = parser.parse_args()
    load_start = load_at_start()
    from datapipe import pipeline as stages

    tmp = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    gen = generated_corpus(tmp / "generated", args.gen_docs, args.gen_words)
    corpora = {"shared corpus": corpus_dir(), f"generated ({args.gen_docs} docs)": gen}
    samples = dedup_samples(args.dedup_n)
    results: dict[str, dict[str, float]] = {}
    for label, workers in (("local", 0), ("ray-1", 1), ("ray-2", 2)):
        row: dict[str, float] = {}
        if workers:
            import ray

            address = start_cluster(workers, tmp / f"ray-{workers}")
            ray.init(address=address, include_dashboard=False, log_to_driver=False)

            def map_fn(fn: Any, items: list[Any]) -> list[Any]:
                remote = ray.remote(fn)
                return list(ray.get([remote.remote(x) for x in items]))

            parts = workers * 2
        else:
            map_fn, parts = stages.local_map, 1
        try:
            for name, src in corpora.items():
                store = tmp / f"{label}-{name.split()[0]}" / "runs"
                t = run_stages(config(store, src), map_fn, parts)
                row[f"{name} extract"] = t["extract"]
                row[f"{name} chunk"] = t["chunk"]
            secs, found = time_dedup(samples, map_fn, max(2, parts))
            row[f"near-dedup {args.dedup_n}"] = secs
            print(f"{label}: " + ", ".join(f"{k} {v:.1f} s" for k, v in row.items()) + f" ({found} near-dups)")
        finally:
            if workers:
                ray.shutdown()
                stop_cluster()
        results[label] = row
    total = {k: sum(v.values()) for k, v in results.items()}
    speedup = total["ray-1"] / total["ray-2"]
    print(
        f"total: local {total['local']:.1f} s, 1 Ray worker {total['ray-1']:.1f} s, 2 Ray workers "
        f"{total['ray-2']:.1f} s; 2 vs 1 worker speed-up {speedup:.2f}x (2 cores: at most 2x)"
    )
    for k in results["local"]:
        print(f"  {k}: 1 worker / 2 workers = {results['ray-1'][k] / results['ray-2'][k]:.2f}x")
    report_load(load_start, 2.5)
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"RESULT bench_ray speedup_2v1={speedup:.2f} local_s={total['local']:.1f} ray1_s={total['ray-1']:.1f} "
        f"ray2_s={total['ray-2']:.1f}"
    )


if __name__ == "__main__":
    main()
