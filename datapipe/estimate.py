"""`datapipe run --dry-run`: what a run would ask the teacher, before anything is spent.

Extract and chunk run for real (they cost no teacher tokens, and the run reuses their
shards); everything after them is only counted. Generate shards that exist are free. For
instruction data the question requests are rendered exactly and looked up in the
response cache; for a cached question the answers are looked up too, otherwise each
chunk counts ``questions_per_chunk`` answers (the most the run can ask). Taxonomy QA,
the judge and preference pairs depend on outputs not yet generated: they are counted
as upper bounds from the configured numbers. Input tokens are estimated from the
prompt's characters (see ``datapipe.teacher.budget.estimate_tokens``); output tokens are
counted at ``max_new_tokens`` per call, the most a call can return.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import SAMPLE_KINDS, Chunk
from datapipe.teacher.budget import estimate_tokens


@dataclass
class StepEstimate:
    step: str
    calls: int = 0  # teacher calls (cache misses); an upper bound unless exact
    cached: int = 0  # requests the response cache answers
    input_tokens: int = 0  # estimated
    output_tokens: int = 0  # at most
    exact: bool = True
    note: str = ""

    def add_call(self, messages: list[dict[str, str]], max_new_tokens: int, n: int = 1) -> None:
        self.calls += n
        self.input_tokens += n * estimate_tokens(messages)
        self.output_tokens += n * max_new_tokens


@dataclass
class EstimateContext:
    """What a kind's estimator sees: the config, the run's Teacher (not started) and its response cache, the
    run store and the chunk shards (``shards``: all; ``plain``: those of plain sources, not taxonomy leaves)."""

    cfg: PipelineConfig
    teacher: Any
    cache: Any
    store: Any
    shards: list[tuple[str, list[Chunk]]]
    plain: list[tuple[str, list[Chunk]]]


@dataclass
class KindEstimate:
    """A kind's share of the estimate: its steps, the new samples it expects per sample kind (the judge and
    preference estimates count from them), the characters of the contexts it sends, and its shard counts."""

    steps: list[StepEstimate] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)
    contexts: list[int] = field(default_factory=list)
    to_generate: int = 0
    reused: int = 0


def estimate_instruction(ectx: EstimateContext) -> KindEstimate:
    """The instruction kind's estimate: its shards keyed by ``instruction_shard_key``, the function its plan
    keys them with; question requests rendered exactly and looked up in the cache, answers too when the
    questions are cached."""
    from datapipe.generate.instruction import ParseError
    from datapipe.stages.generate import instruction_generator, instruction_shard_key, pick_distractors, select_chunks

    cfg, teacher, cache, store, plain = ectx.cfg, ectx.teacher, ectx.cache, ectx.store, ectx.plain
    gen = cfg.generate
    out = KindEstimate(samples={"instruction": 0})
    instr = instruction_generator(cfg, teacher)
    ihash = instr.config_hash()
    selected = select_chunks(plain, gen.max_chunks)
    distractors = pick_distractors(plain, selected, gen) if instr.context_prompt else {}
    q_est = StepEstimate("instruction questions")
    a_est = StepEstimate("instruction answers")
    contexts = out.contexts
    for in_key, chunks in plain:
        chosen = [c for c in chunks if c.id in selected]
        key = instruction_shard_key(in_key, ihash, chosen, distractors)
        if store.has_shard("generate", key):
            out.reused += 1
            continue
        out.to_generate += 1
        for c in chosen:
            contexts.append(len(c.text))
            row = instr.base_row(c)
            q_msgs = instr.question_task(c).format_input(row)
            hit = cache.get(teacher.request_key(q_msgs, gen.question_params)) if cache else None
            if hit is None:
                q_est.add_call(q_msgs, gen.question_params.max_new_tokens)
                placeholder = {**row, "question": "x" * 80}
                a_est.add_call(
                    instr.answers.format_input(placeholder),
                    gen.answer_params.max_new_tokens,
                    gen.questions_per_chunk,
                )
                a_est.exact = False
                out.samples["instruction"] += gen.questions_per_chunk
                continue
            q_est.cached += 1
            try:
                typed = instr.question_task(c).typed_questions(hit["text"])
            except ParseError:
                continue
            questions = [q for _, q in instr.dedup_questions(typed, row)[0]]  # as the run asks them
            for i, q in enumerate(questions):
                open_book = instr.formats[(c.index + i) % len(instr.formats)] == "open_book"
                a_msgs = instr.answers.format_input({**row, "question": q, "open_book": open_book})
                if cache and cache.get(teacher.request_key(a_msgs, gen.answer_params)) is not None:
                    a_est.cached += 1
                else:
                    a_est.add_call(a_msgs, gen.answer_params.max_new_tokens)
            out.samples["instruction"] += len(questions)
    if not a_est.exact:
        a_est.note = f"at most {gen.questions_per_chunk} per chunk whose questions are not cached"
    out.steps += [q_est, a_est]
    if gen.multi_turn.turns > 1:
        f_est = StepEstimate("instruction follow-ups", exact=False, note="cache not consulted; approximate")
        for c in (c for _, cs in plain for c in cs if c.id in selected and instr.converses(c)):
            row = {**instr.base_row(c), "conversation": [{"question": "x" * 80, "answer": "x" * 200}]}
            n = gen.multi_turn.turns - 1
            f_est.add_call(instr.followups.format_input(row), gen.question_params.max_new_tokens, n)
            f_est.add_call(
                instr.answers.format_input({**row, "question": "x" * 80}), gen.answer_params.max_new_tokens, n
            )
        out.steps.append(f_est)
    return out


def estimate_qa(ectx: EstimateContext) -> KindEstimate:
    """The taxonomy QA kind's estimate: an upper bound per leaf from the configured numbers (its requests
    depend on chunks and replies not yet made)."""
    from datapipe.stages.extract import load_leaves

    gen = ectx.cfg.generate
    out = KindEstimate(samples={"qa": 0})
    qa_est = StepEstimate("taxonomy qa", exact=False, note="upper bound; prompt size approximated")
    for leaf in load_leaves(ectx.cfg):
        mine = [c for _, cs in ectx.shards for c in cs if cs and cs[0].taxonomy_path == leaf.taxonomy_path]
        if leaf.is_knowledge:
            n = min(len(mine), math.ceil(gen.qa.samples_per_leaf / gen.qa.pairs_per_chunk))
            context = max((len(c.text) for c in mine), default=0)
        else:
            n = gen.qa.samples_per_leaf
            context = 0
        prompt_chars = leaf.path.stat().st_size + context
        qa_est.add_call([{"role": "user", "content": "x" * prompt_chars}], gen.qa.params.max_new_tokens, n)
        out.samples["qa"] += gen.qa.samples_per_leaf
    qa_est.note += "; leaves whose shard exists cost nothing but are counted"
    out.steps.append(qa_est)
    return out


def estimate_run(cfg: PipelineConfig) -> dict[str, Any]:
    """Teacher calls and tokens the next run would need (after extract and chunk have run): each kind in
    ``generate.kinds`` estimated by the estimator it registers (:func:`datapipe.generate.kinds.estimator_of`);
    a kind without one is listed as not estimated, not counted as free."""
    from datapipe.generate.kinds import estimator_of, kind_names
    from datapipe.stages.teachers import build_teacher
    from datapipe.store import store_for

    store = store_for(cfg)
    gen = cfg.generate
    teacher = build_teacher(cfg)  # not started: no model is loaded, no request is sent
    shards = [(k, store.read_shard("chunk", k, Chunk)) for k in store.current_keys("chunk")]
    plain = [(k, cs) for k, cs in shards if not cs or cs[0].taxonomy_path is None]
    ectx = EstimateContext(cfg, teacher, teacher.cache, store, shards, plain)
    steps: list[StepEstimate] = []
    shard_counts = {"to_generate": 0, "reused": 0}
    expected_samples: dict[str, int] = dict.fromkeys(SAMPLE_KINDS, 0)
    contexts: list[int] = []
    not_estimated: list[str] = []

    for name in (k for k in kind_names() if k in gen.kinds):  # the order run_generate plans them in
        estimate = estimator_of(name)
        if estimate is None:
            not_estimated.append(name)
            steps.append(StepEstimate(name, exact=False, note="not estimated: the kind registers no estimator"))
            continue
        part = estimate(ectx)
        steps += part.steps
        for k, n in part.samples.items():
            expected_samples[k] = expected_samples.get(k, 0) + n
        contexts += part.contexts
        shard_counts["to_generate"] += part.to_generate
        shard_counts["reused"] += part.reused
    for name in sorted(gen.distilabel):  # distilabel Task kinds (generate.distilabel) have no estimator yet
        not_estimated.append(name)
        steps.append(StepEstimate(name, exact=False, note="not estimated: distilabel kinds have no estimator"))
    avg_context = int(sum(contexts) / len(contexts)) if contexts else 0

    judge = cfg.filter.judge
    judged = sum(expected_samples[k] for k in judge.kinds if k in expected_samples)
    if judged:
        j_est = StepEstimate("filter judge", exact=False, note="one call per new sample of a judged kind, at most")
        msg = [{"role": "user", "content": "x" * (avg_context + 600)}]
        j_est.add_call(msg, judge.params.max_new_tokens, judged)
        steps.append(j_est)

    pref = gen.preference
    if pref.enabled:
        prompts = sum(expected_samples[k] for k in pref.kinds if k in expected_samples)
        if pref.max_prompts is not None:
            prompts = min(prompts, pref.max_prompts)
        n_cand = len(pref.candidates) + int(pref.second_model is not None)
        n_rated = n_cand + int(pref.include_original)
        p_est = StepEstimate("preference", exact=False, note="new prompts only; candidates + judge per prompt, at most")
        msg = [{"role": "user", "content": "x" * (avg_context + 200)}]
        for params in pref.candidates:
            p_est.add_call(msg, params.max_new_tokens, prompts)
        if pref.second_model is not None:
            p_est.add_call(msg, pref.second_model_params.max_new_tokens, prompts)
        p_est.add_call(
            [{"role": "user", "content": "x" * (avg_context + 800)}],
            pref.judge_params.max_new_tokens,
            prompts * n_rated,
        )
        steps.append(p_est)

    total = StepEstimate("total", exact=all(s.exact for s in steps))
    for s in steps:
        total.calls += s.calls
        total.cached += s.cached
        total.input_tokens += s.input_tokens
        total.output_tokens += s.output_tokens
    b = cfg.budget
    tokens = total.input_tokens + total.output_tokens
    cost = b.cost(total.input_tokens, total.output_tokens)
    over = (b.max_tokens is not None and tokens > b.max_tokens) or (
        b.max_cost is not None and cost is not None and cost > b.max_cost
    )
    return {
        "steps": [asdict(s) for s in steps],
        "total": asdict(total),
        "tokens": tokens,
        "cost": cost,
        "shards": shard_counts,
        "budget": {"max_tokens": b.max_tokens, "max_cost": b.max_cost, "may_stop_at_budget": bool(over)},
        "teacher": teacher.identity,
        "not_estimated": not_estimated,
    }
