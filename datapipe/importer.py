"""Bring your own data: samples made elsewhere (chatml, sharegpt, alpaca or dpo rows in jsonl or parquet)
into a run's ``imported/`` stage, where filter, curate and export read them beside generated samples.

- The file is one shard keyed by its bytes, format and context field: importing the same file again
  changes nothing (``reused``), another file adds a shard.
- A row that is not a valid sample of the format is a ``malformed_row`` reject naming the file and line.
- ``--context-field NAME`` takes the row's ``NAME`` as the sample's context (what the filters check the
  answer against). Without it the context is empty: the context checks then skip the sample.
- The original row is kept in the sample's provenance (a teacher call with step ``import``), so a trained
  row can be traced back to the line it came from.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datapipe.config import PipelineConfig
from datapipe.errors import ConfigError
from datapipe.records import Message, Provenance, Reject, Sample, TeacherCall, content_id
from datapipe.store import RunStore, StageRecorder

FORMATS = ("chatml", "sharegpt", "alpaca", "dpo")
STAGE = "import"
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class MalformedRow(ValueError):
    pass


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MalformedRow(f"{what} must be a non-empty string, got {type(value).__name__}")
    return value


def _turns(raw: Any, what: str, role_key: str = "role", content_key: str = "content") -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise MalformedRow(f"{what} must be a non-empty list of {{{role_key}, {content_key}}} turns")
    out = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise MalformedRow(f"{what}[{i}] is not an object")
        role = turn.get(role_key)
        if role_key == "from":
            role = _SHAREGPT_ROLES.get(str(role).lower())
        if role not in ("system", "user", "assistant"):
            raise MalformedRow(f"{what}[{i}].{role_key} is {turn.get(role_key)!r}; expected system, user or assistant")
        out.append(Message(role=role, content=_text(turn.get(content_key), f"{what}[{i}].{content_key}")))
    return out


def _messages(row: dict[str, Any], fmt: str) -> tuple[list[Message], str | None]:
    """The conversation of a row, and (dpo) the rejected answer."""
    if fmt == "chatml":
        return _turns(row.get("messages"), "messages"), None
    if fmt == "sharegpt":
        return _turns(row.get("conversations"), "conversations", "from", "value"), None
    if fmt == "alpaca":
        instruction = _text(row.get("instruction"), "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise MalformedRow("input must be a string")
        msgs = (
            [Message(role="system", content=row["system"])]
            if isinstance(row.get("system"), str) and row["system"]
            else []
        )
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return [
            *msgs,
            Message(role="user", content=user),
            Message(role="assistant", content=_text(row.get("output"), "output")),
        ], None
    # dpo: prompt/chosen/rejected as strings or message lists
    prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
    msgs = (
        _turns(prompt, "prompt")
        if isinstance(prompt, list)
        else [Message(role="user", content=_text(prompt, "prompt"))]
    )
    if isinstance(chosen, list):
        chosen_turns = _turns(chosen, "chosen")
        chosen = chosen_turns[-1].content if chosen_turns[-1].role == "assistant" else None
    rejected_text = (
        _turns(rejected, "rejected")[-1].content if isinstance(rejected, list) else _text(rejected, "rejected")
    )
    return [*msgs, Message(role="assistant", content=_text(chosen, "chosen"))], rejected_text


def _rows(path: Path) -> Iterator[tuple[int, Any, str]]:
    """(line or row number, parsed row or a MalformedRow, raw text) for a .jsonl/.json lines file or a parquet file."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row, json.dumps(row, ensure_ascii=False, default=str)
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), line.rstrip("\n")
            except json.JSONDecodeError as exc:
                yield i, MalformedRow(f"not valid JSON ({exc.msg} at column {exc.colno})"), line.rstrip("\n")


