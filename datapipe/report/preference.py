"""Figures on preference pairs for the summary and the HTML report: does the data carry signal?

- margin distribution of the judged pairs (chosen score - rejected score);
- position consistency: of the candidate pairs the pairwise judge saw in both orders (A/B and B/A) with a
  verdict each time, how many got the same verdict both ways (kept pairs and ``position_inconsistent``,
  ``judges_disagree`` and ``tie`` rejects alike, read from the verdicts each record keeps);
- longer-wins rate: of the judged pairs whose answers differ in length, how often the chosen one is the
  longer (near 100% hints at a judge that rewards length);
- where chosen and rejected came from (original, teacher, student, hard_negative), and the hard negatives.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from datapipe.records import PreferencePair, Reject


def _consistent(verdicts: list[dict[str, Any]]) -> bool | None:
    """Whether two verdicts (both orders) prefer the same candidate (or both say tie); None if not checkable."""
    if len(verdicts) != 2 or not all(v.get("winner") for v in verdicts):
        return None
    preferred = [
        "tie" if v["winner"] == "tie" else (v["first"] if v["winner"] == "first" else v["second"]) for v in verdicts
    ]
    return preferred[0] == preferred[1]


def reject_verdicts(reject: Reject) -> list[dict[str, Any]]:
    """The pairwise verdicts a preference reject keeps in its payload ([] when none)."""
    if reject.stage != "preference" or not reject.payload:
        return []
    try:
        verdicts = json.loads(reject.payload).get("pairwise") or []
    except (ValueError, AttributeError):
        return []
    return verdicts if isinstance(verdicts, list) else []


def preference_stats(
    pairs: Iterable[PreferencePair], reject_verdict_lists: Iterable[list[dict[str, Any]]]
) -> dict[str, Any]:
    """The figures above, from the preference stage's pairs and its rejects' verdicts (:func:`reject_verdicts`)."""
    pairs = list(pairs)
    synthetic = [p for p in pairs if any(c.source == "hard_negative" for c in p.candidates)]
    judged = [p for p in pairs if p not in synthetic]
    checks: list[bool] = []
    verdict_lists = [[v.model_dump() for v in p.pairwise] for p in judged] + list(reject_verdict_lists)
    for verdicts in verdict_lists:
        if (ok := _consistent(verdicts)) is not None:
            checks.append(ok)
    differ = [p for p in judged if p.length_diff]
    margins = sorted(p.margin for p in judged)
    source_of = {}
    for p in pairs:
        source_of[p.id] = (
            next((c.source for c in p.candidates if c.text == p.chosen[-1].content), "?"),
            next((c.source for c in p.candidates if c.text == p.rejected[-1].content), "?"),
        )
    return {
        "pairs": len(judged),
        "hard_negatives": len(synthetic),
        "margins": dict(sorted(Counter(f"{m:g}" for m in margins).items(), key=lambda kv: float(kv[0]))),
        "margin_buckets": margin_buckets(margins),
        "margin_median": margins[len(margins) // 2] if margins else None,
        "pairwise_checked": len(checks),
        "position_consistent": sum(checks),
        "position_consistency_rate": sum(checks) / len(checks) if checks else None,
        "length_differs": len(differ),
        "longer_won": sum(p.length_diff > 0 for p in differ),
        "longer_wins_rate": sum(p.length_diff > 0 for p in differ) / len(differ) if differ else None,
        "chosen_by_source": dict(Counter(c for c, _ in source_of.values())),
        "rejected_by_source": dict(Counter(r for _, r in source_of.values())),
    }


def pct(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


def _rate(rate: float | None) -> str:
    return "none" if rate is None else f"{rate:.2f}"


MARGIN_BUCKETS = ("<1", "1", "2", "3", "4")


def margin_buckets(margins: Iterable[float]) -> dict[str, int]:
    """Margins counted by whole points (1-5 scores differ by at most 4): every bucket, even when empty."""
    out = dict.fromkeys(MARGIN_BUCKETS, 0)
    for m in margins:
        out["<1" if m < 1 else str(min(4, int(m)))] += 1
    return out


def preference_lines(stats: dict[str, Any]) -> list[str]:
    """The summary's lines on preference pairs; their shape does not depend on the data (the README shows it)."""
    buckets = ", ".join(f"{k}: {n}" for k, n in stats["margin_buckets"].items())
    return [
        f"preference pairs: {stats['pairs']} judged, {stats['hard_negatives']} hard negatives; margins {buckets}",
        f"pairwise judge, same verdict for A/B and B/A: {stats['position_consistent']} of {stats['pairwise_checked']} "
        f"({_rate(stats['position_consistency_rate'])}); longer answer chosen: {stats['longer_won']} of "
        f"{stats['length_differs']} ({_rate(stats['longer_wins_rate'])})",
    ]
