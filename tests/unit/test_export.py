"""Export: every format round-trips through `datasets`, chat templates render as `transformers` renders them,
splits are stable, too-long records are dropped or flagged, and the card and trainer snippets name the real
files and columns."""

from __future__ import annotations

import ast
import json
import runpy
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.config import ExportConfig, PipelineConfig
from datapipe.errors import ConfigError
from datapipe.export import (
    SCHEMAS,
    ExportOptions,
    ExportResult,
    export_records,
    load_tokenizer,
    pair_row,
    sample_row,
    split_of,
)
from datapipe.export.formats import build_table
from datapipe.export.split import split_point, train_mask
from datapipe.records import Candidate, Message, PreferencePair, Provenance, Reject, Sample, TeacherCall
from datapipe.runs import snapshot_config
from datapipe.store import RunStore, StageRecorder
from tests.trainer_kit import CHATML

runner = CliRunner()
SYSTEM = "You answer questions about the staff handbook."


def _provenance(i: int) -> Provenance:
    call = TeacherCall(
        step="answer",
        prompt_name="instruction_answer",
        prompt_version="v1",
        prompt_hash="0123456789abcdef",
        backend="llamacpp",
        model="SmolLM2-135M-Instruct.Q4_1.gguf",
        params='{"temperature": 0.3}',
        raw_output="raw",
        input_tokens=10,
        output_tokens=5,
        cached=False,
    )
    return Provenance(
        source_path=f"/docs/handbook-{i % 3}.pdf",
        document_id=f"d{i % 3}",
        chunk_id=f"c{i}",
        char_start=0,
        char_end=10,
        pages=[1],
        context="context",
        teacher_calls=[call],
    )


def make_sample(i: int, turns: int = 1, system: str | None = None, words: int | None = None) -> Sample:
    """A sample with ``turns`` user/assistant exchanges; the answer grows with ``i`` (or has ``words`` words)."""
    n = words if words is not None else 3 + (i % 9) * 6
    messages = [Message(role="system", content=system)] if system else []
    for t in range(turns):
        messages.append(Message(role="user", content=f"Question {t} about clause {i}: what applies to leave?"))
        messages.append(Message(role="assistant", content=f"Answer {t}: " + " ".join(["leave"] * n) + "."))
    last_user = [m for m in messages if m.role == "user"][-1]
    return Sample(
        id=f"sample-{i:05d}",
        kind="instruction",
        instruction=last_user.content,
        response=messages[-1].content,
        messages=messages,
        provenance=_provenance(i),
    )


def make_samples(n: int, start: int = 0) -> list[Sample]:
    return [make_sample(i) for i in range(start, start + n)]


def make_pair(i: int) -> PreferencePair:
    prompt = [Message(role="user", content=f"How many leave days apply in case {i}?")]
    good, bad = f"Twenty days apply in case {i}.", "No idea."
    return PreferencePair(
        id=f"pair-{i:05d}",
        sample_id=f"sample-{i:05d}",
        prompt=prompt,
        chosen=[Message(role="assistant", content=good)],
        rejected=[Message(role="assistant", content=bad)],
        chosen_score=5.0,
        rejected_score=1.0,
        margin=4.0,
        candidates=[
            Candidate(text=good, source="original", backend="llamacpp", model="m.gguf", params="{}", score=5.0),
            Candidate(text=bad, source="teacher", backend="llamacpp", model="m.gguf", params="{}", score=1.0),
        ],
        judge_model="m.gguf",
        judge_prompt="preference_judge@v1#abc",
        provenance=_provenance(i),
    )


