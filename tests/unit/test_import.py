"""`datapipe import`: samples made elsewhere enter a run, malformed rows are rejects naming their line,
importing the same file again changes nothing, and the filter and export read the imported samples."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.records import Sample
from datapipe.store import RunStore
from tests.conftest import write_config

CONTEXT = (
    "Norwich City Football Club is an English professional football club based in Norwich, Norfolk. The club was "
    "founded in 1902 and has played its home games at Carrow Road since 1935. Norwich City is nicknamed the Canaries."
)


def chat(q: str, a: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def setup(tmp_path: Path) -> tuple[Path, RunStore]:
    cfg = write_config(tmp_path / "p.yaml", run_id="byod", store=str(tmp_path / "runs"), sources=[str(tmp_path)])
    return cfg, RunStore(tmp_path / "runs" / "byod")


def test_chatml_import_rejects_malformed_lines_and_is_idempotent(tmp_path: Path) -> None:
    cfg, store = setup(tmp_path)
    lines = [
        json.dumps(chat("When was Norwich City founded?", "Norwich City was founded in 1902.", context=CONTEXT)),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "Where does Norwich City play?"}]}),
        "",
        json.dumps(chat("Where does Norwich City play its home games?", "Carrow Road, since 1935.", context=CONTEXT)),
        json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        json.dumps(chat("When was Norwich City founded?", "Norwich City was founded in 1902.", context=CONTEXT)),
        json.dumps(chat("What is Norwich City's nickname?", "The Canaries.", context=42)),
    ]
    src = tmp_path / "mine.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")

    invoke("import", str(src), str(cfg), "--format", "chatml", "--context-field", "context")
    samples = list(store.iter_records("import", Sample))
    assert [s.instruction for s in samples] == [
        "When was Norwich City founded?",
        "Where does Norwich City play its home games?",
    ]
    assert samples[0].provenance.context == CONTEXT and samples[0].provenance.source_path == str(src)
    assert json.loads(samples[0].provenance.teacher_calls[0].raw_output)["messages"][1]["content"].endswith("1902.")
    rejects = {r.record_id: r for r in store.iter_rejects("import")}
    assert {k: r.reason for k, r in rejects.items()} == {
        "mine.jsonl:2": "malformed_row",
        "mine.jsonl:3": "malformed_row",
        "mine.jsonl:6": "malformed_row",
        "mine.jsonl:7": f"duplicate_of:{samples[0].id}",
        "mine.jsonl:8": "malformed_row",
    }
    assert "line 2: not valid JSON" in rejects["mine.jsonl:2"].detail and str(src) in rejects["mine.jsonl:2"].detail
    assert "end with an assistant turn" in rejects["mine.jsonl:3"].detail
    assert "'robot'" in rejects["mine.jsonl:6"].detail
    assert "line 7 repeats line 1" in rejects["mine.jsonl:7"].detail
    assert "context field 'context' must be a string" in rejects["mine.jsonl:8"].detail
    first = store.read_manifest("import")
    assert first is not None and first["counts"] == {
        "in": 7,
        "out": 2,
        "rejected": 5,
        "pending": 0,
        "shards": 1,
        "shards_reused": 0,
    }

    invoke("import", str(src), str(cfg), "--format", "chatml", "--context-field", "context")
    again = store.read_manifest("import")
    assert again is not None and again["counts"]["out"] == 2 and again["counts"]["shards"] == 1
    assert again["counts"]["shards_reused"] == 1
    assert [s.id for s in store.iter_records("import", Sample)] == [s.id for s in samples]

    # a second file adds a shard beside the first; the filter reads both
    other = tmp_path / "more.jsonl"
    other.write_text(
        json.dumps(chat("What is Norwich City's nickname?", "Norwich City is nicknamed the Canaries.", context=CONTEXT))
        + "\n"
        + json.dumps(chat("According to the text, when was it founded?", "It was founded in 1902.", context=CONTEXT))
        + "\n",
        encoding="utf-8",
    )
    invoke("import", str(other), str(cfg), "--format", "chatml", "--context-field", "context")
    m = store.read_manifest("import")
    assert m is not None and m["counts"]["shards"] == 2 and m["counts"]["out"] == 4

    invoke("filter", str(cfg))
    kept = [s.instruction for s in store.iter_records("filter", Sample)]
    dropped = [r.reason for r in store.iter_rejects("filter")]
    assert len(kept) == 3 and dropped == ["not_self_contained"]
    invoke("export", str(cfg))
    rows = pq.read_table(store.root / "exports" / "chatml" / "train.parquet").to_pylist()
    assert len(rows) == len(kept)


def test_sharegpt_alpaca_dpo_and_parquet(tmp_path: Path) -> None:
    cfg, store = setup(tmp_path)
    share = tmp_path / "share.jsonl"
    share.write_text(
        json.dumps(
            {
                "conversations": [
                    {"from": "system", "value": "You answer questions about English football."},
                    {"from": "human", "value": "When was Norwich City founded?"},
                    {"from": "gpt", "value": "Norwich City was founded in 1902."},
                ]
            }
        )
        + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello"}]})
        + "\n",
        encoding="utf-8",
    )
    invoke("import", str(share), str(cfg), "--format", "sharegpt")
    [s] = list(store.iter_records("import", Sample))
    assert [m.role for m in s.messages] == ["system", "user", "assistant"] and s.provenance.context == ""
    assert [r.reason for r in store.iter_rejects("import")] == ["malformed_row"]

    alpaca = tmp_path / "alpaca.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"instruction": "Answer from the text.", "input": CONTEXT, "output": "It was founded in 1902."},
                {"instruction": "", "input": "", "output": "Nothing."},
            ]
        ),
        alpaca,
    )
    invoke("import", str(alpaca), str(cfg), "--format", "alpaca", "--context-field", "input")
    by_source = [x for x in store.iter_records("import", Sample) if x.provenance.source_path == str(alpaca)]
    assert len(by_source) == 1 and CONTEXT in by_source[0].messages[0].content  # open-book: the input is shown
    bad = [r for r in store.iter_rejects("import") if r.source_path == str(alpaca)]
    assert [r.record_id for r in bad] == ["alpaca.parquet:2"] and "row 2" in bad[0].detail

    dpo = tmp_path / "dpo.jsonl"
    dpo.write_text(
        json.dumps(
            {
                "prompt": "When was Norwich City founded?",
                "chosen": "Norwich City was founded in 1902.",
                "rejected": "It was founded in 1066.",
            }
        )
        + "\n",
        encoding="utf-8",
    )
    invoke("import", str(dpo), str(cfg), "--format", "dpo")
    [d] = [x for x in store.iter_records("import", Sample) if x.provenance.source_path == str(dpo)]
    assert d.response == "Norwich City was founded in 1902."
    assert json.loads(d.provenance.teacher_calls[0].params)["rejected"] == "It was founded in 1066."
