"""Filter: keep samples worth training on; every drop becomes a reject with a reason.

Each filter is a small function ``(sample) -> None`` (keep) or ``(reason, detail)`` (drop).
First cut: empty/refusal answers, length bounds, repetition, exact duplicates.
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


def build_filters(cfg: FilterConfig) -> list[tuple[str, SampleFilter]]:
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

    return [("empty", empty), ("refusal", refusals), ("length", lengths), ("repetition", repetition)]


def filter_samples(samples: Iterable[Sample], cfg: FilterConfig) -> Iterator[Sample | Reject]:
    """Yield kept samples (with verdicts recorded) and rejects, in input order."""
    filters = build_filters(cfg)
    seen: dict[str, str] = {}
    for s in samples:
        verdict: Verdict = None
        for name, f in filters:
            verdict = f(s)
            if verdict:
                break
            s.verdicts[name] = "pass"
        if verdict is None and cfg.dedup_exact:
            key = hashlib.sha256(f"{normalise(s.instruction)}\x00{normalise(s.response)}".encode()).hexdigest()
            if key in seen:
                verdict = f"duplicate_of:{seen[key]}", "same instruction and response after normalisation"
            else:
                seen[key] = s.id
                s.verdicts["dedup_exact"] = "pass"
        if verdict:
            yield Reject(
                stage="filter",
                record_id=s.id,
                reason=verdict[0],
                detail=verdict[1],
                source_path=s.provenance.source_path,
                payload=s.model_dump_json(),
            )
        else:
            yield s