def make_run(tmp_path: Path, samples: list[Sample], pairs: list[PreferencePair] | None = None, **export: Any) -> Path:
    """A run folder (config.json) whose filter stage kept ``samples`` and rejected one, through a real RunStore."""
    cfg = PipelineConfig(
        run_id="exp",
        store=str(tmp_path / "runs"),
        sources=[str(tmp_path / "docs")],
        export=ExportConfig(**export),
        base_dir=tmp_path,
    )
    snapshot_config(cfg)
    store = RunStore(cfg.run_dir)
    rec = StageRecorder(store, "filter", "cfg")
    dropped = Reject(stage="filter", record_id="sample-x", reason="too_short", detail="3 chars", source_path="/d.pdf")
    store.write_shard("filter", "kept", Sample.to_table(samples), [dropped])
    rec.add("kept", ["gen"], len(samples) + 1, len(samples), 1, 0.1, False)
    rec.extra["teacher"] = {"backend": "llamacpp", "model": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    rec.finish()
    if pairs is not None:
        prec = StageRecorder(store, "preference", "cfg")
        store.write_shard("preference", "pairs", PreferencePair.to_table(pairs), [])
        prec.add("pairs", ["kept"], len(pairs), len(pairs), 0, 0.1, False)
        prec.finish()
    return cfg.run_dir


def export(records: list[Any], tmp_path: Path, **opts: Any) -> ExportResult:
    opts.setdefault("token_lengths", False)
    return export_records(records, ExportOptions(**opts), tmp_path / "out")


def _gguf_template() -> str:
    template = load_tokenizer(None).chat_template
    assert template
    return template


def _hf_tokenizer(template: str | None = None) -> Any:
    from transformers import AutoTokenizer

    from datapipe.chunk import default_model_path

    tok = AutoTokenizer.from_pretrained(default_model_path())
    tok.chat_template = template
    return tok


def _expected(fmt: str) -> Any:
    import datasets

    msg = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    s = datasets.Value("string")
    return datasets.Features(
        {
            "chatml": {"id": s, "messages": datasets.List(msg)},
            "sharegpt": {"id": s, "conversations": datasets.List({"from": s, "value": s})},
            "alpaca": {
                "id": s,
                "instruction": s,
                "input": s,
                "output": s,
                "system": s,
                "history": datasets.List(datasets.List(s)),
            },
            "dpo": {
                "id": s,
                "prompt": datasets.List(msg),
                "chosen": datasets.List(msg),
                "rejected": datasets.List(msg),
                "chosen_turn": msg,
                "rejected_turn": msg,
                "score_chosen": datasets.Value("float64"),
                "score_rejected": datasets.Value("float64"),
            },
            "text": {"id": s, "text": s},
        }[fmt]
    )


@pytest.mark.parametrize("fmt", ["chatml", "sharegpt", "alpaca", "dpo", "text"])
def test_each_format_round_trips_through_datasets(fmt: str, tmp_path: Path) -> None:
    import datasets

    records: list[Any] = [make_pair(i) for i in range(6)] if fmt == "dpo" else make_samples(6)
    result = export(records, tmp_path, fmt=fmt, system_prompt=SYSTEM)
    ds = datasets.load_dataset("parquet", data_files=str(result.files["train"]), split="train")
    assert ds.features == _expected(fmt)
    assert ds["id"] == sorted(r.id for r in records)
    first = ds[0]
    if fmt == "chatml":
        assert first["messages"] == [{"role": "system", "content": SYSTEM}] + [
            m.model_dump() for m in records[0].messages
        ]
    elif fmt == "sharegpt":
        assert [t["from"] for t in first["conversations"]] == ["system", "human", "gpt"]
    elif fmt == "alpaca":
        s = records[0]
        assert (first["instruction"], first["output"], first["system"]) == (s.instruction, s.response, SYSTEM)
    elif fmt == "dpo":
        p = records[0]
        assert first["prompt"][0] == {"role": "system", "content": SYSTEM}
        assert first["chosen"] == [m.model_dump() for m in p.chosen]
        assert first["chosen_turn"] == p.chosen[-1].model_dump() and first["score_rejected"] == p.rejected_score
    else:
        assert first["text"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
        assert first["text"].endswith(records[0].response + "<|im_end|>\n")


@pytest.mark.parametrize("fmt", ["chatml", "sharegpt", "alpaca", "dpo"])
def test_columnar_tables_equal_the_row_builders(fmt: str) -> None:
    """The fast column-by-column table and the per-row dicts describe the same data."""
    records: list[Any] = (
        [make_pair(i) for i in range(5)] if fmt == "dpo" else [make_sample(i, turns=1 + i % 3) for i in range(5)]
    )
    rows = [pair_row(r, SYSTEM) if fmt == "dpo" else sample_row(r, fmt, SYSTEM) for r in records]
    assert build_table(fmt, records, SYSTEM).equals(pa.Table.from_pylist(rows, schema=SCHEMAS[fmt]))


def test_multi_turn_samples_keep_every_turn(tmp_path: Path) -> None:
    s = make_sample(1, turns=3, system="Be brief.")
    chatml = sample_row(s, "chatml", "ignored: the sample has its own system turn")
    assert [m["role"] for m in chatml["messages"]] == ["system"] + ["user", "assistant"] * 3
    sharegpt = sample_row(s, "sharegpt")
    assert [t["from"] for t in sharegpt["conversations"]] == ["system"] + ["human", "gpt"] * 3
    alpaca = sample_row(s, "alpaca")
    assert alpaca["system"] == "Be brief." and len(alpaca["history"]) == 2
    assert alpaca["history"][0] == [s.messages[1].content, s.messages[2].content]
    assert (alpaca["instruction"], alpaca["output"]) == (s.messages[-2].content, s.messages[-1].content)
    text = export([s], tmp_path, fmt="text")
    rendered = pq.read_table(text.files["train"]).column("text")[0].as_py()
    assert rendered.count("<|im_start|>assistant\n") == 3 and rendered.startswith("<|im_start|>system\nBe brief.")


def test_wrong_record_type_for_the_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use format dpo"):
        export([make_pair(1)], tmp_path, fmt="chatml")
    with pytest.raises(ValueError, match="unknown export format"):
        export(make_samples(1), tmp_path, fmt="jsonl")


CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is the leave policy?"}, {"role": "assistant", "content": "20 days."}],
    "system+multi": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": 'Quote "this" & <that>'},
        {"role": "assistant", "content": "Ünïcödé ✓"},
    ],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_text_from_smollm2_gguf_equals_transformers_apply_chat_template(name: str) -> None:
    """The template embedded in the SmolLM2 GGUF renders exactly as `transformers` renders it."""
    messages = CONVERSATIONS[name]
    tok = load_tokenizer(None)
    assert tok.kind == "gguf" and tok.eos_token == "<|im_end|>"
    ours = tok.render(messages)
    theirs = _hf_tokenizer(_gguf_template()).apply_chat_template(messages, tokenize=False)
    assert ours == theirs
    assert ours.rstrip().endswith("<|im_end|>")  # the EOS is in the text, not appended twice
    if name == "single":
        assert ours.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")


def test_hf_folder_tokenizer_renders_like_transformers_and_adds_a_missing_eos(tmp_path: Path) -> None:
    mistral_like = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    messages = CONVERSATIONS["single"]
    for name, template in (("with-eos", mistral_like), ("without-eos", CHATML)):
        hf = _hf_tokenizer(template)
        hf.eos_token, hf.bos_token = "[SEP]", "[CLS]"
        folder = tmp_path / name
        hf.save_pretrained(folder)
        tok = load_tokenizer(folder)
        assert tok.kind == "huggingface" and tok.eos_token == "[SEP]"
        expected = hf.apply_chat_template(messages, tokenize=False)
        if name == "without-eos":
            expected += "[SEP]"
        text = tok.render(messages)
        assert text == expected
        assert tok.count([text]) == [len(hf(text, add_special_tokens=False)["input_ids"])]


def test_gguf_token_counts_are_llama_cpp_counts_of_the_rendered_text(tmp_path: Path) -> None:
    import llama_cpp

    from datapipe.teacher import default_gguf_path

    samples = make_samples(8)
    result = export(samples, tmp_path, fmt="chatml", token_lengths=True)
    template = _gguf_template()
    llm = llama_cpp.Llama(model_path=default_gguf_path(), vocab_only=True, n_ctx=8, verbose=False)
    hf = _hf_tokenizer(template)
    for s in samples:
        text = hf.apply_chat_template([m.model_dump() for m in s.messages], tokenize=False)
        assert result.n_tokens[s.id] == len(llm.tokenize(text.encode(), add_bos=False, special=True))
    counts = sorted(result.n_tokens.values())  # type: ignore[type-var]
    assert result.lengths is not None
    assert (result.lengths["min"], result.lengths["max"], result.lengths["count"]) == (counts[0], counts[-1], 8)


def test_missing_or_wrong_tokenizer_paths_say_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tok.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a .gguf"):
        load_tokenizer(tmp_path / "tok.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="Hugging Face tokenizer folder"):
        load_tokenizer(tmp_path / "empty")


def test_text_format_needs_a_chat_template(tmp_path: Path) -> None:
    folder = tmp_path / "minilm"
    _hf_tokenizer(None).save_pretrained(folder)
    with pytest.raises(ConfigError, match="no chat template"):
        export(make_samples(1), tmp_path, fmt="text", tokenizer=str(folder))
    # lengths still work without a template: the contents are counted
    result = export(make_samples(2), tmp_path, fmt="chatml", tokenizer=str(folder), token_lengths=True)
    assert result.lengths is not None and result.lengths["min"] > 0


def _ids_by_split(result: ExportResult) -> dict[str, set[str]]:
    return {s: set(pq.read_table(p).column("id").to_pylist()) for s, p in result.files.items()}


def test_split_is_stable_across_exports_and_added_samples(tmp_path: Path) -> None:
    first = _ids_by_split(export(make_samples(300), tmp_path / "a", fmt="chatml", split=0.8))
    again = _ids_by_split(export(make_samples(300), tmp_path / "b", fmt="chatml", split=0.8))
    assert first == again
    grown = _ids_by_split(export(make_samples(300) + make_samples(200, start=1000), tmp_path / "c", split=0.8))
    for split in ("train", "validation"):
        assert first[split] <= grown[split]
    other_format = _ids_by_split(export(make_samples(300), tmp_path / "d", fmt="alpaca", split=0.8))
    assert other_format == first
    assert 30 <= len(first["validation"]) <= 90  # ~20% of 300


def test_split_fraction_is_respected_and_raising_it_only_moves_records_into_train() -> None:
    ids = [f"id-{i}" for i in range(4000)]
    at_90 = train_mask(ids, 0.9)
    at_95 = train_mask(ids, 0.95)
    assert 4000 * 0.07 <= at_90.count(False) <= 4000 * 0.13
    assert all(b for a, b in zip(at_90, at_95, strict=True) if a)  # train stays train
    assert at_90 == [split_of(i, 0.9) == "train" for i in ids]
    assert all(0.0 <= split_point(i) < 1.0 for i in ids[:50])
    assert train_mask(ids[:5], 1.0) == [True] * 5


def test_no_validation_file_when_split_is_one(tmp_path: Path) -> None:
    export(make_samples(40), tmp_path, split=0.5)
    assert (tmp_path / "out" / "validation.parquet").exists()
    result = export(make_samples(40), tmp_path, split=1.0)
    assert list(result.files) == ["train"] and not (tmp_path / "out" / "validation.parquet").exists()
    assert result.rows == {"train": 40}


def test_an_empty_validation_split_is_reported_not_written(tmp_path: Path) -> None:
    """`datasets` cannot load an empty parquet split, so none is written; the manifest and card say so."""
    samples = [s for s in make_samples(40) if split_of(s.id, 0.9) == "train"][:5]
    result = export(samples, tmp_path, split=0.9)
    assert list(result.files) == ["train"] and result.empty_splits() == ["validation"]
    assert "validation.parquet was not written" in (result.out_dir / "README.md").read_text()
    assert "test_datasets" not in yaml.safe_load((result.out_dir / "axolotl.yaml").read_text())


def _run_export(run: Path, **kwargs: Any) -> dict[str, Any]:
    from datapipe.pipeline import run_export
    from datapipe.runs import load_target

    return run_export(load_target(run), **kwargs)


def test_too_long_samples_are_dropped_to_rejects_with_their_reason(tmp_path: Path) -> None:
    samples = make_samples(30)
    run = make_run(tmp_path, samples)
    full = _run_export(run, fmt="chatml")
    lengths = full["token_lengths"]
    assert lengths["count"] == 30 and lengths["min"] < lengths["median"] <= lengths["p95"] <= lengths["max"]
    limit = int(lengths["median"])
    m = _run_export(run, fmt="chatml", max_seq_len=limit)
    store = RunStore(run)
    rejects = list(store.iter_rejects("export"))
    assert rejects and all(r.reason == "too_long_for_max_seq_len" and r.stage == "export" for r in rejects)
    assert all(
        json.loads(r.payload)["id"] == r.record_id and "tokens > export.max_seq_len" in r.detail for r in rejects
    )
    assert m["rejects_by_reason"] == {"too_long_for_max_seq_len": len(rejects)}
    assert m["counts"]["in"] == 30 and m["counts"]["out"] + m["counts"]["rejected"] == 30
    kept = set(pq.read_table(m["path"]).column("id").to_pylist())
    dropped = {r.record_id for r in rejects}
    assert kept | dropped == {s.id for s in samples} and not kept & dropped
    counts = {s: n for s, n in zip(*_token_index(store, m), strict=True)}
    assert all(counts[i] <= limit for i in kept) and all(counts[r.record_id] > limit for r in rejects)


def _token_index(store: RunStore, manifest: dict[str, Any]) -> tuple[list[str], list[int]]:
    table = pq.read_table(store.shard_path("export", manifest["shards"][0]["key"]))
    return table.column("id").to_pylist(), table.column("n_tokens").to_pylist()


def test_too_long_samples_can_be_flagged_instead(tmp_path: Path) -> None:
    run = make_run(tmp_path, make_samples(20), on_too_long="flag")
    m = _run_export(run, fmt="sharegpt", max_seq_len=60)
    table = pq.read_table(m["path"])
    assert table.num_rows == 20 and m["counts"]["rejected"] == 0
    assert table.schema.field("too_long").type == pa.bool_() and table.schema.field("n_tokens").type == pa.int32()
    rows = table.to_pylist()
    assert sum(r["too_long"] for r in rows) == m["flagged_too_long"] > 0
    assert all(r["too_long"] == (r["n_tokens"] > 60) for r in rows)


def test_re_export_reuses_token_counts_from_the_run_store(tmp_path: Path) -> None:
    run = make_run(tmp_path, make_samples(10))
    first = _run_export(run, fmt="chatml", split=0.5)
    again = _run_export(run, fmt="chatml", split=0.7)  # the split does not change the counts
    assert first["counts"]["shards_reused"] == 0 and again["counts"]["shards_reused"] == 1
    assert first["token_lengths"] == again["token_lengths"]
    other = _run_export(run, fmt="chatml", max_seq_len=40)
    assert other["counts"]["shards_reused"] == 0


def test_max_seq_len_needs_token_lengths() -> None:
    with pytest.raises(ValueError, match="token_lengths"):
        ExportConfig(max_seq_len=100, token_lengths=False)
    with pytest.raises(ValueError):
        ExportConfig(split=0)


def test_dataset_card_is_what_the_hub_and_datasets_read(tmp_path: Path) -> None:
    import datasets
    from huggingface_hub import DatasetCard

    run = make_run(tmp_path, make_samples(40), license="cc-by-4.0", language=["en"], split=0.8)
    m = _run_export(run, fmt="chatml", max_seq_len=60)
    out = Path(m["out_dir"])
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "cc-by-4.0" and data["language"] == ["en"]
    assert data["task_categories"] == ["text-generation"] and "datapipe" in data["tags"]
    assert data["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "train.parquet"},
                {"split": "validation", "path": "validation.parquet"},
            ],
        }
    ]
    splits = {s["name"]: s["num_examples"] for s in data["dataset_info"]["splits"]}
    assert splits == m["splits"] and sum(splits.values()) == m["counts"]["out"]
    assert [f["name"] for f in data["dataset_info"]["features"]] == ["id", "messages"]
    loaded = datasets.load_dataset(str(out))  # the folder, read through the card's configs
    assert {s: len(d) for s, d in loaded.items()} == splits
    assert loaded["train"].features == _expected("chatml")
    text = card.text
    for fact in ("too_short", "too_long_for_max_seq_len", "llamacpp:SmolLM2-135M-Instruct.Q4_1.gguf", "handbook-0.pdf"):
        assert fact in text
    assert "instruction_answer@v1" in text and str(m["token_lengths"]["p95"]) in text


