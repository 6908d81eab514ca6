"""Export throughput: ``datapipe.export.export_records`` vs pyarrow writing the same rows alone.

What is measured: seconds to export N synthetic chat samples (default 100,000; a user turn
of ~20 words and an assistant turn of ~60, each with provenance, as the filter stage keeps
them). Building the ``Sample`` records is untimed on both sides.

* datapipe: ``export_records(samples, ExportOptions(fmt="chatml", split=0.95,
  token_lengths=False), out)`` -- the ``messages`` column built from the records, rows
  put in id order, the stable-hash train/validation split, two parquet files, the
  dataset card (its YAML built with ``datasets``' card helpers, provenance facts
  gathered from every record) and the three trainer snippets;
* pyarrow alone: the same final rows, already as Python dicts, turned into one table
  with ``pa.Table.from_pylist(rows, schema)`` and written with ``pq.write_table``.
  The write alone (table already built) is printed too.

The token-length check (on by default in ``datapipe export``) is timed separately, once,
on ``--lengths-n`` samples with the default tokenizer (the SmolLM2 GGUF through
llama.cpp): its cost is llama.cpp's tokenizer, per sample, not the export's.

After an untimed warm-up (imports, the tokenizer), the sides alternate for ``--rounds``
rounds, flipping the order each round; ``ratio`` is best datapipe / best pyarrow.

Run from the project root:  .venv/bin/python bench/bench_export.py [--n N] [--rounds R] [--lengths-n M]
Last line:  RESULT bench_export ratio=<datapipe/pyarrow> ...
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from datapipe.export import SCHEMAS, ExportOptions, export_records, sample_row  # noqa: E402
from datapipe.records import Message, Provenance, Sample, TeacherCall, content_id  # noqa: E402

WORDS = (
    "the employee handbook says leave requests need a manager approval two weeks before travel and the "
    "benefits team answers questions about salary pension insurance remote work equipment and training"
).split()


def make_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    call = TeacherCall(
        step="answer",
        prompt_name="instruction_answer",
        prompt_version="v1",
        prompt_hash="0" * 16,
        backend="llamacpp",
        model="SmolLM2-135M-Instruct.Q4_1.gguf",
        params="{}",
        raw_output="",
        input_tokens=100,
        output_tokens=80,
        cached=False,
    )
    out = []
    for i in range(n):
        q = " ".join(rng.choices(WORDS, k=20)) + "?"
        a = " ".join(rng.choices(WORDS, k=60)) + "."
        prov = Provenance(
            source_path=f"/docs/handbook-{i % 40}.pdf",
            document_id=f"d{i % 40}",
            chunk_id=f"c{i // 4}",
            char_start=0,
            char_end=500,
            pages=[1 + i % 9],
            context="",
            teacher_calls=[call],
        )
        out.append(
            Sample.model_construct(
                id=content_id(i),
                kind="instruction",
                instruction=q,
                response=a,
                messages=[Message(role="user", content=q), Message(role="assistant", content=a)],
                provenance=prov,
                verdicts={},
                scores={},
            )
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="samples exported per pass")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lengths-n", type=int, default=10_000, help="samples for the token-length timing (0: skip)")
    args = ap.parse_args()

    t = time.perf_counter()
    samples = make_samples(args.n)
    rows = [sample_row(s, "chatml") for s in sorted(samples, key=lambda s: s.id)]
    print(f"built {args.n} samples in {time.perf_counter() - t:.1f} s (untimed); load average {os.getloadavg()[0]:.2f}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    opts = ExportOptions(fmt="chatml", split=0.95, token_lengths=False)

    def datapipe_pass() -> float:
        out = tmp / "datapipe"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        result = export_records(samples, opts, out)
        dt = time.perf_counter() - t0
        assert result.n_out == args.n
        return dt

    write_only: list[float] = []

    def pyarrow_pass() -> float:
        path = tmp / "pyarrow.parquet"
        path.unlink(missing_ok=True)
        t0 = time.perf_counter()
        table = pa.Table.from_pylist(rows, schema=SCHEMAS["chatml"])
        t1 = time.perf_counter()
        pq.write_table(table, path)
        t2 = time.perf_counter()
        write_only.append(t2 - t1)
        return t2 - t0

    export_records(samples[:1000], opts, tmp / "warmup")  # imports (datasets, huggingface_hub) untimed
    pyarrow_pass()
    write_only.clear()
    dp: list[float] = []
    pa_: list[float] = []
    for r in range(args.rounds):
        order = [("datapipe", datapipe_pass), ("pyarrow", pyarrow_pass)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            (dp if name == "datapipe" else pa_).append(fn())
        print(f"round {r + 1}: datapipe {dp[-1]:.2f} s, pyarrow {pa_[-1]:.2f} s")

    ratio = min(dp) / min(pa_)
    per_round = [d / p for d, p in zip(dp, pa_, strict=True)]
    print(
        f"datapipe export (chatml, split 0.95, card + snippets): best {min(dp):.2f} s, mean {statistics.mean(dp):.2f} s"
    )
    print(f"pyarrow from_pylist + write_table: best {min(pa_):.2f} s, mean {statistics.mean(pa_):.2f} s")
    print(f"pyarrow write_table alone (table built): best {min(write_only):.2f} s")

    lengths = ""
    if args.lengths_n:
        sub = samples[: args.lengths_n]
        with_len = ExportOptions(fmt="chatml", split=0.95, token_lengths=True, max_seq_len=2048)
        export_records(sub[:100], with_len, tmp / "warmup-len")  # load the tokenizer untimed
        t0 = time.perf_counter()
        export_records(sub, with_len, tmp / "lengths")
        t_len = time.perf_counter() - t0
        t0 = time.perf_counter()
        export_records(sub, opts, tmp / "nolengths")
        t_plain = time.perf_counter() - t0
        per = (t_len - t_plain) / len(sub) * 1e3
        print(
            f"with token lengths (SmolLM2 GGUF via llama.cpp) on {len(sub)} samples: {t_len:.2f} s vs {t_plain:.2f} s "
            f"without: {per:.3f} ms per sample for rendering + tokenizing"
        )
        lengths = f" lengths_ms_per_sample={per:.3f}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"RESULT bench_export ratio={ratio:.2f} mean_ratio={statistics.mean(dp) / statistics.mean(pa_):.2f} "
        f"median_ratio={statistics.median(per_round):.2f} n={args.n} datapipe_s={min(dp):.2f} "
        f"pyarrow_s={min(pa_):.2f}{lengths} target<=3"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
