"""The catalogue of reasons a stage gives for a record it did not turn into output, and whether a retry can fix it.

A *final* reason (``parse_error``, a judge's verdict, a filter) is an outcome: the record goes to
``rejects/`` and a re-run over the same inputs reuses it. A *retryable* reason (the teacher was
unreachable, timed out, kept answering 429/5xx, the budget ran out) is not an outcome: the record is
*pending*. A shard with pending records is not complete, so the next run (or the Prefect task retry)
computes it again, sending only the requests the response cache has no answer for.

Stages name reasons by code; the catalogue is the one place that says which codes are retryable.
Extend it when a stage gains a reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from datapipe.errors import TeacherError
from datapipe.records import Reject


@dataclass(frozen=True)
class Reason:
    code: str
    stages: tuple[str, ...]
    meaning: str
    retryable: bool


TEACHER_UNAVAILABLE = "teacher_unavailable"
TEACHER_ERROR = "teacher_error"

CATALOGUE: dict[str, Reason] = {
    r.code: r
    for r in (
        Reason(
            TEACHER_UNAVAILABLE,
            ("generate", "filter", "preference"),
            "the teacher could not answer after every retry (connection refused or reset, timeout, 429, 5xx, "
            "a malformed response) or is unreachable; the next run asks again",
            True,
        ),
        Reason(
            "budget_exhausted",
            ("generate", "filter", "preference"),
            "the run's teacher budget was reached before the request was sent; the next run continues",
            True,
        ),
        Reason(
            TEACHER_ERROR,
            ("generate", "filter", "preference"),
            "the teacher refused the request for good (an HTTP 4xx other than 401/403/408/409/429)",
            False,
        ),
        Reason("parse_error", ("generate",), "the teacher's text does not have the shape the task asks for", False),
        Reason("judge_parse_error", ("filter", "preference"), "the judge's reply has no usable score", False),
        Reason(
            "low_score",
            ("filter",),
            "a distilabel judge Task scored the sample below filter.judge.distilabel.min_score",
            False,
        ),  # fmt: skip
        Reason("over_max_chunks", ("generate",), "generate.max_chunks chunks were already sent to the teacher", False),
        Reason(
            "position_inconsistent",
            ("preference",),
            "the pairwise judge's verdicts change when the two answers swap places (A/B vs B/A): position bias",
            False,
        ),
        Reason(
            "judges_disagree",
            ("preference",),
            "both orders of the pairwise judge prefer the answer the rubric judge scored lower",
            False,
        ),
        Reason(
            "longer_not_better",
            ("preference",),
            "the chosen answer is generate.preference.max_length_ratio times longer than the rejected one "
            "without fewer unsupported numbers or names",
            False,
        ),
    )
}


def is_retryable(reason: str) -> bool:
    """Whether a record dropped for ``reason`` may come through on a later run (unknown codes are final)."""
    entry = CATALOGUE.get(reason.split(":", 1)[0])
    return entry is not None and entry.retryable


def split_pending(rejects: Iterable[Reject]) -> tuple[list[Reject], list[Reject]]:
    """``(final, pending)``: the rejects that are outcomes, and those a retry can fix."""
    final: list[Reject] = []
    pending: list[Reject] = []
    for r in rejects:
        (pending if is_retryable(r.reason) else final).append(r)
    return final, pending


def teacher_failure(exc: TeacherError) -> str:
    """The reason code for a teacher request that failed with ``exc``.

    A failure that must stop the stage at once (a refused API key: every later request would be refused
    too) is raised again instead of becoming a reason."""
    if getattr(exc, "stops_stage", False):
        raise exc
    return TEACHER_UNAVAILABLE if exc.transient else TEACHER_ERROR
