"""Quality filters on labelled data: recall per defect label and good samples rejected.

Usage: python bench/bench_quality.py [SET.jsonl] [--show]

SET.jsonl (default ../shared/quality-eval/dev.jsonl) holds rows {id, context, question, answer, label}
with label good | deictic | ungrounded | wrong_language | copies_context | refusal (see that folder's
README). The bench writes the rows as chatml with the context in a `context` field, brings them into a
fresh run with `datapipe import --format chatml --context-field context`, runs `datapipe filter` with the
default filter config and no LLM judge, and compares every sample's verdict with its label: a defect is
caught when the sample is rejected (the reason is printed too), a good sample is lost when it is.

Dedup is switched off: such a set holds deliberate twins (a good and a defective answer to the same
question), and a duplicate verdict would say nothing about the quality filters.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SET = ROOT.parent / "shared" / "quality-eval" / "dev.jsonl"
TARGETS = {"deictic": 0.85, "wrong_language": 0.85, "copies_context": 0.85, "refusal": 0.85, "ungrounded": 0.70}


def datapipe(*args: str) -> None:
    code = "import sys; from datapipe.cli import app; sys.exit(app())"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"datapipe {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def main() -> None:
    argv = [a for a in sys.argv[1:] if not a.startswith("--")]
    show = "--show" in sys.argv
    path = Path(argv[0]) if argv else DEFAULT_SET
    items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = work / "set.chatml.jsonl"
        with rows.open("w", encoding="utf-8") as fh:
            for it in items:
                messages = [{"role": "user", "content": it["question"]}, {"role": "assistant", "content": it["answer"]}]
                fh.write(json.dumps({"id": it["id"], "messages": messages, "context": it["context"]}) + "\n")
        cfg = work / "bench.yaml"
        cfg.write_text(
            json.dumps(
                {
                    "run_id": "bench-quality",
                    "store": str(work / "runs"),
                    "sources": [str(path.parent)],  # never extracted: the bench runs import and filter only
                    "filter": {
                        "dedup_exact": False,
                        "near_dedup": {"enabled": False},
                        "semantic_dedup": {"enabled": False},
                    },
                }
            ),
            encoding="utf-8",
        )
        datapipe("import", str(rows), str(cfg), "--format", "chatml", "--context-field", "context")
        datapipe("filter", str(cfg))
        run = work / "runs" / "bench-quality"
        sys.path.insert(0, str(ROOT))
        from datapipe.records import Sample
        from datapipe.store import RunStore

        store = RunStore(run)
        verdict: dict[str, str | None] = {}
        for s in store.iter_records("filter", Sample):
            verdict[json.loads(s.provenance.teacher_calls[0].raw_output)["id"]] = None
        for r in store.iter_rejects("filter"):
            sample = json.loads(r.payload)
            sample = sample.get("sample", sample)
            raw = json.loads(sample["provenance"]["teacher_calls"][0]["raw_output"])
            verdict[raw["id"]] = f"{r.reason}: {r.detail}"
    seconds = time.perf_counter() - t0
    by_label: dict[str, list[str]] = defaultdict(list)
    for it in items:
        by_label[it["label"]].append(it["id"])
    missing = [it["id"] for it in items if it["id"] not in verdict]
    if missing:
        sys.exit(f"no verdict for {missing[:5]}: every imported row must be kept or rejected")
    print(f"{path} ({len(items)} samples), filters without an LLM judge, {seconds:.1f} s\n")
    print(f"{'label':16} {'n':>3} {'caught':>6} {'recall':>7} {'target':>7}  reasons")
    figures = []
    ok = True
    for label in ("deictic", "ungrounded", "wrong_language", "copies_context", "refusal"):
        ids = by_label.get(label, [])
        if not ids:
            continue
        caught = [i for i in ids if verdict[i]]
        reasons = Counter(str(verdict[i]).split(":", 1)[0] for i in caught)
        recall = len(caught) / len(ids)
        target = TARGETS[label]
        ok &= recall >= target
        print(f"{label:16} {len(ids):3} {len(caught):6} {recall:7.2f} {target:7.2f}  {dict(reasons.most_common())}")
        figures.append(f"{label}={recall:.2f}")
    good = by_label.get("good", [])
    lost = [i for i in good if verdict[i]]
    ok &= len(lost) <= 1
    print(f"{'good':16} {len(good):3} {len(lost):6} rejected (target: at most 1)")
    for i in lost:
        print(f"  {i}: {verdict[i]}")
    if show:
        for label, ids in sorted(by_label.items()):
            for i in ids:
                if (label == "good") != bool(verdict[i]):  # show the misses only
                    continue
                print(f"  [{label}] {i}: {verdict[i] or 'kept'}")
    print(
        f"\nRESULT bench_quality {' '.join(figures)} good_rejected={len(lost)}/{len(good)} "
        f"targets={'met' if ok else 'missed'}"
    )


if __name__ == "__main__":
    main()
