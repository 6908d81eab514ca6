"""Every assistant turn of a sample passes the filters: a multi-turn conversation is checked turn by turn.

A filter reads ``instruction`` and ``response``, which are a sample's last turn. :func:`turn_views`
gives one view per user/assistant pair, with that pair as ``instruction``/``response`` and
everything else (provenance, format, ``context_in_row``) of the sample, so a per-sample filter
judges each turn without knowing about conversations. A sample is dropped when any turn is.
"""

from __future__ import annotations

from collections.abc import Callable

from datapipe.records import Sample

Verdict = tuple[str, str] | None


def turn_views(sample: Sample) -> list[Sample]:
    """One view of ``sample`` per (user, assistant) pair of its messages; just the sample for a single turn."""
    pairs = [
        (u.content, a.content)
        for u, a in zip(sample.messages, sample.messages[1:], strict=False)
        if u.role == "user" and a.role == "assistant"
    ]
    if len(pairs) <= 1:
        return [sample]
    return [sample.model_copy(update={"instruction": q, "response": r}) for q, r in pairs]


def each_turn(check: Callable[[Sample], Verdict], sample: Sample) -> Verdict:
    """The first failing turn's verdict (its detail names the turn), or None when every turn passes."""
    views = turn_views(sample)
    for n, view in enumerate(views, 1):
        verdict = check(view)
        if verdict:
            return (verdict[0], f"turn {n} of {len(views)}: {verdict[1]}") if len(views) > 1 else verdict
    return None
