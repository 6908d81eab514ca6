"""The full flow over the shared corpus (and its awkward files) with the embedded teacher.

`datapipe run` runs extract -> chunk -> generate -> filter -> export as a Prefect flow
(Prefect's ephemeral local API). Generation is kept short so this takes a few minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.records import Chunk, Document, Reject, Sample
from datapipe.store import RunStore
from tests.conftest import FAST_GENERATE, TINY_TEACHER_FILTER, write_config
from tests.trainer_kit import sft_args, tiny_model_and_tokenizer, tiny_tokenizer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, corpus_docs: Path, bad_inputs: Path) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("full")
    cfg = write_config(
        tmp / "pipeline.yaml",
        run_id="full",
        store=str(tmp / "runs"),
        sources=[str(corpus_docs), str(bad_inputs)],
        generate={**FAST_GENERATE, "max_chunks": 20},
        filter=TINY_TEACHER_FILTER,
    )
    result = runner.invoke(app, ["run", str(cfg)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"cfg": cfg, "store": RunStore(tmp / "runs" / "full"), "output": result.output}


def test_summary_is_printed(run: dict[str, object]) -> None:
    out = str(run["output"])
    for word in (
        "extract",
        "chunk",
        "generate",
        "filter",
        "export",
        "rejects by reason",
        "tokens",
        "cached",
        "wall time",
    ):
        assert word in out
    assert "train.parquet" in out


def test_every_document_accounted_for(run: dict[str, object], corpus_docs: Path, bad_inputs: Path) -> None:
    store: RunStore = run["store"]  # type: ignore[assignment]
    docs = {Path(d.source_path).name for d in store.iter_records("extract", Document)}
    rejects = {Path(r.source_path or "").name: r.reason for r in store.iter_rejects("extract")}
    assert docs >= {p.name for p in corpus_docs.iterdir()}
    assert rejects["password.pdf"] == "encrypted"
    assert rejects["empty.txt"] == "empty_file"
    assert rejects["fake-text-all-whitespace.txt"] == "no_text"
    assert rejects["fake-power-point-malformed.pptx"] == "too_little_text"
    assert "fake-html-cp1252.html" in docs
    all_inputs = {p.name for p in corpus_docs.iterdir()} | {p.name for p in bad_inputs.iterdir()}
    assert docs | set(rejects) == all_inputs and not docs & set(rejects)


def test_every_chunk_and_sample_accounted_for(run: dict[str, object]) -> None:
    store: RunStore = run["store"]  # type: ignore[assignment]
    chunks = {c.id: c for c in store.iter_records("chunk", Chunk)}
    samples = list(store.iter_records("generate", Sample))
    gen_rejects = list(store.iter_rejects("generate"))
    covered = {s.provenance.chunk_id for s in samples}
    for r in gen_rejects:
        covered.add(r.record_id if r.record_id in chunks else json.loads(r.payload)["chunk_id"])
    assert covered == set(chunks)
    assert len({s.id for s in samples}) == len(samples)
    kept = list(store.iter_records("filter", Sample))
    filt_rejects = list(store.iter_rejects("filter"))
    assert {s.id for s in kept} | {r.record_id for r in filt_rejects} == {s.id for s in samples}
    assert all(r.reason and r.detail for r in filt_rejects + gen_rejects)
    for r in gen_rejects:
        if r.reason == "parse_error":
            assert json.loads(r.payload)["raw_output"] is not None


def test_samples_carry_provenance(run: dict[str, object], corpus_docs: Path, bad_inputs: Path) -> None:
    store: RunStore = run["store"]  # type: ignore[assignment]
    chunks = {c.id: c for c in store.iter_records("chunk", Chunk)}
    docs = {d.id: d for d in store.iter_records("extract", Document)}
    kept = list(store.iter_records("filter", Sample))
    assert kept, "the embedded teacher produced no sample that passed the filters"
    for s in kept:
        p = s.provenance
        chunk = chunks[p.chunk_id]
        assert p.context == chunk.text == docs[p.document_id].text[p.char_start : p.char_end]
        assert Path(p.source_path).parent in (corpus_docs, bad_inputs)
        assert [c.step for c in p.teacher_calls] == ["questions", "answer"]
        for call in p.teacher_calls:
            assert call.prompt_version == "v2" and len(call.prompt_hash) == 16  # the newest prompts are the default
            assert call.model == "SmolLM2-135M-Instruct.Q4_1.gguf" and call.raw_output
        assert s.response in p.teacher_calls[1].raw_output


def test_chatml_export_loads_in_datasets_and_trl(run: dict[str, object]) -> None:
    import datasets
    from trl.data_utils import apply_chat_template, is_conversational

    store: RunStore = run["store"]  # type: ignore[assignment]
    path = store.root / "exports" / "chatml" / "train.parquet"
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    kept = {s.id for s in store.iter_records("filter", Sample)}
    assert set(ds["id"]) == kept
    messages_feature = ds.features["messages"]
    inner = messages_feature.feature if hasattr(messages_feature, "feature") else messages_feature[0]
    assert inner["role"].dtype == "string" and inner["content"].dtype == "string"
    example = ds[0]
    assert is_conversational(example)
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]

    tok = tiny_tokenizer()
    text = apply_chat_template({"messages": example["messages"]}, tok)["text"]
    assert text.startswith("<|im_start|>user\n" + example["messages"][0]["content"])


def test_sft_trainer_accepts_the_export(run: dict[str, object], tmp_path: Path) -> None:
    """TRL's SFTTrainer trains one step on the exported file (a tiny random GPT-2, CPU)."""
    import datasets
    from trl import SFTTrainer

    store: RunStore = run["store"]  # type: ignore[assignment]
    ds = datasets.load_dataset(
        "parquet", data_files=str(store.root / "exports" / "chatml" / "train.parquet"), split="train"
    )
    model, tok = tiny_model_and_tokenizer()
    trainer = SFTTrainer(model=model, args=sft_args(tmp_path / "sft"), train_dataset=ds, processing_class=tok)
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0


def test_rerun_makes_zero_teacher_calls(run: dict[str, object]) -> None:
    store: RunStore = run["store"]  # type: ignore[assignment]
    before = sorted(pq.read_table(store.root / "exports" / "chatml" / "train.parquet").column("id").to_pylist())
    result = runner.invoke(app, ["run", str(run["cfg"])], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gen = store.read_manifest("generate")
    assert gen is not None and gen["teacher"]["calls"] == 0 and gen["teacher"]["requests"] == 0
    assert gen["counts"]["shards_reused"] == gen["counts"]["shards"]
    after = sorted(pq.read_table(store.root / "exports" / "chatml" / "train.parquet").column("id").to_pylist())
    assert after == before


def test_rejects_are_never_silent(run: dict[str, object]) -> None:
    store: RunStore = run["store"]  # type: ignore[assignment]
    for stage in ("extract", "generate", "filter"):
        m = store.read_manifest(stage)
        assert m is not None
        assert sum(m["rejects_by_reason"].values()) == m["counts"]["rejected"] == len(list(store.iter_rejects(stage)))
        for r in store.iter_rejects(stage):
            assert isinstance(r, Reject) and r.reason
