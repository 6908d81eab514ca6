"""Stage runners: each reads its input from the run store, skips shards already done, writes shards,
rejects and a manifest. Plain Python, no Prefect: ``flows/`` wraps these as tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from upath import UPath

from datapipe.config import PipelineConfig
from datapipe.filter.chain import apply_filters
from datapipe.filter.chain import benchmark_digests as _benchmark_digests
from datapipe.filter.chain import build_judge as _build_judge
from datapipe.fsio import as_path, is_local
from datapipe.fsio import local as local_path
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


Part = tuple[int, int] | None
"""``(i, n)``: run only the i-th of n shares of a stage's shards (a worker's share, e.g. a Ray task), or None."""


def local_map(fn: Any, items: list[Any]) -> list[Any]:
    return [fn(x) for x in items]


def in_part(key: str, part: Part) -> bool:
    """Whether the shard ``key`` belongs to ``part``: a stable hash of the key, modulo the number of parts."""
    return part is None or int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % part[1] == part[0]


def merge_stats(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Teacher statistics of several processes (stage parts) added up: numbers summed, lists joined,
    nested dicts merged the same way, anything else kept from the first that has it."""
    out: dict[str, Any] = {}
    for st in stats:
        for k, v in st.items():
            if isinstance(v, dict):
                out[k] = merge_stats([out.get(k, {}), v]) if isinstance(out.get(k, {}), dict) else out[k]
            elif isinstance(v, list):
                out[k] = (out.get(k, []) + v)[:100]
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(out.get(k, 0), (int, float)):
                out[k] = round(out.get(k, 0) + v, 3)
            else:
                out.setdefault(k, v)
    return out


def teacher_record(teacher: Any, stats_elsewhere: list[dict[str, Any]] | None, role: str = "teacher") -> dict[str, Any]:
    """A teacher's identity and statistics for a manifest, with those its stage's parts reported under ``role``
    (``{"teacher": ..., "second_model": ...}`` per part) added up."""
    parts = [st[role] for st in stats_elsewhere or [] if role in st]
    own = teacher.stats.as_dict()
    merged = merge_stats([own, *parts])
    if parts:  # a maximum is not a sum
        merged["retry_after_max_s"] = max(p.get("retry_after_max_s", 0.0) for p in [own, *parts])
    return {**teacher.identity, **merged}


def write_output(store: RunStore, stage: str, key: str, table: Any, rejects: list[Reject]) -> tuple[str, int, int]:
    """Write a computed shard: complete under ``key`` when every record has an outcome, else a partial shard
    whose retryable records are pending (see :mod:`datapipe.reasons`). Returns (key written, rejects, pending)."""
    from datapipe.reasons import split_pending

    final, pending = split_pending(rejects)
    if not pending:
        store.write_shard(stage, key, table, final)
        return key, len(final), 0
    return store.write_partial(stage, key, table, final, pending), len(final), len(pending)


def store_for(cfg: PipelineConfig) -> RunStore:
    return RunStore(cfg.run_dir)


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
    if source_rejects:
        key = "sources-" + content_id([r.record_id for r in source_rejects], cfg_hash, length=16)
        store.write_shard("extract", key, Document.to_table([]), source_rejects)
        rec.add(key, [r.record_id for r in source_rejects], len(source_rejects), 0, len(source_rejects), 0.0, False)
    seen: dict[tuple[str, str | None], str] = {}
    done_elsewhere = done_elsewhere or {}
    computed: dict[str, float] = {}
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
        for src, _digest, key, have, hash_s in todo:
            if have and part is not None:
                continue
            t0 = time.perf_counter()
            extract_s = 0.0
            if have:
                docs = store.read_shard("extract", key, Document)
                n_rej = len(store.read_shard_rejects("extract", key))
            else:
                out, extract_s = pool.result(src)
                if not pool.parallel:  # extracted just now, inside this iteration's clock
                    extract_s = 0.0
                t0 = time.perf_counter() if pool.parallel else t0  # not the wait for a worker
                docs = [out] if isinstance(out, Document) else []
                rejects = [out] if isinstance(out, Reject) else []
                store.write_shard("extract", key, Document.to_table(docs), rejects)
                n_rej = len(rejects)
            seconds = hash_s + extract_s + time.perf_counter() - t0
            if part is not None and not have:  # a worker's share: the driver's pass records it
                computed[key] = seconds
                continue
            reused = have and key not in done_elsewhere
            _record_extract(rec, store, seen, src, key, docs, n_rej, reused, done_elsewhere.get(key, seconds))
            progress.advance("extract")
    if part is not None:
        return {"computed": computed}
    progress.done("extract")
    return rec.finish()


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


