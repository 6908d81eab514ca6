"""LLaMA-Factory's own code on datapipe's exports: an export folder is LLaMA-Factory's ``dataset_dir``
(its ``dataset_info.json``) and its ``llamafactory.yaml`` the training config, read unchanged by
LLaMA-Factory 0.9.5 in its own venv (``.venv-llamafactory``, scripts/llamafactory/setup.sh). The tests
run its argument parsing, dataset loading, format conversion, tokenisation and label masking
(tests/trainers/llamafactory_facts.py: ``get_train_args``, ``load_tokenizer``,
``get_template_and_fix_tokenizer``, ``get_dataset``) and one ``llamafactory-cli train`` step on CPU.

That venv has torchaudio without its CUDA extension and no torchvision (see the setup script): the
text data path imports torchaudio but never calls it. The model is a tiny random Llama with
SmolLM2-135M-Instruct's real tokenizer (tests/trainers/make_tiny_model.py); no ``template`` is given,
so LLaMA-Factory parses the tokenizer's chat template, as the written config does.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml

from datapipe.export import ExportResult, trainers
from tests.integration.test_trainer_axolotl import _export, messages_of, samples
from tests.trainer_kit import facts_from, run_trainer, smollm2_model
from tests.unit.test_export import SYSTEM, make_pair

pytestmark = pytest.mark.integration
EOT = "<|im_end|>\n"  # LLaMA-Factory's ChatML assistant slot ends with the newline after <|im_end|>


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm2_model("llamafactory", tmp_path_factory.mktemp("llamafactory-model") / "smollm2-tiny")


@pytest.fixture(scope="module")
def tok(model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model), local_files_only=True)


def lf_facts(result: ExportResult, model: Path, tmp_path: Path) -> dict[str, Any]:
    """What LLaMA-Factory builds from the export's own llamafactory.yaml, the model given as on the
    command line."""
    args = yaml.safe_load((result.out_dir / "llamafactory.yaml").read_text())
    args |= {"model_name_or_path": str(model), "output_dir": str(tmp_path / "lf-out"), "overwrite_cache": True}
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = run_trainer("llamafactory", ["llamafactory_facts.py", json.dumps(args)], tmp_path)
    return facts_from(out, "LLAMAFACTORY_FACTS")


def sft_view(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter((r["text"], tuple(r["trained"])) for r in rows)


def expected_sft(tok: Any, convs: list[list[dict[str, str]]]) -> Counter[tuple[Any, ...]]:
    return Counter(
        (tok.apply_chat_template(c, tokenize=False), tuple(m["content"] + EOT for m in c if m["role"] == "assistant"))
        for c in convs
    )


@pytest.mark.parametrize("fmt", ["chatml", "sharegpt"])
def test_llamafactory_tokenises_every_turn_and_trains_only_on_assistant_turns(
    fmt: str, model: Path, tok: Any, tmp_path: Path
) -> None:
    """Every row of the train and eval datasets arrives, rendered exactly as the model's chat template
    renders it (system prompts, both turns of two-turn rows), with labels on the assistant turns only."""
    result = _export(tmp_path, fmt, samples())
    facts = lf_facts(result, model, tmp_path)
    for split, key in (("train", "train"), ("validation", "eval")):
        convs = messages_of(Path(result.files[split]), fmt)
        assert len(facts[key]) == result.rows[split] == len(convs)
        assert sft_view(facts[key]) == expected_sft(tok, convs)
    texts = [r["text"] for r in facts["train"] + facts["eval"]]
    assert sum(f"<|im_start|>system\n{SYSTEM}<|im_end|>" in t for t in texts) == 4


def test_llamafactory_alpaca_gives_the_same_training_rows_as_sharegpt(model: Path, tmp_path: Path) -> None:
    """The alpaca export's ``system`` and ``history`` columns carry the whole conversation: LLaMA-Factory
    builds the same token ids and label masks from it as from the sharegpt export of the same samples."""
    recs = samples()
    alpaca = lf_facts(_export(tmp_path, "alpaca", recs), model, tmp_path / "a")
    sharegpt = lf_facts(_export(tmp_path, "sharegpt", recs), model, tmp_path / "s")
    for key in ("train", "eval"):
        assert Counter(json.dumps(r, sort_keys=True) for r in alpaca[key]) == Counter(
            json.dumps(r, sort_keys=True) for r in sharegpt[key]
        )
    assert any(len(r["trained"]) == 2 for r in alpaca["train"] + alpaca["eval"])


def test_text_export_equals_llamafactorys_tokenisation(model: Path, tok: Any, tmp_path: Path) -> None:
    """``--format text --tokenizer MODEL`` gives, token for token, the ids LLaMA-Factory trains on for the
    same samples exported as sharegpt (template parsed from the same tokenizer)."""
    recs = samples()
    facts = lf_facts(_export(tmp_path, "sharegpt", recs), model, tmp_path)
    text = _export(tmp_path, "text", recs, tokenizer=str(model))
    for split, key in (("train", "train"), ("validation", "eval")):
        rows = pq.read_table(text.files[split]).to_pylist()
        ours = Counter(tuple(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in rows)
        assert ours == Counter(tuple(r["input_ids"]) for r in facts[key])


def test_llamafactory_ranking_entry_gives_chosen_and_rejected(model: Path, tok: Any, tmp_path: Path) -> None:
    """The dpo export through ``ranking: true`` (sharegpt with ``chosen_turn``/``rejected_turn``) and
    ``stage: dpo``: each pair becomes a chosen and a rejected sequence, both the configured system prompt
    and the question, with only the answer trained."""
    pairs = [make_pair(i) for i in range(8)]
    result = _export(tmp_path, "dpo", pairs, system_prompt=SYSTEM)
    facts = lf_facts(result, model, tmp_path)
    for split, key in (("train", "train"), ("validation", "eval")):
        rows = pq.read_table(result.files[split]).to_pylist()
        assert len(facts[key]) == len(rows) == result.rows[split]
        expected = Counter(
            (
                tok.apply_chat_template(r["prompt"] + [r["chosen_turn"]], tokenize=False),
                r["chosen_turn"]["content"] + EOT,
                tok.apply_chat_template(r["prompt"] + [r["rejected_turn"]], tokenize=False),
                r["rejected_turn"]["content"] + EOT,
            )
            for r in rows
        )
        got = Counter(
            (f["chosen"]["text"], *f["chosen"]["trained"], f["rejected"]["text"], *f["rejected"]["trained"])
            for f in facts[key]
        )
        assert got == expected
        assert all(f["chosen"]["text"].startswith(f"<|im_start|>system\n{SYSTEM}") for f in facts[key])


@pytest.mark.parametrize("fmt", ["sharegpt", "dpo"])
def test_llamafactory_cli_trains_a_step_on_the_written_config(fmt: str, model: Path, tmp_path: Path) -> None:
    """``llamafactory-cli train llamafactory.yaml model_name_or_path=MODEL`` (the command the card prints)
    with one step on CPU: LoRA on the tiny model, SFT on sharegpt, DPO on the pairs; it saves the adapter."""
    records = [make_pair(i) for i in range(8)] if fmt == "dpo" else samples()
    result = _export(tmp_path, fmt, records, **({"system_prompt": SYSTEM} if fmt == "dpo" else {}))
    out_dir = tmp_path / "saves"
    command = shlex.split(trainers.commands(result)["llamafactory"].replace("MODEL", str(model)))
    assert command[:3] == ["llamafactory-cli", "train", str(result.out_dir / "llamafactory.yaml")]
    one_step = ["max_steps=1", "per_device_train_batch_size=1", "gradient_accumulation_steps=1"]
    one_step.append(f"output_dir={out_dir}")
    out = run_trainer("llamafactory", [*command, *one_step], tmp_path)
    assert "train_loss" in out
    assert (out_dir / "adapter_model.safetensors").is_file()
