"""Row layouts per export format: the columns each trainer reads, and the Arrow schema they are written with.

Rows are built from the records' attributes directly (no ``model_dump``): an export of
100,000 samples spends its time in Arrow, not in pydantic.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import pyarrow as pa

from datapipe.records import Message, PreferencePair, Sample

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)
TURNS = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))

SAMPLE_FORMATS = ("chatml", "sharegpt", "alpaca", "text")
FORMATS = ("chatml", "sharegpt", "alpaca", "dpo", "text")

SCHEMAS: dict[str, pa.Schema] = {
    "chatml": pa.schema([("id", pa.string()), ("messages", MESSAGES)]),
    "sharegpt": pa.schema([("id", pa.string()), ("conversations", TURNS)]),
    "alpaca": pa.schema(
        [
            ("id", pa.string()),
            ("instruction", pa.string()),
            ("input", pa.string()),
            ("output", pa.string()),
            ("system", pa.string()),
            ("history", pa.list_(pa.list_(pa.string()))),
        ]
    ),
    "dpo": pa.schema(
        [
            ("id", pa.string()),
            ("prompt", MESSAGES),
            ("chosen", MESSAGES),
            ("rejected", MESSAGES),
            ("chosen_turn", MESSAGE),
            ("rejected_turn", MESSAGE),
            ("score_chosen", pa.float64()),
            ("score_rejected", pa.float64()),
        ]
    ),
    "text": pa.schema([("id", pa.string()), ("text", pa.string())]),
}
"""Columns per format. ``dpo`` carries the preferred and dispreferred answers twice: as TRL's
message lists (``chosen``/``rejected``) and as single messages (``chosen_turn``/``rejected_turn``),
the shape LLaMA-Factory's sharegpt ranking loader requires."""

FLAG_FIELDS = [pa.field("n_tokens", pa.int32()), pa.field("too_long", pa.bool_())]
"""Columns added with ``on_too_long: flag``."""

SHAREGPT_ROLE = {"system": "system", "user": "human", "assistant": "gpt"}

# The columns a trainer needs, per format (``id`` and flag columns are extra).
TRAINING_COLUMNS: dict[str, list[str]] = {
    "chatml": ["messages"],
    "sharegpt": ["conversations"],
    "alpaca": ["instruction", "input", "output", "system", "history"],
    "dpo": ["prompt", "chosen", "rejected"],
    "text": ["text"],
}


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


