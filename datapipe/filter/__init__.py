"""Filter: keep samples worth training on; every drop becomes a reject with a reason.

Each filter is a small function ``(sample) -> None`` (keep) or ``(reason, detail)`` (drop).
Per sample: empty/refusal answers, length bounds (chars and tokens), repetition, copies of the
question or of the context, language, questions that point at an unseen text, numbers/names/words
the context does not support (``content``); then across samples: exact duplicates
(here), benchmark decontamination, grounding, near and semantic duplicates (``dedup``,
``decontam``, ``grounding``) and the LLM judge (``judge``), wired in ``pipeline.run_filter``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from datapipe.config import FilterConfig
from datapipe.errors import ConfigError
from datapipe.records import Reject, Sample

Verdict = tuple[str, str] | None
SampleFilter = Callable[[Sample], Verdict]
PerSampleCheck = Callable[[Sample, dict[str, Any]], Verdict]

_CHECKS: dict[str, PerSampleCheck] = {}


def per_sample_check(name: str) -> Callable[[PerSampleCheck], PerSampleCheck]:
    """Register ``check(sample, options) -> None | (reason, detail)`` as the per-sample check ``name``; it runs
    when ``filter.checks`` names it (with its options), after the built-in checks, in one process and in Ray
    slices alike. See README "Adding a filter"."""

    def deco(check: PerSampleCheck) -> PerSampleCheck:
        _CHECKS[name] = check
        return check

    return deco


BatchRun = Callable[[list[Sample], Any], list[Reject]]


@dataclass(frozen=True)
class BatchCheck:
    """A filter step over many samples at once (``run(samples, ctx) -> rejects``, ``ctx``: a
    :class:`datapipe.filter.chain.FilterContext`): dedup compares samples with each other, decontamination
    and grounding load an index or a model once for all. ``name`` is its step in ``dropped_by_step``;
    ``enabled(ctx)`` whether the run switches it on (``ctx.cfg``: the run's config); ``per_sample``: it
    judges each sample alone, so the chain may run it in slices (Ray tasks); ``order``: its place in the
    chain (lower first; the per-sample checks run at 100, the judge at 900); ``reports_progress``: it
    advances the progress bar itself, once per sample, through ``ctx.on_done``."""

    name: str
    run: BatchRun
    enabled: Callable[[Any], bool]
    per_sample: bool = False
    order: int = 600
    reports_progress: bool = False


_BATCH: dict[str, BatchCheck] = {}


def batch_check(
    name: str,
    enabled: Callable[[Any], bool] | None = None,
    per_sample: bool = False,
    order: int = 600,
    reports_progress: bool = False,
) -> Callable[[BatchRun], BatchRun]:
    """Register ``run(samples, ctx) -> list[Reject]`` as the batch check ``name`` (see :class:`BatchCheck`).
    Without ``enabled`` it runs when ``filter.checks`` names it; its options are then
    ``ctx.cfg.filter.checks[name]``. Build each reject with :func:`sample_reject`."""

    def deco(run: BatchRun) -> BatchRun:
        on = enabled or (lambda ctx: name in ctx.cfg.filter.checks)
        _BATCH[name] = BatchCheck(name, run, on, per_sample, order, reports_progress)
        return run

    return deco


def registered_checks(cfg: FilterConfig) -> list[tuple[str, SampleFilter]]:
    """The plugin checks ``filter.checks`` names, bound to their options, in the config's order (names of
    batch checks are theirs to run)."""
    unknown = [n for n in cfg.checks if n not in _CHECKS and n not in _BATCH]
    if unknown:
        raise ConfigError(
            f"filter.checks: no check registered as {unknown}; registered: {sorted(_CHECKS) or 'none'} "
            "(name the module that registers it under plugins:)"
        )
    return [(n, functools.partial(_CHECKS[n], options=opts)) for n, opts in cfg.checks.items() if n in _CHECKS]


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text)).strip()


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    words = normalise(text).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def detect_language(text: str) -> tuple[str, float] | None:
    """(ISO code, probability) by langdetect with a fixed seed, or None when undecidable."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        best = detect_langs(text)[0]
    except LangDetectException:
        return None
    return str(best.lang), float(best.prob)


