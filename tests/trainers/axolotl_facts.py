"""Runs Axolotl's own config loading and dataset preparation on a datapipe ``axolotl.yaml`` and prints
what Axolotl produced as JSON. Run in ``.venv-axolotl``:
``python axolotl_facts.py AXOLOTL_YAML BASE_MODEL WORK_DIR``.

Axolotl code that runs: ``axolotl.cli.config.load_cfg`` (reads and validates the YAML, the
``base_model`` given as a command-line override, exactly as ``axolotl train CONFIG --base-model ...``
does), then ``axolotl.common.datasets.load_datasets`` (SFT: ``prepare_datasets``, the
``chat_template``/``alpaca``/``completion`` prompt strategies, tokenisation and label masking) or
``load_preference_datasets`` (``rl: dpo``: the ``chat_template.default`` DPO strategy).

Per SFT row: the decoded ``input_ids``, the token ids, and the decoded runs of tokens whose label is
not -100 (what the loss is computed on). Per DPO row: the prompt, chosen and rejected strings.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
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


def _rows(ds: Any, tok: Any) -> list[dict[str, Any]]:
    if ds is None:
        return []
    out = []
    for row in ds:
        if "input_ids" in row:
            ids = list(row["input_ids"])
            out.append(
                {
                    "input_ids": ids,
                    "text": tok.decode(ids),
                    "trained": [tok.decode(r) for r in _runs(ids, list(row["labels"]))],
                }
            )
        else:
            out.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
    return out


def main(config: str, base_model: str, work: str) -> None:
    from axolotl.cli.config import load_cfg
    from axolotl.common.datasets import load_datasets, load_preference_datasets
    from axolotl.loaders import load_tokenizer

    cfg = load_cfg(
        config,
        base_model=base_model,
        dataset_prepared_path=str(Path(work) / "prepared"),
        output_dir=str(Path(work) / "out"),
    )
    meta = load_preference_datasets(cfg=cfg) if cfg.rl else load_datasets(cfg=cfg)
    tok = load_tokenizer(cfg)
    facts = {
        "rl": str(cfg.rl) if cfg.rl else None,
        "train": _rows(meta.train_dataset, tok),
        "eval": _rows(meta.eval_dataset, tok),
    }
    print("AXOLOTL_FACTS " + json.dumps(facts))


if __name__ == "__main__":
    main(*sys.argv[1:4])
