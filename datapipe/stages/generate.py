"""The generate stage: the kinds of the registry (:mod:`datapipe.generate.kinds`) plan jobs over the chunk
shards, which run on the shard loop; the built-in kinds' plans (instruction, qa, distilabel Tasks) live here."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import Chunk, Reject, Sample, content_id
from datapipe.stages.extract import load_leaves
from datapipe.stages.runner import NullProgress, Part, Progress, ShardJob, ShardLoop
from datapipe.stages.teachers import build_teacher, teacher_record
from datapipe.store import RunStore, StageRecorder, store_for


def select_chunks(shards: list[tuple[str, list[Chunk]]], max_chunks: int | None) -> set[str]:
    """Chunk ids sent to the teacher: all, or ``max_chunks`` spread round-robin over documents."""
    all_chunks = [c for _, chunks in shards for c in chunks]
    if max_chunks is None or len(all_chunks) <= max_chunks:
        return {c.id for c in all_chunks}
    order = {key: i for i, (key, _) in enumerate(shards)}
    ranked = sorted(((c.index, order[k], c.id) for k, chunks in shards for c in chunks))
    return {cid for _, _, cid in ranked[:max_chunks]}


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
    loop = ShardLoop(
        store, "generate", rec, Sample, progress, part=part, done_elsewhere=done_elsewhere, compute_advances=True
    )
    shard_jobs = loop.select([ShardJob(key, inputs, n_in, job) for key, inputs, n_in, job in jobs])
    progress.start("generate", sum(j.n_in for j in shard_jobs if isinstance(j.n_in, int)))

    async def main() -> None:
        async with teacher.session():
            await loop.arun(shard_jobs, concurrency=max(2, teacher.concurrency))

    asyncio.run(main())
    if part is not None:  # a partial shard is not done: the driver's pass asks again for what is pending
        return {**loop.finish(), "teacher": teacher.stats.as_dict()}
    rec.extra["teacher"] = teacher_record(teacher, stats_elsewhere)
    if "instruction" in gen_cfg.kinds:
        rec.extra["question_dedup"] = question_dedup_record(store, [key for key, _, _, _ in jobs])
    if privacy is not None:
        rec.extra["privacy"] = privacy.summary()
    return loop.finish()


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