def build_filters(
    cfg: FilterConfig, count_tokens: Callable[[str], int] | None = None
) -> list[tuple[str, SampleFilter]]:
    from rapidfuzz import fuzz

    from datapipe.filter import content

    context_language = functools.lru_cache(maxsize=4096)(content.language_of_context)

    def empty(s: Sample) -> Verdict:
        if not s.response.strip():
            return "empty_response", "the response is empty"
        return None

    def refusals(s: Sample) -> Verdict:
        if phrase := content.refusal(s.response, cfg.refusal_patterns):
            return "refusal", f"the response refuses or says the answer is missing: {phrase!r}"
        return None

    def lengths(s: Sample) -> Verdict:
        if len(s.instruction.strip()) < cfg.min_instruction_chars:
            return "too_short", f"instruction has {len(s.instruction.strip())} chars < filter.min_instruction_chars"
        n = len(s.response.strip())
        if n < cfg.min_response_chars:
            return "too_short", f"response has {n} chars < filter.min_response_chars={cfg.min_response_chars}"
        if n > cfg.max_response_chars:
            return "too_long", f"response has {n} chars > filter.max_response_chars={cfg.max_response_chars}"
        return None

    def repetition(s: Sample) -> Verdict:
        ratio = repeated_ngram_ratio(s.response)
        if ratio > cfg.max_repeated_ngram_ratio:
            return "repetitive", f"{ratio:.0%} of word 3-grams repeat (> {cfg.max_repeated_ngram_ratio:.0%})"
        return None

    def tokens(s: Sample) -> Verdict:
        if count_tokens is None:
            return None
        n = count_tokens(s.response)
        if n < cfg.min_response_tokens:
            return "too_short", f"response has {n} tokens < filter.min_response_tokens={cfg.min_response_tokens}"
        if n > cfg.max_response_tokens:
            return "too_long", f"response has {n} tokens > filter.max_response_tokens={cfg.max_response_tokens}"
        return None

    def language(s: Sample) -> Verdict:
        if cfg.languages:
            found = detect_language(f"{s.instruction}\n{s.response}")
            if found and found[0] not in cfg.languages and found[1] >= 0.9:
                return (
                    f"wrong_language:{found[0]}",
                    f"detected {found[0]} (p={found[1]:.2f}); filter.languages={cfg.languages}",
                )
        if not cfg.language_match:
            return None
        expected = cfg.target_language or context_language(s.provenance.context)
        if not expected:
            return None
        source = "filter.target_language" if cfg.target_language else "its source chunk"
        for part, text in (("question", _user_text(s)), ("answer", s.response)):
            other = content.other_language(text, expected)
            if other:
                return (
                    "language_mismatch",
                    f"the {part} is in {other[0]} (p={other[1]:.2f}), {source} in {expected}",
                )
        return None

    def copies(s: Sample) -> Verdict:
        answer, question = normalise(s.response), normalise(s.instruction)
        if answer and fuzz.ratio(answer, question) / 100 >= cfg.max_copy_similarity:
            return "copies_question", "the response repeats the question"
        context = normalise(s.provenance.context)
        if context and len(answer) >= 0.8 * len(context):
            ctx_words, ans_words = set(context.split()), set(answer.split())
            if len(ctx_words & ans_words) / max(1, len(ctx_words)) >= cfg.max_copy_similarity:
                return "copies_context", "the response reproduces the whole source chunk"
        if context and not content.carries_context(s):
            span = content.longest_copied_span(s.response, s.provenance.context)
            n_ctx = len(context.split())
            if span >= cfg.max_copied_words or (span >= 15 and span >= 0.6 * n_ctx):
                return (
                    "copies_context",
                    f"the response repeats {span} words of the context verbatim "
                    f"(filter.max_copied_words={cfg.max_copied_words}; the context has {n_ctx})",
                )
        return None

    def self_contained(s: Sample) -> Verdict:
        if not cfg.self_contained or content.carries_context(s):
            return None
        if phrase := content.context_pointer(_user_text(s)):
            return (
                "not_self_contained",
                f"the question points at a text the trainee never sees: {phrase!r}; name the subject instead",
            )
        return None

    def support(s: Sample) -> str:
        return f"{s.provenance.context}\n{_user_text(s)}"

    def numbers(s: Sample) -> Verdict:
        if not cfg.check_numbers or not s.provenance.context.strip():
            return None
        if bad := content.unsupported_numbers(s.response, support(s)):
            return "unsupported_number", f"not in the context: {', '.join(bad[:5])}"
        return None

    def entities(s: Sample) -> Verdict:
        if not cfg.check_entities or not s.provenance.context.strip():
            return None
        lang = cfg.target_language or context_language(s.provenance.context)
        if bad := content.unsupported_entities(s.response, support(s), lang):
            return "unsupported_entity", f"not in the context: {', '.join(bad[:5])}"
        return None

    def novel_words(s: Sample) -> Verdict:
        if cfg.max_unsupported_words is None or not s.provenance.context.strip():
            return None
        lang = cfg.target_language or context_language(s.provenance.context)
        novel, n = content.unsupported_words(s.response, support(s), lang)
        if len(novel) > cfg.max_unsupported_words and len(novel) >= cfg.min_unsupported_share * n:
            return (
                "ungrounded",
                f"{len(novel)} of the answer's {n} content words are not in the context: {', '.join(novel[:8])} "
                f"(filter.max_unsupported_words={cfg.max_unsupported_words}, "
                f"min_unsupported_share={cfg.min_unsupported_share})",
            )
        return None

    return [
        ("empty", empty),
        ("refusal", refusals),
        ("length", lengths),
        ("tokens", tokens),
        ("repetition", repetition),
        ("copy", copies),
        ("language", language),
        ("self_contained", self_contained),
        ("numbers", numbers),
        ("entities", entities),
        ("unsupported_words", novel_words),
        *registered_checks(cfg),
    ]


