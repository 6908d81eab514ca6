"""The extract stage: every source into a shard of its own (a duplicate source is a reject).

The taxonomy's knowledge documents are sources too (:func:`taxonomy_sources`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from upath import UPath

from datapipe.config import PipelineConfig
from datapipe.fsio import is_local
from datapipe.fsio import local as local_path
from datapipe.records import Document, Reject, content_id
from datapipe.stages.runner import NullProgress, Outcome, Part, Progress, ShardJob, ShardLoop, in_part
from datapipe.store import StageRecorder, store_for


def _file_digest(path: Path | UPath, limit_bytes: float | None = None) -> str:
    """SHA-256 of a file; not read (a stand-in from size and mtime) when it is not a regular file or is over
    ``limit_bytes``: extract rejects those unread, and a FIFO would block the read for ever. An object under a
    URL is not read either: its key comes from its metadata (fsspec's ``ukey``: ETag, size, modification)."""
    from datapipe.extract import sha256_file

    if isinstance(path, UPath) and not is_local(path):
        try:
            return f"remote:{path.fs.ukey(path.path)}"
        except OSError as exc:
            return f"unreadable:{type(exc).__name__}"
    path = local_path(path)
    try:
        st = path.stat()
        if not path.is_file() or (limit_bytes is not None and st.st_size > limit_bytes):
            return f"unread:{st.st_size}:{st.st_mtime_ns}"
        return sha256_file(path)
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"


def run_extract(
    cfg: PipelineConfig,
    progress: Progress | None = None,
    *,
    part: Part = None,
    done_elsewhere: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Extract every source into a shard of its own. With ``part``, only that share of the sources
    (by path) and no manifest: returns ``{"computed": {shard key: seconds}}`` for the driver's
    full pass, which then finds those shards complete (``done_elsewhere``)."""
    from datapipe.extract import resolve_sources, size_limit
    from datapipe.extract.pool import ExtractPool

    progress = progress or NullProgress()
    store = store_for(cfg)
    cfg_hash = cfg.section_hash("extract")
    rec = StageRecorder(store, "extract", cfg_hash)
    sources, source_rejects = (
        resolve_sources(cfg.sources, cfg.base_dir, cfg.extract.extensions, cfg.store_options)
        if cfg.sources
        else ([], [])
    )
    if "qa" in cfg.generate.kinds:
        sources += taxonomy_sources(cfg)
    progress.start("extract", len(sources))
    seen: dict[tuple[str, str | None], str] = {}

    def record(o: Outcome, reused: bool) -> None:
        _record_extract(rec, store, seen, o.job.meta, o.job.key, o.records, o.n_rej, reused, o.seconds)

    loop = ShardLoop(
        store, "extract", rec, Document, progress, part=part, done_elsewhere=done_elsewhere, on_record=record
    )
    key = "sources-" + content_id([r.record_id for r in source_rejects], cfg_hash, length=16)
    loop.rejects_before(key, [r.record_id for r in source_rejects], source_rejects, rewrite=True)
    todo = []
    for src in sources:
        if not in_part(src.display, part):
            continue
        t0 = time.perf_counter()
        digest = _file_digest(src.path, size_limit(src.path, cfg.extract)[0])
        key = content_id(src.display, digest, cfg_hash, src.taxonomy_path)
        todo.append((src, digest, key, store.has_shard("extract", key), time.perf_counter() - t0))
    pending = [
        (src, None if digest.startswith(("unreadable:", "unread:", "remote:")) else digest)
        for src, digest, _, have, _ in todo
        if not have
    ]
    # objects under a URL are fetched and extracted here: a worker process (forked from a server started
    # earlier) would not see credentials set in this process's environment since
    remote = any(not is_local(src.path) for src, _ in pending if isinstance(src.path, UPath))
    workers = 1 if part is not None or remote else cfg.extract.workers
    with ExtractPool(cfg.extract, pending, workers=workers) as pool:

        def extract_one(src: Any) -> tuple[Any, ...]:
            out, extract_s = pool.result(src)
            docs = [out] if isinstance(out, Document) else []
            rejects = [out] if isinstance(out, Reject) else []
            # extracted in a worker: its seconds there, not the wait for it; else just now, inside the shard's clock
            return (docs, rejects, extract_s) if pool.parallel else (docs, rejects)

        loop.run(
            [
                ShardJob(key, [src.display], 1, lambda src=src: extract_one(src), units=1, part_key=src.display,
                         seconds_before=hash_s, have=have, meta=src)
                for src, _digest, key, have, hash_s in todo
            ]
        )  # fmt: skip
    return loop.finish()


def _record_extract(
    rec: StageRecorder,
    store: Any,
    seen: dict[tuple[str, str | None], str],
    src: Any,
    key: str,
    docs: list[Document],
    n_rej: int,
    reused: bool,
    seconds: float,
) -> None:
    """Record one source's shard (or its duplicate-of reject) and the layout noise removed from it."""
    t0 = time.perf_counter()
    if docs and (docs[0].id, src.taxonomy_path) in seen:
        dup_key = f"dup-{key}"
        if not store.has_shard("extract", dup_key):
            store.write_shard(
                "extract",
                dup_key,
                Document.to_table([]),
                [
                    Reject(
                        stage="extract",
                        record_id=docs[0].id,
                        reason=f"duplicate_of:{docs[0].id}",
                        detail=f"same bytes as {seen[(docs[0].id, src.taxonomy_path)]}",
                        source_path=src.display,
                    )
                ],
            )
        rec.add(dup_key, [src.display], 1, 0, 1, time.perf_counter() - t0, reused)
        return
    if docs:
        seen[(docs[0].id, src.taxonomy_path)] = src.display
        removed = {k: v for k, v in docs[0].removed.model_dump().items() if v}
        if removed:
            by_doc = rec.extra.setdefault("noise_removed", {})
            by_doc[src.display] = removed
    rec.add(key, [src.display], 1, len(docs), n_rej, seconds, reused)


def load_leaves(cfg: PipelineConfig) -> list[Any]:
    """The taxonomy leaves this pipeline generates QA data for (all, or those under ``taxonomy.leaves``)."""
    from datapipe.taxonomy.loader import iter_leaves

    root = cfg.resolve(cfg.taxonomy.root)
    if not root.is_dir():
        from datapipe.errors import ConfigError

        raise ConfigError(f"taxonomy.root: {root} is not a folder; point it at an InstructLab-layout taxonomy")
    prefixes = cfg.taxonomy.leaves
    return [
        leaf
        for leaf in iter_leaves(root)
        if prefixes is None or any(leaf.taxonomy_path.startswith(p.strip("/")) for p in prefixes)
    ]


def taxonomy_sources(cfg: PipelineConfig) -> list[Any]:
    """The documents of the knowledge leaves, resolved at their pinned commits (local clones only)."""
    from datapipe.extract import SourceFile
    from datapipe.taxonomy.documents import resolve_documents

    repo_map = {url: cfg.resolve(path) for url, path in cfg.taxonomy.repo_map.items()}
    cache_dir = cfg.resolve(cfg.store) / ".cache" / "taxonomy-repos"
    out = []
    for leaf in load_leaves(cfg):
        if leaf.is_knowledge:
            out += [SourceFile(p, leaf.taxonomy_path) for p in resolve_documents(leaf, repo_map, cache_dir)]
    return out
