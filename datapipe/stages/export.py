"""The export stage: the kept samples (dpo: the preference pairs) as parquet per split, with a dataset card."""

from __future__ import annotations

import time
from typing import Any

from datapipe.config import PipelineConfig
from datapipe.fsio import as_path
from datapipe.records import Sample, content_id
from datapipe.stages.runner import NullProgress, Progress
from datapipe.store import StageRecorder, store_for


def run_export(
    cfg: PipelineConfig,
    fmt: str | None = None,
    out: str | None = None,
    progress: Progress | None = None,
    *,
    split: float | None = None,
    max_seq_len: int | None = None,
    tokenizer: str | None = None,
    on_too_long: str | None = None,
    push_to_hub: str | None = None,
    curated_only: bool | None = None,
    reidentify: bool = False,
) -> dict[str, Any]:
    """Write the kept samples (format dpo: the preference pairs) as parquet per split, with a dataset card
    and trainer snippets; records over ``max_seq_len`` tokens become rejects or are flagged.

    Keyword arguments override the ``export:`` config section (the CLI's options). Token counts
    are kept in the run store (``exports/_index/``, with the too-long rejects), so re-exporting
    the same records with the same tokenizer and settings does not tokenize again.
    """
    import pyarrow as pa
    from pydantic import ValidationError

    from datapipe.config import ExportConfig
    from datapipe.curate import apply_curation, curation_key
    from datapipe.errors import ConfigError
    from datapipe.export import ExportOptions, TokenCount, collect_run_facts, export_records, tokenizer_fingerprint
    from datapipe.export import push_to_hub as push
    from datapipe.export.tokenizer import resolve_tokenizer_path
    from datapipe.records import PreferencePair

    progress = progress or NullProgress()
    store = store_for(cfg)
    given = {"format": fmt, "split": split, "max_seq_len": max_seq_len, "tokenizer": tokenizer}
    given |= {"on_too_long": on_too_long, "push_to_hub": push_to_hub, "curated_only": curated_only}
    try:
        ecfg = ExportConfig(**{**cfg.export.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as err:
        problems = "; ".join(f"export.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid export settings: {problems}") from None
    fmt = ecfg.format
    out_dir = (
        as_path(out, cfg.store_options)
        if out
        else (cfg.location(ecfg.out) if ecfg.out else store.root / "exports" / fmt)
    )
    options = ExportOptions(
        fmt=fmt,
        system_prompt=ecfg.system_prompt,
        split=ecfg.split,
        tokenizer=str(cfg.resolve(ecfg.tokenizer)) if ecfg.tokenizer else None,
        token_lengths=ecfg.token_lengths,
        max_seq_len=ecfg.max_seq_len,
        on_too_long=ecfg.on_too_long,
        license=ecfg.license,
        language=tuple(ecfg.language),
        pretty_name=ecfg.pretty_name or f"datapipe {cfg.run_id} ({fmt})",
    )
    in_stage, record_type = ("preference", PreferencePair) if fmt == "dpo" else ("filter", Sample)
    pulled = curation_key(store)
    if fmt == "dpo" and pulled and store.read_manifest("preference") is None:
        in_keys: list[str] = []  # no judged pairs: only the reviewers' correction pairs
    else:
        in_keys = store.current_keys(in_stage)
    measured = fmt == "text" or ecfg.token_lengths
    tok_id = tokenizer_fingerprint(resolve_tokenizer_path(options.tokenizer)) if measured else None
    lengths_hash = content_id(options.length_settings(), tok_id, length=16)
    rec = StageRecorder(store, "export", content_id(lengths_hash, ecfg.split, ecfg.license, length=16))
    curation = [pulled, ecfg.curated_only] if pulled or ecfg.curated_only else []
    key = f"_index/{fmt}-{content_id(in_keys, lengths_hash, *curation, length=16)}"
    reused = store.has_shard("export", key)
    known = {c.id: c.n_tokens for c in store.read_shard("export", key, TokenCount)} if reused else None
    stored: list[Any] = [r for k in in_keys for r in store.read_shard(in_stage, k, record_type)]
    records, not_curated, curation_counts = apply_curation(store, stored, ecfg.curated_only, pairs=fmt == "dpo")
    progress.start("export", len(records))
    t0 = time.perf_counter()
    result = export_records(
        records,
        options,
        out_dir,
        facts=collect_run_facts(store, cfg.run_id, cfg.sources),
        known_lengths=known,
        on_advance=lambda n: progress.advance("export", n),
    )
    if not reused:
        counts = pa.table(
            {"id": list(result.n_tokens), "n_tokens": list(result.n_tokens.values())}, schema=TokenCount.schema_
        )
        store.write_shard("export", key, counts, [*not_curated, *result.rejects])
    n_rejected = len(not_curated) + len(result.rejects)
    rec.add(key, in_keys, len(stored), result.n_out, n_rejected, time.perf_counter() - t0, reused)
    rec.extra.update(result.manifest_fields())
    if cfg.privacy.mode != "off" or reidentify:
        from datapipe.privacy import Vault, audit_rows, reidentify_files

        found = audit_rows((r.model_dump(mode="json") for r in records), Vault.read_mapping(cfg.run_dir))
        rec.extra["privacy"] = {"mode": cfg.privacy.mode, "real_values_in_export": found}
        if reidentify:
            target = out_dir.parent / f"{out_dir.name}-reidentified"
            rec.extra["privacy"]["reidentified"] = reidentify_files(result.files, cfg.run_dir, target)
    if pulled or ecfg.curated_only:
        rec.extra["curation"] = {"curated_only": ecfg.curated_only, **curation_counts}
    progress.done("export")
    manifest = rec.finish()
    if ecfg.push_to_hub:
        manifest["hub"] = push(result, ecfg.push_to_hub, private=ecfg.hub_private)
        store.write_manifest("export", manifest)
    return manifest