def _user_text(s: Sample) -> str:
    """The user turns (the question; several in a multi-turn sample), or the instruction."""
    return "\n".join(m.content for m in s.messages if m.role == "user") or s.instruction


def exact_duplicate(s: Sample, seen: dict[str, str]) -> Verdict:
    """The exact-dedup verdict of ``s`` given the samples kept before it (``seen``: key -> first id)."""
    key = hashlib.sha256(f"{normalise(s.instruction)}\x00{normalise(s.response)}".encode()).hexdigest()
    if key in seen:
        return f"duplicate_of:{seen[key]}", "same instruction and response after normalisation"
    seen[key] = s.id
    s.verdicts["dedup_exact"] = "pass"
    return None


def sample_reject(s: Sample, reason: str, detail: str, payload: str | None = None) -> Reject:
    """The filter's one way to drop a sample: a ``filter`` reject naming the sample and its source, with the
    whole sample as payload (so it can be restored) unless the check passes a payload of its own (the judge
    adds its raw reply; the privacy check keeps real values out)."""
    return Reject(
        stage="filter",
        record_id=s.id,
        reason=reason,
        detail=detail,
        source_path=s.provenance.source_path,
        payload=s.model_dump_json() if payload is None else payload,
    )


def verdict_reject(s: Sample, verdict: tuple[str, str]) -> Reject:
    return sample_reject(s, verdict[0], verdict[1])


def filter_samples(
    samples: Iterable[Sample], cfg: FilterConfig, count_tokens: Callable[[str], int] | None = None
) -> Iterator[Sample | Reject]:
    """Yield kept samples (with verdicts recorded) and rejects, in input order. Every filter checks every
    turn of a multi-turn sample (:mod:`datapipe.filter.turns`)."""
    from datapipe.filter.turns import each_turn

    filters = build_filters(cfg, count_tokens)
    seen: dict[str, str] = {}
    for s in samples:
        verdict: Verdict = None
        for name, f in filters:
            verdict = each_turn(f, s)
            if verdict:
                break
            s.verdicts[name] = "pass"
        if verdict is None and cfg.dedup_exact:
            verdict = exact_duplicate(s, seen)
        if verdict:
            yield verdict_reject(s, verdict)
        else:
            yield s