def _columns(path: Path) -> pa.Schema:
    return pq.read_schema(path)


def _values(path: Path, column: str, key: str) -> set[str]:
    rows = pq.read_table(path, columns=[column]).column(column).to_pylist()
    return {m[key] for row in rows for m in (row if isinstance(row, list) else [row])}


@pytest.mark.parametrize("fmt", ["chatml", "sharegpt", "alpaca", "dpo", "text"])
def test_trainer_snippets_name_the_real_files_and_columns(fmt: str, tmp_path: Path) -> None:
    records: list[Any] = [make_pair(i) for i in range(12)] if fmt == "dpo" else make_samples(12)
    result = export(records, tmp_path, fmt=fmt, split=0.7, system_prompt=SYSTEM)
    out = result.out_dir
    written = {str(p) for p in result.files.values()}
    assert set(result.files) == {"train", "validation"}

    axolotl = yaml.safe_load((out / "axolotl.yaml").read_text())
    entries = axolotl["datasets"] + axolotl.get("test_datasets", [])
    assert {e["path"] for e in entries} == written and len(axolotl["test_datasets"]) == 1
    assert (axolotl.get("rl") == "dpo") == (fmt == "dpo")
    for e in entries:
        schema = _columns(Path(e["path"]))
        assert e["ds_type"] == "parquet"
        for key in ("field_messages", "field_chosen", "field_rejected", "field"):
            if key in e:
                assert e[key] in schema.names
        if "message_property_mappings" in e:
            struct = schema.field(e["field_messages"]).type.value_type
            assert set(e["message_property_mappings"].values()) <= {f.name for f in struct}
            roles = _values(Path(e["path"]), e["field_messages"], e["message_property_mappings"]["role"])
            allowed = {r for rs in e.get("roles", {"x": ["system", "user", "assistant"]}).values() for r in rs}
            assert roles <= allowed
        if e["type"] == "alpaca":
            assert {"instruction", "input", "output"} <= set(schema.names)

    factory = json.loads((out / "dataset_info.json").read_text())
    assert {e["file_name"] for e in factory.values()} == written
    assert set(factory) == {f"datapipe_{fmt}", f"datapipe_{fmt}_validation"}
    lf_cfg = yaml.safe_load((out / "llamafactory.yaml").read_text())
    assert lf_cfg["dataset_dir"] == str(out) and {lf_cfg["dataset"], lf_cfg["eval_dataset"]} == set(factory)
    assert lf_cfg["stage"] == {"dpo": "dpo", "text": "pt"}.get(fmt, "sft")
    for e in factory.values():
        path = Path(e["file_name"])
        schema = _columns(path)
        assert set(e["columns"].values()) <= set(schema.names)
        if e.get("formatting") == "sharegpt":
            tags = e["tags"]
            column = e["columns"]["messages"]
            assert {tags["role_tag"], tags["content_tag"]} <= {f.name for f in schema.field(column).type.value_type}
            roles = _values(path, column, tags["role_tag"])
            assert roles <= {tags["user_tag"], tags["assistant_tag"], tags["system_tag"]}
            if e.get("ranking"):  # LLaMA-Factory reads chosen/rejected as one message each
                for key in ("chosen", "rejected"):
                    assert pa.types.is_struct(schema.field(e["columns"][key]).type)
                    assert _values(path, e["columns"][key], tags["role_tag"]) == {tags["assistant_tag"]}

    source = (out / "trl_example.py").read_text()
    ast.parse(source)
    for path in written:
        assert path in source
    splits = runpy.run_path(str(out / "trl_example.py"), run_name="trl_example")["load_splits"]()
    assert {s: len(d) for s, d in splits.items()} == result.rows
    from trl.data_utils import is_conversational

    expected_columns = {
        "chatml": ["messages"],
        "sharegpt": ["messages"],
        "alpaca": ["prompt", "completion"],
        "dpo": ["prompt", "chosen", "rejected"],
        "text": ["text"],
    }[fmt]
    assert splits["train"].column_names == expected_columns
    assert is_conversational(splits["train"][0]) == (fmt != "text")
    if fmt == "sharegpt":
        assert [m["role"] for m in splits["train"][0]["messages"]] == ["system", "user", "assistant"]


