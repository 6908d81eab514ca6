"""Filter: keep samples worth training on; every drop becomes a reject with a reason.

Each filter is a small function ``(sample) -> None`` (keep) or ``(reason, detail)`` (drop).
Per sample: empty/refusal answers, length bounds (chars and tokens), repetition, language,
answers that copy the question or the whole chunk; then across samples: exact duplicates
(here), benchmark decontamination, grounding, near and semantic duplicates (``dedup``,
``decontam``, ``grounding``) and the LLM judge (``judge``), wired in ``pipeline.run_filter``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator

from datapipe.config import FilterConfig
from datapipe.records import Reject, Sample

Verdict = tuple[str, str] | None
SampleFilter = Callable[[Sample], Verdict]


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

    refusal = re.compile("|".join(cfg.refusal_patterns), re.IGNORECASE) if cfg.refusal_patterns else None

    def empty(s: Sample) -> Verdict:
        if not s.response.strip():
            return "empty_response", "the response is empty"
        return None

    def refusals(s: Sample) -> Verdict:
        if refusal and (m := refusal.search(s.response)):
            return "refusal", f"response matches refusal pattern {m.group(0)!r}"
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
        if not cfg.languages:
            return None
        found = detect_language(f"{s.instruction}\n{s.response}")
        if found and found[0] not in cfg.languages and found[1] >= 0.9:
            return (
                f"wrong_language:{found[0]}",
                f"detected {found[0]} (p={found[1]:.2f}); filter.languages={cfg.languages}",
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
        return None

    return [
        ("empty", empty),
        ("refusal", refusals),
        ("length", lengths),
        ("tokens", tokens),
        ("repetition", repetition),
        ("copy", copies),
        ("language", language),
    ]


def exact_duplicate(s: Sample, seen: dict[str, str]) -> Verdict:
    """The exact-dedup verdict of ``s`` given the samples kept before it (``seen``: key -> first id)."""
    key = hashlib.sha256(f"{normalise(s.instruction)}\x00{normalise(s.response)}".encode()).hexdigest()
    if key in seen:
        return f"duplicate_of:{seen[key]}", "same instruction and response after normalisation"
    seen[key] = s.id
    s.verdicts["dedup_exact"] = "pass"
    return None


def verdict_reject(s: Sample, verdict: tuple[str, str]) -> Reject:
    return Reject(
        stage="filter",
        record_id=s.id,
        reason=verdict[0],
        detail=verdict[1],
        source_path=s.provenance.source_path,
        payload=s.model_dump_json(),
    )


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
