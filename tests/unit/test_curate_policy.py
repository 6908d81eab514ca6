"""The review policy: how several reviewers' answers become one decision per record."""

from __future__ import annotations

import pytest

from datapipe.curate import Review, decide

ORIGINAL = "The teacher's answer."


def keep(user: str, correction: str | None = None, status: str = "submitted") -> Review:
    return Review(user, status, keep="keep", correction=correction)


def discard(user: str) -> Review:
    return Review(user, "submitted", keep="discard")


def decision(reviews: list[Review], policy: str = "any_discard", min_submitted: int = 1) -> tuple[str, str | None]:
    d, text, *_ = decide(reviews, ORIGINAL, policy, min_submitted)
    return d, text


def test_drafts_and_missing_reviews_stay_pending() -> None:
    assert decision([]) == ("pending", None)
    assert decision([keep("a", status="draft")]) == ("pending", None)
    assert decision([keep("a")], min_submitted=2) == ("pending", None)
    assert decision([keep("a"), keep("b")], min_submitted=2) == ("accepted", None)


@pytest.mark.parametrize(
    ("votes", "any_discard", "majority"),
    [
        (["k"], "accepted", "accepted"),
        (["d"], "discarded", "discarded"),
        (["k", "d"], "discarded", "conflict"),
        (["k", "k", "d"], "discarded", "accepted"),
        (["k", "d", "d"], "discarded", "discarded"),
    ],
)
def test_policies(votes: list[str], any_discard: str, majority: str) -> None:
    reviews = [keep(f"u{i}") if v == "k" else discard(f"u{i}") for i, v in enumerate(votes)]
    assert decision(reviews, "any_discard")[0] == any_discard
    assert decision(reviews, "majority")[0] == majority


def test_argillas_discard_button_counts_as_a_discard_vote() -> None:
    assert decision([Review("a", "discarded", keep="keep")]) == ("discarded", None)


def test_corrections_follow_the_keep_voters() -> None:
    assert decision([keep("a", "Better.")]) == ("corrected", "Better.")
    assert decision([keep("a", f"  {ORIGINAL}  ")]) == ("accepted", None)  # an unchanged prefill is no correction
    assert decision([keep("a", "Better."), keep("b", "Better.")]) == ("corrected", "Better.")
    assert decision([keep("a", "Better."), keep("b"), keep("c")]) == ("accepted", None)
    assert decision([keep("a", "Better."), keep("b", "Other.")]) == ("conflict", None)
    d, _, reviewers, kv, dv, _ = decide([keep("b", "X"), discard("a")], ORIGINAL, "majority", 1)
    assert (d, reviewers, kv, dv) == ("conflict", ["a", "b"], 1, 1)
