"""Stage runners: each reads its input from the run store, skips shards already done, writes shards,
rejects and a manifest. Plain Python, no Prefect: ``flows/`` wraps these as tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any, Protocol

from datapipe.config import PipelineConfig
from datapipe.records import Chunk, Document, Reject, Sample, content_id
from datapipe.store import RunStore, StageRecorder


class Progress(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def done(self, stage: str) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def done(self, stage: str) -> None:
        pass


def store_for(cfg: PipelineConfig) -> RunStore:
    return RunStore(cfg.run_dir)


def _file_digest(path: Path) -> str:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"


def run_extract(cfg: PipelineConfig, progress: Progress | None = None) -> dict[str, Any]:
    from datapipe.extract import extract_file, resolve_sources

    progress = progress or NullProgress()
    store = store_for(cfg)
    cfg_hash = cfg.section_hash("extract")
    rec = StageRecorder(store, "extract", cfg_hash)
    sources, source_rejects = resolve_sources(cfg.sources, cfg.base_dir, cfg.extract.extensions)
    progress.start("extract", len(sources))
    if source_rejects:
        key = "sources-" + content_id([r.record_id for r in source_rejects], cfg_hash, length=16)
        store.write_shard("extract", key, Document.to_table([]), source_rejects)
        rec.add(key, [r.record_id for r in source_rejects], len(source_rejects), 0, len(source_rejects), 0.0, False)
    seen: dict[str, str] = {}
    for src in sources:
        t0 = time.perf_counter()
        key = content_id(str(src.path), _file_digest(src.path), cfg_hash)
        reused = store.has_shard("extract", key)
        if reused:
            docs = store.read_shard("extract", key, Document)
            n_rej = len(store.read_shard_rejects("extract", key))
        else:
            out = extract_file(src, cfg.extract)
            docs = [out] if isinstance(out, Document) else []
            rejects = [out] if isinstance(out, Reject) else []
            store.write_shard("extract", key, Document.to_table(docs), rejects)
            n_rej = len(rejects)
        if docs and docs[0].id in seen:
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
                            detail=f"same bytes as {seen[docs[0].id]}",
                            source_path=str(src.path),
                        )
                    ],
                )
            rec.add(dup_key, [str(src.path)], 1, 0, 1, time.perf_counter() - t0, reused)
        else:
            if docs:
                seen[docs[0].id] = str(src.path)
            rec.add(key, [str(src.path)], 1, len(docs), n_rej, time.perf_counter() - t0, reused)
        progress.advance("extract")
    progress.done("extract")
    return rec.finish()


def run_chunk(cfg: PipelineConfig, progress: Progress | None = None) -> dict[str, Any]:
    from datapipe.chunk import SemanticChunker

    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys = store.current_keys("extract")
    cfg_hash = cfg.section_hash("chunk")
    rec = StageRecorder(store, "chunk", cfg_hash)
    chunker: SemanticChunker | None = None
    progress.start("chunk", len(in_keys))
    for in_key in in_keys:
        t0 = time.perf_counter()
        docs = store.read_shard("extract", in_key, Document)
        key = content_id(in_key, cfg_hash)
        reused = store.has_shard("chunk", key)
        if reused:
            n_out = len(store.read_shard("chunk", key, Chunk))
        else:
            chunker = chunker or SemanticChunker(cfg.chunk)
            chunks = [c for d in docs for c in chunker.chunk(d)]
            store.write_shard("chunk", key, Chunk.to_table(chunks), [])
            n_out = len(chunks)
        rec.add(key, [in_key], len(docs), n_out, 0, time.perf_counter() - t0, reused)
        progress.advance("chunk")
    progress.done("chunk")
    return rec.finish()


def select_chunks(shards: list[tuple[str, list[Chunk]]], max_chunks: int | None) -> set[str]:
    """Chunk ids sent to the teacher: all, or ``max_chunks`` spread round-robin over documents."""
    all_chunks = [c for _, chunks in shards for c in chunks]
    if max_chunks is None or len(all_chunks) <= max_chunks:
        return {c.id for c in all_chunks}
    order = {key: i for i, (key, _) in enumerate(shards)}
    ranked = sorted(((c.index, order[k], c.id) for k, chunks in shards for c in chunks))
    return {cid for _, _, cid in ranked[:max_chunks]}


def teacher_cache_path(cfg: PipelineConfig) -> Path | None:
    if not cfg.teacher.cache:
        return None
    if cfg.teacher.cache_path:
        return cfg.resolve(cfg.teacher.cache_path)
    return cfg.resolve(cfg.store) / ".cache" / "teacher.sqlite"


def build_teacher(cfg: PipelineConfig) -> Any:
    from datapipe.teacher import Teacher

    return Teacher(cfg.teacher, teacher_cache_path(cfg))


def run_generate(cfg: PipelineConfig, progress: Progress | None = None, teacher: Any = None) -> dict[str, Any]:
    from datapipe.generate.instruction import InstructionGenerator
    from datapipe.generate.prompts import load_prompt

    progress = progress or NullProgress()
    store = store_for(cfg)
    prompts_dir = cfg.resolve(cfg.prompts_dir) if cfg.prompts_dir else None
    gen_cfg = cfg.generate
    qp = load_prompt(gen_cfg.question_prompt, gen_cfg.prompt_version, prompts_dir)
    ap = load_prompt(gen_cfg.answer_prompt, gen_cfg.prompt_version, prompts_dir)
    teacher = teacher or build_teacher(cfg)
    generator = InstructionGenerator(gen_cfg, teacher, qp, ap)
    cfg_hash = generator.config_hash()
    rec = StageRecorder(store, "generate", cfg_hash)
    shards = [(k, store.read_shard("chunk", k, Chunk)) for k in store.current_keys("chunk")]
    selected = select_chunks(shards, gen_cfg.max_chunks)
    progress.start("generate", sum(len(c) for _, c in shards))

    async def one_shard(in_key: str, chunks: list[Chunk]) -> None:
        t0 = time.perf_counter()
        chosen = [c for c in chunks if c.id in selected]
        key = content_id(in_key, cfg_hash, sorted(c.id for c in chosen))
        reused = store.has_shard("generate", key)
        if reused:
            n_out = len(store.read_shard("generate", key, Sample))
            n_rej = len(store.read_shard_rejects("generate", key))
            progress.advance("generate", len(chunks))
        else:
            samples: list[Sample] = []
            rejects = [
                Reject(
                    stage="generate",
                    record_id=c.id,
                    reason="over_max_chunks",
                    source_path=c.source_path,
                    detail=f"generate.max_chunks={gen_cfg.max_chunks} chunks were sent to the teacher",
                )
                for c in chunks
                if c.id not in selected
            ]
            progress.advance("generate", len(chunks) - len(chosen))

            async def per_chunk(c: Chunk) -> tuple[list[Sample], list[Reject]]:
                out = await generator.for_chunk(c)
                progress.advance("generate")
                return out

            for s, r in await asyncio.gather(*(per_chunk(c) for c in chosen)):
                samples.extend(s)
                rejects.extend(r)
            store.write_shard("generate", key, Sample.to_table(samples), rejects)
            n_out, n_rej = len(samples), len(rejects)
        rec.add(key, [in_key], len(chunks), n_out, n_rej, time.perf_counter() - t0, reused)

    async def main() -> None:
        async with teacher.session():
            limit = asyncio.Semaphore(max(2, teacher.concurrency))

            async def bounded(k: str, cs: list[Chunk]) -> None:
                async with limit:
                    await one_shard(k, cs)

            await asyncio.gather(*(bounded(k, cs) for k, cs in shards))

    asyncio.run(main())
    rec.shards.sort(key=lambda s: [k for k, _ in shards].index(s["inputs"][0]))
    rec.extra["teacher"] = {**teacher.identity, **teacher.stats.as_dict()}
    progress.done("generate")
    return rec.finish()


def run_filter(cfg: PipelineConfig, progress: Progress | None = None) -> dict[str, Any]:
    from datapipe.filter import filter_samples

    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys = store.current_keys("generate")
    cfg_hash = cfg.section_hash("filter")
    rec = StageRecorder(store, "filter", cfg_hash)
    key = content_id(in_keys, cfg_hash)
    t0 = time.perf_counter()
    reused = store.has_shard("filter", key)
    samples = list(store.iter_records("generate", Sample))
    progress.start("filter", len(samples))
    if reused:
        n_out = len(store.read_shard("filter", key, Sample))
        n_rej = len(store.read_shard_rejects("filter", key))
    else:
        kept: list[Sample] = []
        rejects: list[Reject] = []
        for out in filter_samples(samples, cfg.filter):
            (kept if isinstance(out, Sample) else rejects).append(out)  # type: ignore[arg-type]
            progress.advance("filter")
        store.write_shard("filter", key, Sample.to_table(kept), rejects)
        n_out, n_rej = len(kept), len(rejects)
    progress.advance("filter", len(samples) if reused else 0)
    rec.add(key, in_keys, len(samples), n_out, n_rej, time.perf_counter() - t0, reused)
    progress.done("filter")
    return rec.finish()


def run_export(
    cfg: PipelineConfig, fmt: str | None = None, out: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    from datapipe.export import export_samples

    progress = progress or NullProgress()
    store = store_for(cfg)
    fmt = fmt or cfg.export.format
    samples = list(store.iter_records("filter", Sample))
    progress.start("export", len(samples))
    t0 = time.perf_counter()
    out_dir = Path(out) if out else (cfg.resolve(cfg.export.out) if cfg.export.out else store.root / "exports" / fmt)
    path = export_samples(samples, fmt, out_dir, cfg.export.system_prompt)
    progress.advance("export", len(samples))
    progress.done("export")
    manifest = {
        "stage": "export",
        "format": fmt,
        "path": str(path),
        "seconds": round(time.perf_counter() - t0, 3),
        "counts": {"in": len(samples), "out": len(samples), "rejected": 0},
        "rejects_by_reason": {},
    }
    store.write_manifest("export", manifest)
    return manifest


STAGE_RUNNERS = {"extract": run_extract, "chunk": run_chunk, "generate": run_generate, "filter": run_filter}
