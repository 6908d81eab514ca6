"""Trainer configs written next to an export, read by the trainers as they are, and the command to run each.

* ``axolotl.yaml``: a whole Axolotl config: the ``datasets:`` (and ``test_datasets:``) entries for
  these files with their field and role mappings, the model's own chat template, loss on assistant
  turns only (``roles_to_train: [assistant]``, ``train_on_eos: turn``), ``rl: dpo`` for pairs, and
  plain training settings to edit. Run: ``axolotl train axolotl.yaml --base-model MODEL``.
* ``dataset_info.json``: LLaMA-Factory's dataset registry for this folder (sharegpt, alpaca and
  ranking entries), so the folder itself is the ``dataset_dir``.
* ``llamafactory.yaml``: a LLaMA-Factory training config over those entries (LoRA, ``stage: sft``,
  ``dpo`` for pairs, ``pt`` for text), without ``template``: LLaMA-Factory then parses the model's own
  chat template. Run: ``llamafactory-cli train llamafactory.yaml model_name_or_path=MODEL``.

The model is the user's choice, so it is given on the command line; tests run these very files
(tests/integration/test_trainer_axolotl.py, test_trainer_llamafactory.py).
"""

from __future__ import annotations

from typing import Any

from datapipe.export.options import ExportResult

DEFAULT_SEQUENCE_LEN = 2048


def _name(fmt: str, split: str) -> str:
    return f"datapipe_{fmt}" + ("" if split == "train" else f"_{split}")


def axolotl_file(result: ExportResult, entries: dict[str, Any]) -> dict[str, Any]:
    """The whole ``axolotl.yaml``: ``entries`` (the ``datasets:`` block) plus what ``axolotl train`` needs."""
    cfg: dict[str, Any] = {}
    if result.fmt in ("chatml", "sharegpt", "dpo"):
        cfg["chat_template"] = "tokenizer_default"  # the base model's own template, as format text uses
    cfg.update(entries)
    run = f"datapipe-{result.fmt}"
    cfg.update(
        {
            "sequence_len": result.options.max_seq_len or DEFAULT_SEQUENCE_LEN,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 4,
            "num_epochs": 1,
            "learning_rate": 2.0e-5,
            "optimizer": "adamw_torch",
            "lr_scheduler": "cosine",
            "bf16": "auto",  # bf16 where the GPU has it (on a CPU Axolotl then picks fp16: pass --bf16 false)
            "dataset_prepared_path": f"last_run_prepared/{run}",
            "output_dir": f"outputs/{run}",
        }
    )
    return cfg


def llamafactory_file(result: ExportResult) -> dict[str, Any]:
    """The ``llamafactory.yaml`` training config over this folder's ``dataset_info.json``."""
    stage = {"dpo": "dpo", "text": "pt"}.get(result.fmt, "sft")
    cfg: dict[str, Any] = {
        "stage": stage,
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "dataset_dir": str(result.out_dir),
        "dataset": _name(result.fmt, "train"),
    }
    if "validation" in result.files:
        cfg["eval_dataset"] = _name(result.fmt, "validation")
    cfg.update(
        {
            "cutoff_len": result.options.max_seq_len or DEFAULT_SEQUENCE_LEN,
            "per_device_train_batch_size": 2,
            "gradient_accumulation_steps": 4,
            "learning_rate": 1.0e-4,
            "num_train_epochs": 1.0,
            "lr_scheduler_type": "cosine",
            "output_dir": f"saves/datapipe-{result.fmt}",
            "report_to": "none",
        }
    )
    return cfg


def commands(result: ExportResult) -> dict[str, str]:
    """The command line per trainer, run from any folder (the configs name absolute paths)."""
    out = result.out_dir
    return {
        "axolotl": f"axolotl train {out}/axolotl.yaml --base-model MODEL",
        "llamafactory": f"llamafactory-cli train {out}/llamafactory.yaml model_name_or_path=MODEL",
        "trl": f"python {out}/trl_example.py",
    }
