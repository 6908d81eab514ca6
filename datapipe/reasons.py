"""The catalogue of reasons a stage gives for a record it did not turn into output, and whether a retry can fix it.

A *final* reason (``parse_error``, a judge's verdict, a filter) is an outcome: the record goes to
``rejects/`` and a re-run over the same inputs reuses it. A *retryable* reason (the teacher was
unreachable, timed out, kept answering 429/5xx) is not an outcome: the record is
*pending*. A shard with pending records is not complete, so the next run (or the Prefect task retry)
computes it again, sending only the requests the response cache has no answer for. (A reached budget is no
reason: it stops the run, ``BudgetExceeded``.)

Stages name reasons by code, some with an argument (``code:arg``: ``duplicate_of:<id>``,
``contaminated:<benchmark>``, ``wrong_language:<code>``); :func:`split_reason` is the one place that parses
that form. The catalogue is the one place that says what a code means, at which stages it occurs and which
codes are retryable; the run summary and the HTML report read the meanings from it. Extend it when a stage
gains a reason (a plugin's own codes may stay out of it: they show without a meaning, and are final).
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
    arg: str = ""
    """What follows ``code:`` (empty: nothing); ``id`` (a record id) is left out when reasons are counted."""


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
        # extract
        Reason("unsupported_format", ("extract",), "no extractor for the file's type", False),
        Reason(
            "unreadable",
            ("extract",),
            "the file or URL could not be read (permissions, a link loop, not a file)",
            False,
        ),
        Reason(
            "too_large",
            ("extract",),
            "the file (or what its container unpacks to) is above extract's size limits",
            False,
        ),
        Reason("empty_file", ("extract",), "the file has zero bytes", False),
        Reason("encrypted", ("extract",), "the document is password-protected", False),
        Reason("no_text", ("extract",), "no text could be extracted", False),
        Reason("too_little_text", ("extract",), "less text than extract.min_chars", False),
        Reason("format_mismatch", ("extract",), "the file's content is not of the type its name says", False),
        Reason(
            "zip_bomb", ("extract",), "the ZIP container has too many entries or unpacks far beyond its size", False
        ),
        Reason("too_deeply_nested", ("extract",), "the document nests deeper than the parser can follow", False),
        Reason("symlinked_folder", ("extract",), "a folder reached through a symbolic link is not followed", False),
        Reason(
            "duplicate_of",
            ("extract", "import", "filter"),
            "the same content as the record named (filter: exact, near or semantic; the detail says which)",
            False,
            "id",
        ),
        # generate
        Reason(
            "over_samples_per_leaf",
            ("generate",),
            "the taxonomy leaf already has generate.qa's samples per leaf",
            False,
        ),
        Reason("no_chunks", ("generate",), "the taxonomy leaf's documents gave no chunk", False),
        Reason(
            "duplicate_question",
            ("generate",),
            "the question nearly repeats another of its chunk's (not answered)",
            False,
        ),
        # import
        Reason(
            "malformed_row",
            ("import",),
            "the row does not have the shape --format says (file and line in the detail)",
            False,
        ),
        # filter
        Reason("pii_leak", ("filter",), "a real value the run pseudonymised appears in the sample", False),
        Reason("empty_response", ("filter",), "the response is empty", False),
        Reason("refusal", ("filter",), "the response refuses or says the answer is missing", False),
        Reason("too_short", ("filter",), "instruction or response below filter's character or token minimum", False),
        Reason("too_long", ("filter",), "response above filter's character or token maximum", False),
        Reason("repetitive", ("filter",), "too many repeated word 3-grams in the response", False),
        Reason("copies_question", ("filter",), "the response repeats the question", False),
        Reason("copies_context", ("filter",), "the response reproduces the source chunk verbatim", False),
        Reason("wrong_language", ("filter",), "written in a language outside filter.languages", False, "language"),
        Reason("language_mismatch", ("filter",), "question or answer in another language than its source", False),
        Reason("not_self_contained", ("filter",), "the question points at a text the trainee never sees", False),
        Reason("unsupported_number", ("filter",), "the answer has numbers its context does not support", False),
        Reason("unsupported_entity", ("filter",), "the answer names people/places its context does not have", False),
        Reason(
            "ungrounded",
            ("filter",),
            "the answer is not supported by its source chunk (content words, or embedding and lexical evidence)",
            False,
        ),
        Reason("contaminated", ("filter",), "shares a long n-gram with the benchmark named", False, "benchmark"),
        Reason(
            "low_faithfulness", ("filter",), "the judge scored faithfulness below filter.judge.min_faithfulness", False
        ),
        Reason("low_quality", ("filter",), "the judge scored quality below filter.judge.min_quality", False),
        # preference
        Reason(
            "over_max_prompts", ("preference",), "generate.preference.max_prompts prompts were already paired", False
        ),
        Reason("tie", ("preference",), "the candidates scored the same, or the pairwise judge calls it a tie", False),
        Reason("all_bad", ("preference",), "the best candidate is below generate.preference.min_chosen_score", False),
        Reason(
            "low_margin",
            ("preference",),
            "chosen and rejected differ by less than generate.preference.min_margin",
            False,
        ),
        # curate, export, publish
        Reason(
            "discarded_by_reviewer",
            ("curate",),
            "the reviewers discarded it (reviewers and policy in the detail)",
            False,
        ),
        Reason("not_curated", ("export",), "export --curated-only and the record has no accepted review", False),
        Reason(
            "too_long_for_max_seq_len",
            ("export",),
            "the rendered row has more tokens than the trainer's max_seq_len",
            False,
        ),
        Reason("source_deleted", ("publish",), "its source is no longer among the sources", False),
        Reason("source_changed", ("publish",), "its source changed and the sample was made from the old text", False),
        Reason("not_regenerated", ("publish",), "the new run did not make this sample again", False),
        Reason("pending", ("publish",), "left out of the version because it is pending (--allow-partial)", False),
        Reason(
            "longer_not_better",
            ("preference",),
            "the chosen answer is generate.preference.max_length_ratio times longer than the rejected one "
            "without fewer unsupported numbers or names",
            False,
        ),
    )
}


def split_reason(reason: str) -> tuple[str, str]:
    """``code:arg`` -> ``(code, arg)``; a reason without an argument -> ``(code, "")``."""
    code, _, arg = reason.partition(":")
    return code, arg


def reason_key(reason: str) -> str:
    """A reason as summaries count it: without its argument when that is a record id (``duplicate_of:<id>`` ->
    ``duplicate_of``), with it when it says something about the data (``contaminated:gsm8k``)."""
    code, arg = split_reason(reason)
    entry = CATALOGUE.get(code)
    return code if arg and entry is not None and entry.arg == "id" else reason


def meaning(reason: str) -> str:
    """What a reason (with or without its argument) means, from the catalogue; "" for a code it lacks."""
    entry = CATALOGUE.get(split_reason(reason)[0])
    return entry.meaning if entry is not None else ""


def is_retryable(reason: str) -> bool:
    """Whether a record dropped for ``reason`` may come through on a later run (unknown codes are final)."""
    entry = CATALOGUE.get(split_reason(reason)[0])
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