def test_cli_export_writes_splits_card_and_snippets_and_reports_lengths(tmp_path: Path) -> None:
    run = make_run(tmp_path, make_samples(30))
    out = tmp_path / "cli-out"
    args = ["export", str(run), "--format", "sharegpt", "--split", "0.8", "--max-seq-len", "60", "--out", str(out)]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for name in ("train.parquet", "validation.parquet", "README.md", "axolotl.yaml", "trl_example.py"):
        assert (out / name).is_file()
    assert "token lengths (SmolLM2-135M-Instruct.Q4_1.gguf)" in result.output
    assert "dropped" in result.output and "splits: train" in result.output
    m = RunStore(run).read_manifest("export")
    assert m is not None and m["format"] == "sharegpt" and m["path"] == str(out / "train.parquet")
    assert m["counts"]["out"] == sum(m["splits"].values())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "1.5"], "export.split"),
        (["--format", "parquet"], "export.format"),
        (["--on-too-long", "truncate"], "export.on_too_long"),
        (["--tokenizer", "no/such/folder"], "does not exist"),
    ],
    ids=["split", "format", "on-too-long", "tokenizer"],
)
def test_cli_export_refuses_bad_options_naming_them(args: list[str], message: str, tmp_path: Path) -> None:
    run = make_run(tmp_path, make_samples(3))
    result = runner.invoke(app, ["export", str(run), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_dpo_export_reads_the_preference_stage(tmp_path: Path) -> None:
    run = make_run(tmp_path, make_samples(3), pairs=[make_pair(i) for i in range(4)])
    result = runner.invoke(app, ["export", str(run), "--format", "dpo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = pq.read_table(run / "exports" / "dpo" / "train.parquet")
    assert table.num_rows == 4 and table.column("id").to_pylist()[0] == "pair-00000"


def test_push_to_hub_in_offline_mode_fails_saying_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = make_run(tmp_path, make_samples(3))
    result = runner.invoke(app, ["export", str(run), "--push-to-hub", "someone/handbook-sft"])
    assert result.exit_code == 2
    assert "HF_HUB_OFFLINE=0" in result.output and "someone/handbook-sft" in result.output
    assert (run / "exports" / "chatml" / "train.parquet").is_file()  # the local export is still there
