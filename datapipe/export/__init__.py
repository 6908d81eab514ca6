"""Export: kept samples -> training-ready parquet that trainers load as is.

* ``chatml``: ``messages`` = [{role, content}] — TRL SFTTrainer (conversational),
  Axolotl ``type: chat_template``, Unsloth.
* ``sharegpt``: ``conversations`` = [{from, value}] with human/gpt — LLaMA-Factory, Axolotl.
* ``alpaca``: ``instruction``/``input``/``output`` — LLaMA-Factory alpaca, Axolotl ``alpaca``.
* ``dpo``: ``prompt``/``chosen``/``rejected`` message lists — TRL DPOTrainer (also ORPO, SimPO).

Every row also carries ``id``, the sample id, to trace it back through the run store.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa

from datapipe.records import PreferencePair, Sample

_MSG = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_TURN = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))

SCHEMAS: dict[str, pa.Schema] = {
    "chatml": pa.schema([("id", pa.string()), ("messages", _MSG)]),
    "sharegpt": pa.schema([("id", pa.string()), ("conversations", _TURN)]),
    "alpaca": pa.schema(
        [
            ("id", pa.string()),
            ("instruction", pa.string()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("system", pa.string()),
        ]
    ),
    "dpo": pa.schema(
        [
            ("id", pa.string()),
            ("prompt", _MSG),
            ("chosen", _MSG),
            ("rejected", _MSG),
            ("score_chosen", pa.float64()),
            ("score_rejected", pa.float64()),
        ]
    ),
}
_SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}


def to_row(sample: Sample, fmt: str, system_prompt: str | None = None) -> dict[str, Any]:
    messages = [m.model_dump() for m in sample.messages]
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if fmt == "chatml":
        return {"id": sample.id, "messages": messages}
    if fmt == "sharegpt":
        return {
            "id": sample.id,
            "conversations": [{"from": _SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in messages],
        }
    if fmt == "alpaca":
        return {
            "id": sample.id,
            "instruction": sample.instruction,
            "input": "",
            "output": sample.response,
            "system": system_prompt or "",
        }
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(SCHEMAS)}")


def export_pairs(pairs: Iterable[PreferencePair], out_dir: Path, system_prompt: str | None = None) -> Path:
    """TRL's conversational preference format: ``prompt``/``chosen``/``rejected`` message lists."""
    rows = []
    for p in sorted(pairs, key=lambda p: p.id):
        prompt = [m.model_dump() for m in p.prompt]
        if system_prompt and not any(m["role"] == "system" for m in prompt):
            prompt = [{"role": "system", "content": system_prompt}, *prompt]
        rows.append(
            {
                "id": p.id,
                "prompt": prompt,
                "chosen": [m.model_dump() for m in p.chosen],
                "rejected": [m.model_dump() for m in p.rejected],
                "score_chosen": p.chosen_score,
                "score_rejected": p.rejected_score,
            }
        )
    return _write(rows, "dpo", out_dir)


def export_samples(samples: Iterable[Sample], fmt: str, out_dir: Path, system_prompt: str | None = None) -> Path:
    """Write ``train.parquet`` in ``out_dir``; returns its path."""
    rows = [to_row(s, fmt, system_prompt) for s in sorted(samples, key=lambda s: s.id)]
    return _write(rows, fmt, out_dir)


def _write(rows: list[dict[str, Any]], fmt: str, out_dir: Path) -> Path:
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "train.parquet"
    tmp = out_dir / ".train.parquet.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS[fmt]), tmp)
    tmp.replace(path)
    return path
