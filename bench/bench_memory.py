"""Peak memory of extract + chunk over a generated corpus of 1,000 vs 10,000 documents.

Target (issue 22): peak RSS at 10,000 documents at most 1.3x the peak at 1,000 -- memory that depends on the
largest document and the batch size, not on the corpus size.

The corpus: small text files (``--sentences`` sentences each) cut from a real document of the shared corpus
(``shared/corpus/docs/norwich-city.txt``), every file different. Each size runs in a fresh Python process
(``run_extract`` then ``run_chunk`` of ``datapipe.pipeline`` on a pipeline file in a temporary folder, the
run store on local disk), which prints its own peak RSS (``ru_maxrss``) and wall time; the model loads in
both, so the ratio shows what grows with the corpus. Sizes are flags, for iteration.

Run from the project root:  .venv/bin/python bench/bench_memory.py [--small 1000] [--large 10000]
Last line:  RESULT bench_memory ratio=<peak large / peak small> ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadcheck import load_at_start, report_load  # noqa: E402

CHILD = """
import json, resource, sys, time
from datapipe.config import load_config
from datapipe.pipeline import run_extract, run_chunk
t0 = time.perf_counter()
cfg = load_config(sys.argv[1])
ex = run_extract(cfg)
ch = run_chunk(cfg)
print("CHILD " + json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "wall_s": time.perf_counter() - t0, "extract": str(ex)[:200], "chunk": str(ch)[:200]}))
"""


def sentences() -> list[str]:
    src = ROOT.parent / "shared" / "corpus" / "docs" / "norwich-city.txt"
    if not src.is_file():
        src = ROOT / "README.md"
    text = re.sub(r"\s+", " ", src.read_text(encoding="utf-8"))
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if 30 <= len(s) <= 300]


def make_corpus(folder: Path, n: int, per_doc: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    pool = sentences()
    total = 0
    for i in range(n):
        picked = [pool[rng.randrange(len(pool))] for _ in range(per_doc)]
        body = f"Document {i}\n\n" + " ".join(picked[: per_doc // 2]) + "\n\n" + " ".join(picked[per_doc // 2 :])
        (folder / f"doc{i:05d}.txt").write_text(body + "\n", encoding="utf-8")
        total += len(body)
    return total


def run_size(n: int, per_doc: int, backend: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        docs = Path(tmp) / "docs"
        docs.mkdir()
        chars = make_corpus(docs, n, per_doc)
        (Path(tmp) / "pipeline.yaml").write_text(
            f"store: runs\nsources:\n  - docs\nchunk:\n  backend: {backend}\nextract:\n  workers: 1\n"
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(Path(tmp) / "pipeline.yaml")],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wall = time.perf_counter() - t0
        line = next((x for x in out.stdout.splitlines() if x.startswith("CHILD ")), None)
        if line is None:
            sys.exit(f"the {n}-document run failed:\n{out.stderr[-3000:]}")
        res = json.loads(line[6:])
        res.update(n=n, chars=chars, process_s=wall)
        print(
            f"{n} documents ({chars / 1e6:.1f} MB of text): peak RSS {res['peak_mb']:.0f} MB, "
            f"extract+chunk {res['wall_s']:.0f} s\n  extract: {res['extract']}\n  chunk: {res['chunk']}",
            flush=True,
        )
        return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=10000)
    ap.add_argument("--sentences", type=int, default=4, help="sentences per generated document")
    ap.add_argument("--backend", choices=["torch", "onnx-int8", "openvino"], default="onnx-int8")
    args = ap.parse_args()
    load_start = load_at_start()
    small = run_size(args.small, args.sentences, args.backend)
    large = run_size(args.large, args.sentences, args.backend)
    ratio = large["peak_mb"] / small["peak_mb"]
    print(f"peak RSS {args.large} / {args.small} documents: {ratio:.2f} (target <= 1.3)")
    load_end = report_load(load_start, 2.5)
    print(
        f"RESULT bench_memory ratio={ratio:.2f} small={args.small} small_peak_mb={small['peak_mb']:.0f} "
        f"large={args.large} large_peak_mb={large['peak_mb']:.0f} small_s={small['wall_s']:.0f} "
        f"large_s={large['wall_s']:.0f} backend={args.backend} load={load_start:.2f}/{load_end:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