def run_chunk(
    cfg: PipelineConfig,
    progress: Progress | None = None,
    *,
    part: Part = None,
    done_elsewhere: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Chunk each extract shard into a chunk shard (``part``/``done_elsewhere``: see :func:`run_extract`)."""
    from datapipe.chunk import SemanticChunker

    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys = store.current_keys("extract")
    cfg_hash = cfg.section_hash("chunk")
    rec = StageRecorder(store, "chunk", cfg_hash)
    chunker: SemanticChunker | None = None
    progress.start("chunk", len(in_keys))
    done_elsewhere = done_elsewhere or {}
    computed: dict[str, float] = {}
    for in_key in in_keys:
        key = content_id(in_key, cfg_hash)
        have = store.has_shard("chunk", key)
        if not in_part(key, part) or (have and part is not None):
            continue
        t0 = time.perf_counter()
        docs = store.read_shard("extract", in_key, Document)
        if have:
            n_out = len(store.read_shard("chunk", key, Chunk))
        else:
            chunker = chunker or SemanticChunker(cfg.chunk, str(cfg.base_dir))
            chunks = [c for d in docs for c in chunker.chunk(d)]
            store.write_shard("chunk", key, Chunk.to_table(chunks), [])
            n_out = len(chunks)
            if part is not None:  # a worker's share: the driver's pass records it
                computed[key] = time.perf_counter() - t0
                continue
        reused = have and key not in done_elsewhere
        rec.add(key, [in_key], len(docs), n_out, 0, done_elsewhere.get(key, time.perf_counter() - t0), reused)
        progress.advance("chunk")
    if part is not None:
        return {"computed": computed}
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
    if not cfg.store_is_local:  # SQLite wants a local disk: one cache per machine for a store on a URL
        digest = hashlib.sha256(str(cfg.run_dir).encode()).hexdigest()[:16]
        return (
            Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
            / "datapipe"
            / "teacher"
            / f"{digest}.sqlite"
        )
    return cfg.resolve(cfg.store) / ".cache" / "teacher.sqlite"


def run_budget_key(cfg: PipelineConfig) -> str:
    return str(cfg.run_dir.resolve()) if cfg.store_is_local else str(cfg.run_dir)


def build_teacher(cfg: PipelineConfig, teacher_cfg: Any = None) -> Any:
    """The run's teacher (or ``teacher_cfg``, e.g. a second model), drawing on the run's budget."""
    from datapipe.privacy import wrap_teacher
    from datapipe.teacher import Teacher
    from datapipe.teacher.budget import budget_for

    budget = budget_for(run_budget_key(cfg), cfg.budget)
    tcfg = teacher_cfg or cfg.teacher
    return wrap_teacher(cfg, Teacher(tcfg, teacher_cache_path(cfg), budget), tcfg)


def run_generate(
    cfg: PipelineConfig,
    progress: Progress | None = None,
    teacher: Any = None,
    *,
    part: Part = None,
    done_elsewhere: dict[str, float] | None = None,
    stats_elsewhere: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Generate samples per chunk shard (instruction) and per taxonomy leaf (qa). ``part``/``done_elsewhere``:
    see :func:`run_extract`; a part also returns its teacher statistics, which the driver adds up. The kinds
    come from the registry (:mod:`datapipe.generate.kinds`); each plans its jobs, this loop runs them."""
    from datapipe.generate.kinds import GenerateContext, kind_names, plan_of
    from datapipe.plugins import load_plugins

    load_plugins(cfg.plugins)
    progress = progress or NullProgress()
    store = store_for(cfg)
    gen_cfg = cfg.generate
    teacher = teacher or build_teacher(cfg)
    all_shards = [(k, store.read_shard("chunk", k, Chunk)) for k in store.current_keys("chunk")]
    privacy = getattr(teacher, "privacy", None)
    if privacy is not None:  # the generators see pseudonymised chunks; the stored chunks keep the originals
        from datapipe.privacy import protect_chunks

        all_shards = protect_chunks(privacy, all_shards)
    # plain sources feed instruction data; documents of taxonomy leaves feed their leaf's QA data
    plain = [(k, cs) for k, cs in all_shards if not cs or cs[0].taxonomy_path is None]
    ctx = GenerateContext(cfg, teacher, progress, all_shards, plain)
    jobs: list[tuple[str, list[str], int, Any]] = []  # (shard key, inputs, records in, coroutine factory)
    hashes = []
    for name in (k for k in kind_names() if k in gen_cfg.kinds):  # registry order: the manifest hash is stable
        khash, kjobs = plan_of(name)(ctx)
        hashes.append(khash)
        jobs += kjobs
    jobs += distilabel_jobs(cfg, teacher, plain, hashes, progress)
    rec = StageRecorder(store, "generate", content_id(hashes, length=16))
    if part is not None:
        jobs = [j for j in jobs if in_part(j[0], part) and not store.has_shard("generate", j[0])]
    done_elsewhere = done_elsewhere or {}
    progress.start("generate", sum(n for _, _, n, _ in jobs))
    results: dict[str, tuple[list[str], int, int, int, int, float, bool]] = {}
    pending: dict[str, tuple[str, int]] = {}  # shard key -> (partial shard written, records pending)

    async def one_job(key: str, inputs: list[str], n_in: int, job: Any) -> None:
        t0 = time.perf_counter()
        have = store.has_shard("generate", key)
        if have:
            n_out = len(store.read_shard("generate", key, Sample))
            n_rej = len(store.read_shard_rejects("generate", key))
            progress.advance("generate", n_in)
        else:
            samples, rejects = await job()
            written, n_rej, n_pending = write_output(store, "generate", key, Sample.to_table(samples), rejects)
            n_out = len(samples)
            if n_pending:
                pending[key] = (written, n_pending)
        seconds = done_elsewhere.get(key, time.perf_counter() - t0)
        results[key] = (inputs, n_in, n_out, n_rej, 0, seconds, have and key not in done_elsewhere)

    async def main() -> None:
        async with teacher.session():
            limit = asyncio.Semaphore(max(2, teacher.concurrency))

            async def bounded(*args: Any) -> None:
                async with limit:
                    await one_job(*args)

            await asyncio.gather(*(bounded(*j) for j in jobs))

    asyncio.run(main())
    if part is not None:  # a partial shard is not done: the driver's pass asks again for what is pending
        computed = {k: r[5] for k, r in results.items() if k not in pending}
        return {"computed": computed, "teacher": teacher.stats.as_dict()}
    for key, _, _, _ in jobs:
        inputs, n_in, n_out, n_rej, _, seconds, reused = results[key]
        written, n_pending = pending.get(key, (key, 0))
        rec.add(written, inputs, n_in, n_out, n_rej, seconds, reused, n_pending)
    rec.extra["teacher"] = teacher_record(teacher, stats_elsewhere)
    if "instruction" in gen_cfg.kinds:
        rec.extra["question_dedup"] = question_dedup_record(store, [key for key, _, _, _ in jobs])
    if privacy is not None:
        rec.extra["privacy"] = privacy.summary()
    progress.done("generate")
    return rec.finish()


def plan_instruction(ctx: Any) -> tuple[str, list[tuple[str, list[str], int, Any]]]:
    """The ``instruction`` kind: one job per chunk shard of plain sources, over the chunks ``max_chunks`` selects."""
    cfg, teacher, progress, plain = ctx.cfg, ctx.teacher, ctx.progress, ctx.plain
    gen_cfg = cfg.generate
    jobs: list[tuple[str, list[str], int, Any]] = []
    instr = instruction_generator(cfg, teacher)
    ihash = instr.config_hash()
    selected = select_chunks(plain, gen_cfg.max_chunks)
    distractors = pick_distractors(plain, selected, gen_cfg) if instr.context_prompt else {}
    for in_key, chunks in plain:
        chosen = [c for c in chunks if c.id in selected]
        key = instruction_shard_key(in_key, ihash, chosen, distractors)

        async def instruction_job(
            chunks: list[Chunk] = chunks, chosen: list[Chunk] = chosen
        ) -> tuple[list[Sample], list[Reject]]:
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
                out = await instr.for_chunk(c, chunks, distractors.get(c.id, []))
                progress.advance("generate")
                return out

            for s_, r_ in await asyncio.gather(*(per_chunk(c) for c in chosen)):
                samples.extend(s_)
                rejects.extend(r_)
            return samples, rejects

        jobs.append((key, [in_key], len(chunks), instruction_job))
    return ihash, jobs


def plan_qa(ctx: Any) -> tuple[str, list[tuple[str, list[str], int, Any]]]:
    """The ``qa`` kind: one job per taxonomy leaf (knowledge leaves over their documents' chunks)."""
    from datapipe.generate.prompts import load_prompt
    from datapipe.generate.qa import QAGenerator

    cfg, teacher, progress, all_shards = ctx.cfg, ctx.teacher, ctx.progress, ctx.all_shards
    gen_cfg = cfg.generate
    prompts_dir = cfg.resolve(cfg.prompts_dir) if cfg.prompts_dir else None
    jobs: list[tuple[str, list[str], int, Any]] = []
    kp = load_prompt(gen_cfg.qa.knowledge_prompt, gen_cfg.prompt_version, prompts_dir)
    sp = load_prompt(gen_cfg.qa.skill_prompt, gen_cfg.prompt_version, prompts_dir)
    qa = QAGenerator(gen_cfg.qa, teacher, kp, sp)
    qhash = qa.config_hash()
    for leaf in load_leaves(cfg):
        leaf_digest = hashlib.sha256(leaf.path.read_bytes()).hexdigest()
        if leaf.is_knowledge:
            mine = [(k, cs) for k, cs in all_shards if cs and cs[0].taxonomy_path == leaf.taxonomy_path]
            chunks = [c for _, cs in mine for c in cs]
            key = content_id("qa", leaf.taxonomy_path, leaf_digest, [k for k, _ in mine], qhash)

            async def knowledge_job(
                leaf: Any = leaf, chunks: list[Chunk] = chunks
            ) -> tuple[list[Sample], list[Reject]]:
                out = await qa.for_knowledge(leaf, chunks)
                progress.advance("generate", len(chunks))
                return out

            jobs.append((key, [leaf.taxonomy_path] + [k for k, _ in mine], len(chunks), knowledge_job))
        else:
            key = content_id("qa", leaf.taxonomy_path, leaf_digest, qhash)

            async def skill_job(leaf: Any = leaf) -> tuple[list[Sample], list[Reject]]:
                out = await qa.for_skill(leaf)
                progress.advance("generate")
                return out

            jobs.append((key, [leaf.taxonomy_path], 1, skill_job))
    return qhash, jobs


def distilabel_jobs(
    cfg: PipelineConfig, teacher: Any, plain: list[tuple[str, list[Chunk]]], hashes: list[str], progress: Progress
) -> list[tuple[str, list[str], int, Any]]:
    """Jobs of the distilabel generation kinds (``generate.distilabel``): one per chunk shard and kind, over
    the chunks ``generate.max_chunks`` selects. Appends each kind's config hash to ``hashes``."""
    from datapipe.generate.distilabel_task import DistilabelKind

    gen_cfg = cfg.generate
    jobs: list[tuple[str, list[str], int, Any]] = []
    selected = select_chunks(plain, gen_cfg.max_chunks) if gen_cfg.distilabel else set()
    for name, kcfg in sorted(gen_cfg.distilabel.items()):
        kind = DistilabelKind(name, kcfg, teacher)
        khash = kind.config_hash()
        hashes.append(khash)
        for in_key, chunks in plain:
            chosen = [c for c in chunks if c.id in selected]
            key = content_id(in_key, khash, sorted(c.id for c in chosen))

            async def job(
                kind: Any = kind, chunks: list[Chunk] = chunks, chosen: list[Chunk] = chosen
            ) -> tuple[list[Sample], list[Reject]]:
                samples: list[Sample] = []
                rejects: list[Reject] = []
                if "instruction" not in gen_cfg.kinds:  # else the instruction kind already names them
                    rejects += [
                        Reject(stage="generate", record_id=c.id, reason="over_max_chunks", source_path=c.source_path,
                               detail=f"generate.max_chunks={gen_cfg.max_chunks} chunks were sent to the teacher")
                        for c in chunks
                        if c.id not in selected
                    ]  # fmt: skip
                progress.advance("generate", len(chunks) - len(chosen))
                for s_, r_ in await asyncio.gather(*(kind.for_chunk(c) for c in chosen)):
                    samples.extend(s_)
                    rejects.extend(r_)
                progress.advance("generate", len(chosen))
                return samples, rejects

            jobs.append((key, [in_key], len(chunks), job))
    return jobs


def instruction_generator(cfg: PipelineConfig, teacher: Any) -> Any:
    """The instruction generator with its prompts: question and answer at ``generate.prompt_version``; the
    follow-up and open-book context prompts (newest version) only when multi-turn or open-book is on; the
    table question prompt (newest version) for chunks that hold a table, unless it is turned off."""
    from datapipe.generate.instruction import InstructionGenerator
    from datapipe.generate.prompts import load_prompt

    gen = cfg.generate
    prompts_dir = cfg.resolve(cfg.prompts_dir) if cfg.prompts_dir else None
    qp = load_prompt(gen.question_prompt, gen.prompt_version, prompts_dir)
    ap = load_prompt(gen.answer_prompt, gen.prompt_version, prompts_dir)
    fp = load_prompt(gen.multi_turn.followup_prompt, None, prompts_dir) if gen.multi_turn.turns > 1 else None
    open_book = "open_book" in gen.formats_of("instruction")
    cp = load_prompt(gen.open_book.context_prompt, None, prompts_dir) if open_book else None
    tp = load_prompt(gen.table_question_prompt, None, prompts_dir) if gen.table_question_prompt else None
    return InstructionGenerator(gen, teacher, qp, ap, fp, cp, tp)


def pick_distractors(shards: list[tuple[str, list[Chunk]]], selected: set[str], gen: Any) -> dict[str, list[Chunk]]:
    """Open-book distractors per selected chunk: ``generate.open_book.distractors`` chunks of other documents,
    drawn by a generator seeded with ``open_book.seed`` and the chunk id from all chunks sorted by id (the
    same sources give the same rows). Fewer when the other documents have fewer chunks; none with one document."""
    import random
    from collections import Counter

    pool = sorted((c for _, cs in shards for c in cs), key=lambda c: c.id)
    per_doc = Counter(c.document_id for c in pool)
    k = gen.open_book.distractors
    out: dict[str, list[Chunk]] = {}
    for c in (c for _, cs in shards for c in cs if c.id in selected):
        want = min(k, len(pool) - per_doc[c.document_id])
        rng = random.Random(content_id(gen.open_book.seed, c.id))
        picked: dict[str, Chunk] = {}
        for _ in range(20 * want):  # draws from the whole pool: no list of other chunks per chunk
            if len(picked) >= want:
                break
            d = pool[rng.randrange(len(pool))]
            if d.document_id != c.document_id:
                picked.setdefault(d.id, d)
        if len(picked) < want:  # this document holds most chunks: draw from the others explicitly
            others = [d for d in pool if d.document_id != c.document_id and d.id not in picked]
            for d in rng.sample(others, want - len(picked)):
                picked[d.id] = d
        out[c.id] = list(picked.values())
    return out


def instruction_shard_key(in_key: str, ihash: str, chosen: list[Chunk], distractors: dict[str, list[Chunk]]) -> str:
    """A generate shard's key: its chunk shard, the generator's config and prompts, the chunks sent to the
    teacher and (open-book) the distractors shown with them."""
    ids = sorted(c.id for c in chosen)
    if not distractors:
        return content_id(in_key, ihash, ids)
    return content_id(in_key, ihash, ids, {c: [d.id for d in distractors.get(c, [])] for c in ids})


def question_dedup_record(store: RunStore, keys: list[str]) -> dict[str, int]:
    """Near-duplicate questions dropped before their answers were requested, and the answer tokens (estimated
    input + max_new_tokens) that saved, over the run's current generate shards."""
    dropped = saved = 0
    for key in keys:
        if not store.has_shard("generate", key):
            continue
        for r in store.read_shard_rejects("generate", key):
            if r.reason == "duplicate_question":
                dropped += 1
                saved += int(json.loads(r.payload or "{}").get("answer_tokens_saved", 0))
    return {"dropped": dropped, "answer_tokens_saved": saved}


def _filter_inputs(store: RunStore) -> tuple[list[str], list[Sample]]:
    """The shards the filter reads: generated samples and imported ones (`datapipe import`), whichever exist."""
    stages = [st for st in ("generate", "import") if store.read_manifest(st) is not None] or ["generate"]
    keys = [k for st in stages for k in store.current_keys(st)]
    return keys, [s for st in stages for s in store.iter_records(st, Sample)]


def run_filter(cfg: PipelineConfig, progress: Progress | None = None, map_fn: Any = None) -> dict[str, Any]:
    """One filter shard over all samples (dedup is global) through the chain of :mod:`datapipe.filter.chain`;
    ``map_fn``: see :func:`apply_filters`."""
    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys, samples = _filter_inputs(store)
    judge = _build_judge(cfg, samples)
    judge_key = [judge.teacher.identity, judge.prompt_hashes] if judge else None
    cfg_hash = content_id(cfg.section_hash("filter", "chunk"), judge_key, _benchmark_digests(cfg), length=16)
    rec = StageRecorder(store, "filter", cfg_hash)
    key = content_id(in_keys, cfg_hash)
    t0 = time.perf_counter()
    reused = store.has_shard("filter", key)
    n_pending = 0
    progress.start("filter", len(samples))
    if reused:
        n_out = len(store.read_shard("filter", key, Sample))
        n_rej = len(store.read_shard_rejects("filter", key))
        progress.advance("filter", len(samples))
    else:
        kept, rejects, dropped = apply_filters(cfg, samples, progress, judge, map_fn)
        if judge is not None:
            rec.extra["teacher"] = {**judge.teacher.identity, **judge.teacher.stats.as_dict(), "step": "judge"}
        rec.extra["dropped_by_step"] = dropped
        key, n_rej, n_pending = write_output(store, "filter", key, Sample.to_table(kept), rejects)
        n_out = len(kept)
    rec.add(key, in_keys, len(samples), n_out, n_rej, time.perf_counter() - t0, reused, n_pending)
    progress.done("filter")
    return rec.finish()


def run_preference(
    cfg: PipelineConfig,
    progress: Progress | None = None,
    part: Part = None,
    done_elsewhere: dict[str, float] | None = None,
    stats_elsewhere: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """DPO pairs from the kept samples: candidates per prompt, judged; pairs or rejects with reasons.
    Batches of 8 prompts are its shards; ``part``/``done_elsewhere``/``stats_elsewhere``: see :func:`run_generate`."""
    import contextlib

    from datapipe.generate.preference import PreferenceGenerator, preference_documents
    from datapipe.generate.prompts import load_prompt
    from datapipe.records import PreferencePair

    progress = progress or NullProgress()
    store = store_for(cfg)
    pcfg = cfg.generate.preference
    prompts_dir = cfg.resolve(cfg.prompts_dir) if cfg.prompts_dir else None
    teacher = build_teacher(cfg)
    second = build_teacher(cfg, pcfg.second_model) if pcfg.second_model else None
    judge_cfg = cfg.filter.judge.teacher if pcfg.judge == "filter_judge" else None
    judge = build_teacher(cfg, judge_cfg) if judge_cfg else None
    gen = PreferenceGenerator(
        pcfg,
        teacher,
        load_prompt(pcfg.judge_prompt, None, prompts_dir),
        second,
        judge=judge,
        candidate_prompt=load_prompt(pcfg.candidate_prompt, None, prompts_dir),
        pairwise_prompt=load_prompt(pcfg.pairwise_prompt, None, prompts_dir),
        documents=preference_documents(store) if pcfg.hard_negatives else None,
        filter_cfg=cfg.filter,
    )
    cfg_hash = gen.config_hash()
    rec = StageRecorder(store, "preference", cfg_hash)
    samples = sorted((s for s in store.iter_records("filter", Sample) if s.kind in pcfg.kinds), key=lambda s: s.id)
    skipped = samples[pcfg.max_prompts :] if pcfg.max_prompts else []
    samples = samples[: pcfg.max_prompts] if pcfg.max_prompts else samples
    batches = [samples[i : i + 8] for i in range(0, len(samples), 8)]
    if part is not None:
        batches = [
            b
            for b in batches
            if in_part(key := content_id([s.id for s in b], cfg_hash), part) and not store.has_shard("preference", key)
        ]
        skipped = []
    done_elsewhere = done_elsewhere or {}
    computed: dict[str, float] = {}
    progress.start("preference", len(samples) + len(skipped))
    if skipped:
        key = "skipped-" + content_id([s.id for s in skipped], cfg_hash)
        if not store.has_shard("preference", key):
            store.write_shard(
                "preference",
                key,
                PreferencePair.to_table([]),
                [
                    Reject(
                        stage="preference",
                        record_id=s.id,
                        reason="over_max_prompts",
                        source_path=s.provenance.source_path,
                        detail=f"generate.preference.max_prompts={pcfg.max_prompts} prompts were used",
                    )
                    for s in skipped
                ],
            )
        rec.add(key, [s.id for s in skipped], len(skipped), 0, len(skipped), 0.0, False)
        progress.advance("preference", len(skipped))

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for t in (teacher, second, judge):
                if t is not None:
                    await stack.enter_async_context(t.session())
            await run_batches()

    async def run_batches() -> None:
        for batch in batches:
            t0 = time.perf_counter()
            key = content_id([s.id for s in batch], cfg_hash)
            reused = store.has_shard("preference", key)
            written, n_pending = key, 0
            if reused:
                n_out = len(store.read_shard("preference", key, PreferencePair))
                n_rej = len(store.read_shard_rejects("preference", key))
                progress.advance("preference", len(batch))
            else:

                async def one(s: Sample) -> list[PreferencePair | Reject]:
                    out = await gen.pairs_for(s)
                    progress.advance("preference")
                    return out

                results = [r for rs in await asyncio.gather(*(one(s) for s in batch)) for r in rs]
                pairs = [r for r in results if isinstance(r, PreferencePair)]
                rejects = [r for r in results if isinstance(r, Reject)]
                written, n_rej, n_pending = write_output(
                    store, "preference", key, PreferencePair.to_table(pairs), rejects
                )
                n_out = len(pairs)
            seconds = done_elsewhere.get(key, time.perf_counter() - t0)
            if not n_pending:  # a partial batch is not done: the driver's pass asks again
                computed[key] = seconds
            reused = reused and key not in done_elsewhere
            rec.add(written, [s.id for s in batch], len(batch), n_out, n_rej, seconds, reused, n_pending)

    asyncio.run(main())
    if part is not None:
        out: dict[str, Any] = {"computed": computed, "teacher": teacher.stats.as_dict()}
        if second is not None:
            out["second_model"] = second.stats.as_dict()
        if judge is not None:
            out["judge"] = judge.stats.as_dict()
        return out
    rec.extra["teacher"] = teacher_record(teacher, stats_elsewhere)
    if second is not None:
        rec.extra["second_model"] = teacher_record(second, stats_elsewhere, "second_model")
    if judge is not None:
        rec.extra["judge"] = teacher_record(judge, stats_elsewhere, "judge")
    if pcfg.hard_negatives:
        rec.extra["hard_negatives"] = dict(gen.hard_negative_counts)  # this process's batches (not reused ones)
    progress.done("preference")
    return rec.finish()


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


STAGE_RUNNERS = {"extract": run_extract, "chunk": run_chunk, "generate": run_generate, "filter": run_filter}
