"""Runs LLaMA-Factory's own argument parsing, dataset loading and tokenisation on a datapipe export
folder (its ``dataset_info.json`` and parquet files) and prints what LLaMA-Factory produced as JSON.
Run in ``.venv-llamafactory``: ``python llamafactory_facts.py ARGS_JSON``.

LLaMA-Factory code that runs, as ``llamafactory-cli train`` runs it (``run_sft``/``run_dpo`` up to
the model): ``llamafactory.hparams.get_train_args`` (with the same arguments as the command line),
``llamafactory.model.load_tokenizer``, ``llamafactory.data.get_template_and_fix_tokenizer`` and
``llamafactory.data.get_dataset`` (``dataset_info.json`` parsing, the sharegpt/alpaca converters, the
supervised or pairwise processor: tokenisation and label masking).

Per SFT row: the decoded ``input_ids`` and the decoded runs of tokens whose label is not -100. Per
pairwise row: the same for the chosen and the rejected sequence.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    """The maximal runs of consecutive trained positions, as token ids."""
    runs: list[list[int]] = []
    prev = False
    for tid, label in zip(ids, labels, strict=True):
        trained = label != -100
        if trained and not prev:
            runs.append([])
        if trained:
            runs[-1].append(tid)
        prev = trained
    return runs


def _seq(tok: Any, ids: list[int], labels: list[int]) -> dict[str, Any]:
    return {"input_ids": ids, "text": tok.decode(ids), "trained": [tok.decode(r) for r in _runs(ids, labels)]}


def _rows(ds: Any, tok: Any) -> list[dict[str, Any]]:
    if ds is None:
        return []
    out = []
    for row in ds:
        if "chosen_input_ids" in row:
            out.append(
                {
                    "chosen": _seq(tok, row["chosen_input_ids"], row["chosen_labels"]),
                    "rejected": _seq(tok, row["rejected_input_ids"], row["rejected_labels"]),
                }
            )
        else:
            out.append(_seq(tok, row["input_ids"], row["labels"]))
    return out


def main(args_json: str) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    args = json.loads(args_json)
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(args)
    tokenizer_module = load_tokenizer(model_args)
    tok = tokenizer_module["tokenizer"]
    template = get_template_and_fix_tokenizer(tok, data_args)
    stage = {"sft": "sft", "dpo": "rm", "pt": "pt"}[finetuning_args.stage]
    module = get_dataset(template, model_args, data_args, training_args, stage=stage, **tokenizer_module)
    eval_ds = module.get("eval_dataset")
    if isinstance(eval_ds, dict):
        eval_ds = next(iter(eval_ds.values()))
    facts = {"train": _rows(module.get("train_dataset"), tok), "eval": _rows(eval_ds, tok)}
    print("LLAMAFACTORY_FACTS " + json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1])
