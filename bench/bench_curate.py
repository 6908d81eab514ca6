"""Argilla push/pull throughput: ``datapipe curate push`` vs the ``argilla`` SDK logging the same records alone.

What is measured, against a real argilla-server 2.8.0 on 127.0.0.1 (scripts/argilla/stack.py: SQLite,
Redis, osmem-server standing in for OpenSearch; the same server for both sides):

* datapipe: ``datapipe.curate.push`` of N kept samples (default 1,000) from a run store into a new
  workspace: reading the filter stage, creating the dataset, building records with fields, metadata and
  suggestions, logging them in batches of ``curate.batch_size`` and counting the server's records before
  and after;
* SDK alone: the same ``rg.Record`` objects (built untimed) logged with ``dataset.records.log`` into a new
  dataset with the same settings, created inside the timed region too.

Then a second push of the same run (all updates) and a pull (every record read back with its responses,
decisions computed and stored) are timed once each.

The sides alternate for ``--rounds`` rounds, each into fresh datasets; ``ratio`` is best datapipe / best SDK.

Run from the project root:  .venv/bin/python bench/bench_curate.py [--n N] [--rounds R]
Last line:  RESULT bench_curate ratio=<datapipe/sdk> push_s=... repush_s=... pull_s=...
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadcheck import load_at_start, report_load  # noqa: E402


def _stack() -> object:
    spec = importlib.util.spec_from_file_location("argilla_stack", ROOT / "scripts" / "argilla" / "stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_run(tmp: Path, n: int, run_id: str, url: str, workspace: str) -> tuple[object, object]:
    from datapipe.config import CurateConfig, PipelineConfig
    from datapipe.records import Message, Provenance, Sample
    from datapipe.store import RunStore, StageRecorder

    samples = []
    for i in range(n):
        q = f"What does clause {i} of the staff handbook say about parental leave and notice periods?"
        a = f"Clause {i} grants {10 + i % 20} days of leave. " + "It applies after probation and needs notice. " * 6
        samples.append(
            Sample(
                id=f"s{i:06d}",
                kind="instruction",
                instruction=q,
                response=a,
                messages=[Message(role="user", content=q), Message(role="assistant", content=a)],
                provenance=Provenance(
                    source_path=f"/docs/handbook-{i % 7}.pdf",
                    document_id=f"d{i % 7}",
                    chunk_id=f"c{i}",
                    char_start=0,
                    char_end=600,
                    pages=[1 + i % 30],
                    context="Staff handbook, section 4. " * 25,
                    teacher_calls=[],
                ),
                verdicts={"heuristics": "pass", "dedup_exact": "pass"},
                scores={"faithfulness": float(1 + i % 5), "quality": float(1 + (i * 3) % 5)},
            )
        )
    cfg = PipelineConfig(
        run_id=run_id,
        store=str(tmp),
        sources=[str(tmp / "docs")],
        curate=CurateConfig(api_url=url, workspace=workspace, kinds=["instruction"]),
        base_dir=tmp,
    )
    store = RunStore(cfg.run_dir)
    rec = StageRecorder(store, "filter", "bench")
    store.write_shard("filter", "kept", Sample.to_table(samples), [])
    rec.add("kept", [], n, n, 0, 0.0, False)
    rec.finish()
    return cfg, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_start = load_at_start()

    import argilla as rg

    from datapipe.curate import _sample_record, _score_props, _settings, connect, pull, push
    from datapipe.records import Sample

    tmp = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    stack = _stack().ArgillaStack(tmp / "argilla").start()  # type: ignore[attr-defined]
    os.environ["ARGILLA_API_KEY"] = stack.api_key
    try:
        ours: list[float] = []
        sdk: list[float] = []
        cfg0 = None
        for r in range(args.rounds):
            cfg, store = make_run(tmp / f"runs{r}", args.n, f"bench{r}", stack.url, f"ws{r}")
            cfg0 = cfg0 or (cfg, store)
            samples = list(store.iter_records("filter", Sample))
            props = _score_props(samples)
            records = [_sample_record(s, props) for s in samples]  # built untimed for the SDK side
            conn = connect(cfg.curate)
            ws = rg.Workspace(name=f"sdk{r}", client=conn.client).create()

            def sdk_side(r: int = r, ws: object = ws, props: list = props, records: list = records) -> float:
                batch = 200  # curate.batch_size's default, as datapipe sends them
                t = time.perf_counter()
                ds = rg.Dataset(name=f"sdk-{r}", workspace=ws, settings=_settings("instruction", props)).create()
                for i in range(0, len(records), batch):
                    ds.records.log(records[i : i + batch], batch_size=len(records[i : i + batch]))
                return time.perf_counter() - t

            def our_side(r: int = r, cfg: object = cfg, store: object = store) -> float:
                t = time.perf_counter()
                result = push(cfg, store)  # type: ignore[arg-type]
                assert result.datasets[f"bench{r}-instruction"]["on_server"] == args.n, result.datasets
                return time.perf_counter() - t

            if r % 2 == 0:
                o, s = our_side(), sdk_side()
            else:
                s, o = sdk_side(), our_side()
            ours.append(o)
            sdk.append(s)
            rates = f"{args.n / o:.0f} vs {args.n / s:.0f} records/s"
            print(f"round {r + 1}: datapipe push {o:.2f} s, SDK log alone {s:.2f} s ({rates})")

        cfg, store = cfg0  # type: ignore[misc]
        t = time.perf_counter()
        again = push(cfg, store)
        repush = time.perf_counter() - t
        counts = again.datasets[f"{cfg.run_id}-instruction"]
        print(f"push again (all updates): {repush:.2f} s, new {counts['new']}, updated {counts['updated']}")
        t = time.perf_counter()
        pulled = pull(cfg, store)
        pull_s = time.perf_counter() - t
        print(f"pull {args.n} records (no reviews yet): {pull_s:.2f} s, decisions {dict(pulled.decisions)}")
        ratio = min(ours) / min(sdk)
        print(f"best: datapipe {min(ours):.2f} s vs SDK {min(sdk):.2f} s for {args.n} samples, ratio {ratio:.2f}")
        report_load(load_start, 2.5)
        print(
            f"RESULT bench_curate ratio={ratio:.2f} push_s={min(ours):.2f} sdk_s={min(sdk):.2f} "
            f"repush_s={repush:.2f} pull_s={pull_s:.2f} n={args.n}"
        )
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