def row_sample(
    row: Any, fmt: str, context_field: str | None, source: str, document_id: str, line: int, raw: str
) -> Sample:
    """One imported row as a Sample, or MalformedRow saying what is wrong with it."""
    if not isinstance(row, dict):
        raise MalformedRow(f"a row must be a JSON object, got {type(row).__name__}")
    messages, rejected = _messages(row, fmt)
    if messages[-1].role != "assistant":
        raise MalformedRow("the conversation must end with an assistant turn (the answer to train on)")
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise MalformedRow("the conversation has no user turn")
    context = ""
    if context_field:
        value = row.get(context_field)
        if value is not None and not isinstance(value, str):
            raise MalformedRow(f"context field {context_field!r} must be a string, got {type(value).__name__}")
        context = value or ""
    params = {"format": fmt, "line": line, "context_field": context_field}
    if rejected is not None:
        params["rejected"] = rejected
    call = TeacherCall(
        step="import",
        prompt_name="import",
        prompt_version=fmt,
        prompt_hash="",
        backend="import",
        model=str(row.get("model") or "unknown"),
        params=json.dumps(params, ensure_ascii=False),
        raw_output=raw,
        input_tokens=0,
        output_tokens=0,
        cached=False,
    )
    dumped = [m.model_dump() for m in messages]
    return Sample(
        id=content_id("import", dumped, context, rejected),
        kind="instruction",
        instruction=users[0].content,
        response=messages[-1].content,
        messages=messages,
        provenance=Provenance(
            source_path=source,
            document_id=document_id,
            chunk_id=content_id("context", context) if context else "",
            char_start=0,
            char_end=len(context),
            pages=[],
            context=context,
            teacher_calls=[call],
        ),
    )


def read_file(path: Path, fmt: str, context_field: str | None) -> tuple[list[Sample], list[Reject]]:
    """Samples and malformed-row rejects of one file, in file order."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:24]
    samples: list[Sample] = []
    rejects: list[Reject] = []
    for line, row, raw in _rows(path):
        try:
            if isinstance(row, MalformedRow):
                raise row
            samples.append(row_sample(row, fmt, context_field, str(path), digest, line, raw))
        except (MalformedRow, ValueError) as exc:
            what = "row" if path.suffix.lower() == ".parquet" else "line"
            rejects.append(
                Reject(
                    stage=STAGE,
                    record_id=f"{path.name}:{line}",
                    reason="malformed_row",
                    detail=f"{path}, {what} {line}: {exc}; fix the row to the {fmt} format (see README "
                    f"'Bring your own data') and import the file again",
                    source_path=str(path),
                    payload=raw[:10_000],
                )
            )
    return samples, rejects


def run_import(
    cfg: PipelineConfig, path: str | Path, fmt: str, context_field: str | None = None, progress: Any = None
) -> dict[str, Any]:
    """Import one file as a shard of the run's ``import`` stage; earlier imports stay. Returns the manifest."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise ConfigError(f"{path}: no such file; pass a .jsonl or .parquet file of {fmt} rows")
    from datapipe.store import store_for

    store: RunStore = store_for(cfg)
    key = content_id("import", hashlib.sha256(p.read_bytes()).hexdigest(), fmt, context_field, length=24)
    old = store.read_manifest(STAGE) or {}
    rec = StageRecorder(store, STAGE, content_id(fmt, context_field, length=16))
    for s in old.get("shards", []):
        if s["key"] != key:
            rec.add(s["key"], s["inputs"], s["in"], s["out"], s["rejects"], s["seconds"], True)
    t0 = time.perf_counter()
    if store.has_shard(STAGE, key):
        n_out = len(store.read_shard(STAGE, key, Sample))
        n_rej = len(store.read_shard_rejects(STAGE, key))
        rec.add(key, [str(p)], n_out + n_rej, n_out, n_rej, time.perf_counter() - t0, True)
    else:
        samples, rejects = read_file(p, fmt, context_field)
        unique: dict[str, Sample] = {}
        for s in samples:
            if s.id in unique:
                first = json.loads(unique[s.id].provenance.teacher_calls[0].params)["line"]
                line = json.loads(s.provenance.teacher_calls[0].params)["line"]
                rejects.append(
                    Reject(
                        stage=STAGE,
                        record_id=f"{p.name}:{line}",
                        reason=f"duplicate_of:{s.id}",
                        detail=f"{p}, line {line} repeats line {first}",
                        source_path=str(p),
                        payload=s.model_dump_json(),
                    )
                )
            else:
                unique[s.id] = s
        store.write_shard(STAGE, key, Sample.to_table(list(unique.values())), rejects)
        rec.add(
            key,
            [str(p)],
            len(samples) + len(rejects) - (len(samples) - len(unique)),
            len(unique),
            len(rejects),
            time.perf_counter() - t0,
            False,
        )
        rec.extra["last_import"] = {"file": str(p), "format": fmt, "context_field": context_field}
    if progress is not None:
        progress.start(STAGE, 1)
        progress.advance(STAGE, 1)
        progress.done(STAGE)
    return rec.finish()
