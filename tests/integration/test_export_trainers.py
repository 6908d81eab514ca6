"""Our exports fed to a trainer's own data code: TRL's SFTTrainer and DPOTrainer prepare (tokenize, mask)
and train one step on a tiny random GPT-2 on CPU, from the files exactly as written and through the
written `trl_example.py`. The chatml and DPO files of a real run are covered in test_pipeline_full.py and
test_preference.py; here: text, sharegpt and alpaca, the validation split, and the DPO file with every
column. `--push-to-hub` is checked for clear failures (no network, no token)."""

from __future__ import annotations

import copy
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from datapipe.export import ExportOptions, ExportResult, export_records
from tests.conftest import free_port
from tests.trainer_kit import dpo_args, sft_args, tiny_model_and_tokenizer
from tests.unit.test_export import SYSTEM, make_pair, make_run, make_sample

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _export(tmp_path: Path, fmt: str, n: int = 24, **opts: Any) -> ExportResult:
    samples = [make_sample(i, turns=1 + i % 2, system=SYSTEM if i % 3 == 0 else None) for i in range(n)]
    return export_records(samples, ExportOptions(fmt=fmt, split=0.75, **opts), tmp_path / fmt)


def _load_splits(result: ExportResult) -> Any:
    return runpy.run_path(str(result.out_dir / "trl_example.py"), run_name="trl_example")["load_splits"]()


def test_sft_trainer_trains_on_the_text_export(tmp_path: Path) -> None:
    """Format text (SmolLM2's template, EOS included) through TRL's language-modeling path."""
    import datasets
    from trl import SFTTrainer

    result = _export(tmp_path, "text")
    ds = datasets.load_dataset("parquet", data_files={s: str(p) for s, p in result.files.items()})
    assert all(t.rstrip().endswith("<|im_end|>") for t in ds["train"]["text"])
    model, tok = tiny_model_and_tokenizer()
    trainer = SFTTrainer(
        model=model,
        args=sft_args(tmp_path, dataset_text_field="text"),
        train_dataset=ds["train"],
        eval_dataset=ds["validation"],
        processing_class=tok,
    )
    prepared = trainer.train_dataset[0]
    assert prepared["input_ids"] and len(prepared["input_ids"]) <= 256
    assert trainer.train().global_step == 1
    assert trainer.evaluate()["eval_loss"] > 0


@pytest.mark.parametrize("fmt", ["sharegpt", "alpaca"])
def test_sft_trainer_trains_on_the_export_through_trl_example(fmt: str, tmp_path: Path) -> None:
    """`trl_example.py`'s load_splits() turns sharegpt into messages and alpaca into prompt/completion;
    SFTTrainer prepares both splits, trains a step and evaluates on validation."""
    from trl import SFTTrainer

    result = _export(tmp_path, fmt, max_seq_len=4096)
    splits = _load_splits(result)
    assert {s: len(d) for s, d in splits.items()} == result.rows and result.rows["validation"] > 0
    model, tok = tiny_model_and_tokenizer()
    trainer = SFTTrainer(
        model=model,
        args=sft_args(tmp_path),
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tok,
    )
    row = trainer.train_dataset[0]
    if fmt == "alpaca":  # prompt/completion: the prompt is masked out of the loss, the completion is not
        assert -100 in row["labels"] and any(label != -100 for label in row["labels"])
    text = tok.decode(row["input_ids"])
    assert "im _ start | > user" in text or "<|im_start|>user" in text.replace(" ", "")
    assert trainer.train().global_step == 1
    assert trainer.evaluate()["eval_loss"] > 0


def test_dpo_trainer_prepares_the_dpo_file_with_every_column(tmp_path: Path) -> None:
    """The file as written (LLaMA-Factory's single-message columns and the scores included) goes to
    DPOTrainer without selecting columns."""
    import datasets
    from trl import DPOTrainer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    pairs = [make_pair(i) for i in range(8)]
    result = export_records(pairs, ExportOptions(fmt="dpo", split=0.75, system_prompt=SYSTEM), tmp_path / "dpo")
    ds = datasets.load_dataset("parquet", data_files={s: str(p) for s, p in result.files.items()})
    assert "chosen_turn" in ds["train"].column_names and is_conversational(ds["train"][0])
    model, tok = tiny_model_and_tokenizer()
    rendered = maybe_apply_chat_template(ds["train"][0], tok)
    assert rendered["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n")
    args = dpo_args(tmp_path / "out")
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=args,
        train_dataset=ds["train"],
        eval_dataset=ds["validation"],
        processing_class=tok,
    )
    assert trainer.train().global_step == 1


def _push(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    """`datapipe export --push-to-hub` in a fresh process (huggingface_hub reads its settings at import);
    returns the exit code and the output with line wrapping undone."""
    run = make_run(tmp_path, [make_sample(i) for i in range(3)])
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1", **env}
    code = "import sys; from datapipe.cli import app; sys.argv[0] = 'datapipe'; app()"
    args = ["export", str(run), "--push-to-hub", "someone/handbook-sft"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=base, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def test_push_to_hub_without_a_token_says_what_to_set(tmp_path: Path) -> None:
    code, out = _push(tmp_path, {"HF_HUB_OFFLINE": "0"})
    assert code == 2, out
    assert "no Hugging Face token found" in out and "Set HF_TOKEN" in out


def test_push_to_hub_with_an_unreachable_hub_fails_clearly_and_never_prints_the_token(tmp_path: Path) -> None:
    secret = "hf_datapipeTestTokenThatMustNotLeak"
    env = {"HF_HUB_OFFLINE": "0", "HF_TOKEN": secret, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    code, out = _push(tmp_path, env)
    assert code == 2, out
    assert "pushing the export to the Hugging Face hub (someone/handbook-sft) failed" in out
    assert "reachable" in out and secret not in out