def _dicts(messages: list[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def with_system(messages: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    """``messages`` with ``system_prompt`` as a leading system turn, unless one is there already."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def conversation(sample: Sample, system_prompt: str | None = None) -> list[dict[str, str]]:
    """Every turn of a sample as ``{role, content}`` dicts, with the configured system prompt."""
    return with_system(_dicts(sample.messages), system_prompt)


def _alpaca(sample: Sample, messages: list[dict[str, str]]) -> dict[str, Any]:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    turns = [m for m in messages if m["role"] != "system"]
    pairs_ok = len(turns) >= 2 and len(turns) % 2 == 0
    pairs_ok = pairs_ok and all(
        turns[i]["role"] == "user" and turns[i + 1]["role"] == "assistant" for i in range(0, len(turns), 2)
    )
    if not pairs_ok:  # not alternating user/assistant: the sample's own instruction and response
        return {
            "instruction": sample.instruction,
            "input": "",
            "output": sample.response,
            "system": system,
            "history": [],
        }
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    return {
        "instruction": turns[-2]["content"],
        "input": "",
        "output": turns[-1]["content"],
        "system": system,
        "history": history,
    }


def sample_row(sample: Sample, fmt: str, system_prompt: str | None = None) -> dict[str, Any]:
    """One sample as a row of ``chatml``, ``sharegpt`` or ``alpaca`` (``text`` needs a chat template)."""
    messages = conversation(sample, system_prompt)
    if fmt == "chatml":
        return {"id": sample.id, "messages": messages}
    if fmt == "sharegpt":
        return {
            "id": sample.id,
            "conversations": [{"from": SHAREGPT_ROLE[m["role"]], "value": m["content"]} for m in messages],
        }
    if fmt == "alpaca":
        return {"id": sample.id, **_alpaca(sample, messages)}
    if fmt == "text":
        raise ValueError("format text renders a chat template: use datapipe.export.export_records with a tokenizer")
    raise ValueError(f"unknown sample export format {fmt!r}; choose one of {', '.join(SAMPLE_FORMATS)}")


def to_row(sample: Sample, fmt: str, system_prompt: str | None = None) -> dict[str, Any]:
    """Kept for callers of the first export API: same as :func:`sample_row`."""
    return sample_row(sample, fmt, system_prompt)


def pair_row(pair: PreferencePair, system_prompt: str | None = None) -> dict[str, Any]:
    """TRL's conversational preference row, plus the last chosen/rejected message alone for LLaMA-Factory."""
    chosen = _dicts(pair.chosen)
    rejected = _dicts(pair.rejected)
    return {
        "id": pair.id,
        "prompt": with_system(_dicts(pair.prompt), system_prompt),
        "chosen": chosen,
        "rejected": rejected,
        "chosen_turn": chosen[-1] if chosen else None,
        "rejected_turn": rejected[-1] if rejected else None,
        "score_chosen": pair.chosen_score,
        "score_rejected": pair.rejected_score,
    }


def _message_lists(convs: Sequence[Sequence[Message]], system_prompt: str | None, role_map: dict[str, str] | None,
                   names: tuple[str, str]) -> pa.Array:  # fmt: skip
    """A ``list<struct<role, content>>`` column from flat role/content lists: no dict per message."""
    if system_prompt:
        system = Message(role="system", content=system_prompt)
        convs = [c if c and c[0].role == "system" else [system, *c] for c in convs]
    roles: list[str] = [m.role for msgs in convs for m in msgs]
    contents = [m.content for msgs in convs for m in msgs]
    offsets = [0, *accumulate(len(msgs) for msgs in convs)]
    if role_map:
        roles = [role_map[r] for r in roles]
    items = pa.StructArray.from_arrays([pa.array(roles, pa.string()), pa.array(contents, pa.string())], names=names)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items)


def _last_messages(convs: Sequence[Sequence[Message]]) -> pa.Array:
    last = [msgs[-1] if msgs else None for msgs in convs]
    roles = pa.array([m.role if m else None for m in last], pa.string())
    contents = pa.array([m.content if m else None for m in last], pa.string())
    mask = pa.array([m is None for m in last], pa.bool_())
    return pa.StructArray.from_arrays([roles, contents], names=("role", "content"), mask=mask)


def build_table(
    fmt: str,
    records: Sequence[Sample] | Sequence[PreferencePair],
    system_prompt: str | None = None,
    texts: Sequence[str] | None = None,
    extra: dict[str, list[Any]] | None = None,
) -> pa.Table:
    """The export table of ``records`` (in order), column by column.

    Equal to ``pa.Table.from_pylist([sample_row(...) or pair_row(...)], SCHEMAS[fmt])`` (a test keeps
    them in step) but several times faster for the message formats, which is what an export of
    100,000 samples spends its time on. ``texts`` are the rendered strings of format ``text``;
    ``extra`` adds the flag columns.
    """
    ids = pa.array([r.id for r in records], pa.string())
    arrays: list[pa.Array]
    if fmt in ("chatml", "sharegpt"):
        samples: Sequence[Sample] = records  # type: ignore[assignment]
        convs = [s.messages for s in samples]
        if fmt == "chatml":
            arrays = [ids, _message_lists(convs, system_prompt, None, ("role", "content"))]
        else:
            arrays = [ids, _message_lists(convs, system_prompt, SHAREGPT_ROLE, ("from", "value"))]
    elif fmt == "dpo":
        pairs: Sequence[PreferencePair] = records  # type: ignore[assignment]
        chosen = [p.chosen for p in pairs]
        rejected = [p.rejected for p in pairs]
        arrays = [
            ids,
            _message_lists([p.prompt for p in pairs], system_prompt, None, ("role", "content")),
            _message_lists(chosen, None, None, ("role", "content")),
            _message_lists(rejected, None, None, ("role", "content")),
            _last_messages(chosen),
            _last_messages(rejected),
            pa.array([p.chosen_score for p in pairs], pa.float64()),
            pa.array([p.rejected_score for p in pairs], pa.float64()),
        ]
    elif fmt == "text":
        if texts is None or len(texts) != len(records):
            raise ValueError("format text needs one rendered text per record")
        arrays = [ids, pa.array(texts, pa.string())]
    else:
        rows = [sample_row(s, fmt, system_prompt) for s in records]  # type: ignore[arg-type]
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[fmt])
        arrays = list(table.columns)
    fields = list(SCHEMAS[fmt])
    for f in FLAG_FIELDS if extra else []:
        fields.append(f)
        arrays.append(pa.array(extra[f.name], f.type))  # type: ignore[index]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
