"""Benchmark decontamination: reject samples sharing a long normalised n-gram with a test set.

Benchmarks are files on disk (jsonl/json/parquet) or ``datasets`` folders saved with
``save_to_disk``; nothing is downloaded. N-grams are over normalised words (lower-case,
punctuation dropped), 13 long by default, as in the GPT-3 and Llama contamination studies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapipe.config import BenchmarkConfig, DecontaminationConfig
from datapipe.errors import ConfigError
from datapipe.filter import batch_check, normalise, sample_reject
from datapipe.records import Reject, Sample


def ngrams(text: str, n: int) -> set[int]:
    words = normalise(text).split()
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


def load_benchmark_texts(bench: BenchmarkConfig, base: Path) -> list[str]:
    path = Path(bench.path) if Path(bench.path).is_absolute() else base / bench.path
    if not path.exists():
        raise ConfigError(f"filter.decontamination: benchmark {bench.name!r}: {path} does not exist")
    rows: list[dict[str, object]]
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if bench.split is None:
                raise ConfigError(f"benchmark {bench.name!r}: {path} holds splits {list(ds)}; set `split`")
            ds = ds[bench.split]
        rows = list(ds)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else data.get("data", [])
    else:
        raise ConfigError(f"benchmark {bench.name!r}: {path.suffix} files are not supported (jsonl, json, parquet)")
    missing = [f for f in bench.fields if rows and f not in rows[0]]
    if missing:
        raise ConfigError(f"benchmark {bench.name!r}: field(s) {missing} not in {path} (has {sorted(rows[0])})")
    return [str(r[f]) for r in rows for f in bench.fields if r.get(f)]


@dataclass
class Decontaminator:
    index: dict[str, set[int]]
    n: int

    @classmethod
    def build(cls, cfg: DecontaminationConfig, base: Path) -> Decontaminator:
        index = {}
        for bench in cfg.benchmarks:
            grams: set[int] = set()
            for text in load_benchmark_texts(bench, base):
                grams |= ngrams(text, cfg.ngram)
            index[bench.name] = grams
        return cls(index, cfg.ngram)

    def check(self, sample: Sample) -> Reject | None:
        grams = ngrams(sample.instruction, self.n) | ngrams(sample.response, self.n)
        for name, bench in self.index.items():
            shared = grams & bench
            if shared:
                return sample_reject(
                    sample, f"contaminated:{name}", f"{len(shared)} shared {self.n}-gram(s) with benchmark {name}"
                )
        return None


@batch_check(
    "decontamination", enabled=lambda ctx: bool(ctx.cfg.filter.decontamination.benchmarks), per_sample=True, order=200
)
def decontaminate(samples: list[Sample], ctx: Any) -> list[Reject]:
    """The batch check ``decontamination`` (config: ``filter.decontamination``): the benchmarks' n-gram index
    is built once per call (once per slice under Ray), each sample is checked alone."""
    decon = Decontaminator.build(ctx.cfg.filter.decontamination, ctx.cfg.base_dir)
    return [r for s in samples if (r := decon.check(s)) is not None]
