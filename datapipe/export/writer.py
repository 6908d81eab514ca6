"""One export: records -> token-length check -> one parquet file per split -> dataset card and snippets."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from upath import UPath

from datapipe.export.card import write_card_and_snippets
from datapipe.export.formats import build_table, check_format, conversation, pair_row, sample_row
from datapipe.export.options import ExportOptions, ExportResult, RunFacts
from datapipe.export.split import SPLITS, train_mask
from datapipe.export.tokenizer import ChatTokenizer, load_tokenizer
from datapipe.fsio import write_table
from datapipe.records import PreferencePair, Reject, Sample

TOO_LONG = "too_long_for_max_seq_len"
_BATCH = 512

ExportRecord = Sample | PreferencePair


def length_stats(values: Sequence[int]) -> dict[str, Any] | None:
    """min / median / p95 / max / mean of token counts (None when there are none)."""
    if not values:
        return None
    arr = np.asarray(values, dtype=np.int64)
    return {
        "count": int(arr.size),
        "min": int(arr.min()),
        "median": round(float(np.median(arr)), 1),
        "p95": round(float(np.percentile(arr, 95)), 1),
        "max": int(arr.max()),
        "mean": round(float(arr.mean()), 1),
    }


def record_facts(records: Sequence[ExportRecord]) -> dict[str, Any]:
    """What the records say about their origin: documents, taxonomy leaves, kinds, prompts, teachers."""
    provs = [r.provenance for r in records]
    docs = {p.source_path for p in provs}
    leaves = {p.taxonomy_path for p in provs} - {None}
    calls = {(c.prompt_name, c.prompt_version, c.backend, c.model) for p in provs for c in p.teacher_calls}
    kinds = Counter(r.kind if isinstance(r, Sample) else "preference_pair" for r in records)
    judges = {f"{r.judge_model} ({r.judge_prompt})" for r in records if isinstance(r, PreferencePair)}
    return {
        "documents": len(docs),
        "document_names": sorted({Path(d).name for d in docs})[:20],
        "taxonomy_leaves": len(leaves),
        "kinds": dict(kinds),
        "prompts": sorted({f"{c[0]}@{c[1]}" for c in calls}),
        "teacher_models": sorted({f"{c[2]}:{c[3]}" for c in calls}),
        "judges": sorted(judges),
    }


def _count_tokens(
    tok: ChatTokenizer,
    fmt: str,
    records: Sequence[Any],
    texts: Sequence[str] | None,
    todo: list[int],
    system_prompt: str | None,
    on_advance: Callable[[int], None],
) -> dict[int, int]:
    """Token counts of the records at ``todo``: of the text the trainer tokenizes for each."""
    out: dict[int, int] = {}
    for start in range(0, len(todo), _BATCH):
        idx = todo[start : start + _BATCH]
        if texts is not None:
            counts = tok.count([texts[i] for i in idx])
        elif fmt == "dpo":
            rows = [pair_row(records[i], system_prompt) for i in idx]
            chosen = tok.count([tok.render_for_length(r["prompt"] + r["chosen"]) for r in rows])
            rejected = tok.count([tok.render_for_length(r["prompt"] + r["rejected"]) for r in rows])
            counts = [max(a, b) for a, b in zip(chosen, rejected, strict=True)]
        else:
            counts = tok.count([tok.render_for_length(conversation(records[i], system_prompt)) for i in idx])
        out.update(zip(idx, counts, strict=True))
        on_advance(len(idx))
    return out


def export_records(
    records: Iterable[ExportRecord],
    options: ExportOptions,
    out_dir: Path | UPath,
    *,
    facts: RunFacts | None = None,
    known_lengths: dict[str, int | None] | None = None,
    on_advance: Callable[[int], None] | None = None,
) -> ExportResult:
    """Write ``records`` in ``options.fmt`` into ``out_dir``: ``train.parquet`` (and ``validation.parquet``
    when ``options.split < 1``), ``README.md`` and the trainer snippets.

    Samples for ``chatml``/``sharegpt``/``alpaca``/``text``, preference pairs for ``dpo``. With
    ``token_lengths``, each record's tokens are counted with the target tokenizer (``known_lengths``
    reuses counts from an earlier export); records over ``max_seq_len`` become rejects
    (``too_long_for_max_seq_len``, returned, not written) or get ``n_tokens``/``too_long`` columns.
    """
    fmt = check_format(options.fmt)
    advance = on_advance or (lambda n: None)
    # Records stay in the order given (the store's, close to their order in memory) for every pass over
    # them in Python; the output is put in id order by Arrow at the end (`take`), which is much cheaper.
    recs: list[Any] = list(records)
    want = PreferencePair if fmt == "dpo" else Sample
    wrong = next((r for r in recs if not isinstance(r, want)), None)
    if wrong is not None:
        raise ValueError(
            f"format {fmt} exports {want.__name__} records, got a {type(wrong).__name__}: "
            + ("use format dpo for preference pairs" if isinstance(wrong, PreferencePair) else "use a sample format")
        )
    ids = [r.id for r in recs]
    by_id = sorted(range(len(ids)), key=ids.__getitem__)
    sp = options.system_prompt
    tok = load_tokenizer(options.tokenizer) if (fmt == "text" or options.token_lengths) else None
    texts: list[str] | None = None
    if fmt == "text":
        assert tok is not None
        texts = [tok.render(conversation(s, sp)) for s in recs]

    n_tokens: list[int | None] = [None] * len(recs)
    counted = 0
    if options.token_lengths:
        assert tok is not None
        known = known_lengths or {}
        todo = []
        for i, rid in enumerate(ids):
            n = known.get(rid)
            if n is None:
                todo.append(i)
            else:
                n_tokens[i] = n
        for i, n in _count_tokens(tok, fmt, recs, texts, todo, sp, advance).items():
            n_tokens[i] = n
        counted = len(todo)
    advance(len(recs) - counted)

    limit = options.max_seq_len
    too_long = [limit is not None and n is not None and n > limit for n in n_tokens]
    flag = bool(limit) and options.on_too_long == "flag"
    dropping = not flag and any(too_long)
    long_in_id_order = [i for i in by_id if too_long[i]] if dropping else []
    rejects = _too_long_rejects(fmt, recs, texts, n_tokens, long_in_id_order, options, tok)
    keep = [i for i in by_id if not too_long[i]] if dropping else by_id

    extra: dict[str, list[Any]] | None = {"n_tokens": n_tokens, "too_long": too_long} if flag else None
    table = build_table(fmt, recs, sp, texts, extra)
    tables = {
        split: table.take(pa.array(idx, pa.int64())) for split, idx in _partition(ids, keep, options.split).items()
    }
    files = _write_splits(out_dir, tables)

    result = ExportResult(
        options=options,
        out_dir=out_dir,
        schema=tables["train"].schema,
        files=files,
        rows={s: t.num_rows for s, t in tables.items()},
        n_in=len(recs),
        rejects=rejects,
        flagged=sum(too_long) if flag else 0,
        n_tokens=dict(zip(ids, n_tokens, strict=True)),
        lengths=length_stats([n for n in n_tokens if n is not None]),
        tokenizer=tok.describe() if tok else None,
        record_facts=record_facts(recs),
        facts=facts,
    )
    result.extra_files = write_card_and_snippets(result)
    return result


def _too_long_rejects(
    fmt: str,
    recs: Sequence[Any],
    texts: Sequence[str] | None,
    n_tokens: Sequence[int | None],
    too_long: Sequence[int],
    options: ExportOptions,
    tok: ChatTokenizer | None,
) -> list[Reject]:
    """One reject per record at ``too_long``, with its token count in the detail and its row as payload."""
    out = []
    name = tok.name if tok else "tokenizer"
    sp = options.system_prompt
    for i in too_long:
        r = recs[i]
        if texts is not None:
            row = {"id": r.id, "text": texts[i]}
        else:
            row = pair_row(r, sp) if fmt == "dpo" else sample_row(r, fmt, sp)
        out.append(
            Reject(
                stage="export",
                record_id=r.id,
                reason=TOO_LONG,
                detail=f"{n_tokens[i]} tokens > export.max_seq_len {options.max_seq_len} "
                f"(tokenizer {name}, format {fmt})",
                source_path=r.provenance.source_path,
                payload=json.dumps(row, ensure_ascii=False),
            )
        )
    return out


def _partition(ids: Sequence[str], keep: list[int], train_fraction: float) -> dict[str, list[int]]:
    """Indices per split, in the order of ``keep``. An empty validation split is left out: `datasets`
    cannot load an empty parquet split."""
    in_train = train_mask([ids[i] for i in keep], train_fraction)
    parts = {"train": [i for i, t in zip(keep, in_train, strict=True) if t]}
    validation = [i for i, t in zip(keep, in_train, strict=True) if not t]
    if validation:
        parts["validation"] = validation
    return parts


def _write_splits(out_dir: Path | UPath, tables: dict[str, Any]) -> dict[str, Path | UPath]:
    """``<split>.parquet`` per table; a split file left from an earlier export is removed (it would be read)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path | UPath] = {}
    for split in SPLITS:
        path = out_dir / f"{split}.parquet"
        if split in tables:
            write_table(path, tables[split])
            files[split] = path
        elif path.exists():
            path.unlink()
    return files


def export_samples(
    samples: Iterable[Sample], fmt: str, out_dir: Path | UPath, system_prompt: str | None = None
) -> Path | UPath:
    """Samples as ``train.parquet`` in ``out_dir`` (no split, no length check); returns its path."""
    opts = ExportOptions(fmt=fmt, system_prompt=system_prompt, token_lengths=False)
    return export_records(samples, opts, out_dir).files["train"]


def export_pairs(
    pairs: Iterable[PreferencePair], out_dir: Path | UPath, system_prompt: str | None = None
) -> Path | UPath:
    """Preference pairs in TRL's conversational preference format as ``train.parquet``; returns its path."""
    opts = ExportOptions(fmt="dpo", system_prompt=system_prompt, token_lengths=False)
    return export_records(pairs, opts, out_dir).files["train"]
