"""Names of the scores the filter writes into ``Sample.scores``: one convention that the judge writes and
curate (Argilla suggestions), the report and exports read."""

from __future__ import annotations

FAITHFULNESS = "judge_faithfulness"
QUALITY = "judge_quality"
SCORE_KEYS = (FAITHFULNESS, QUALITY)


def score_key(name: str) -> str:
    """The ``sample.scores`` key of a judge score (``faithfulness`` -> ``judge_faithfulness``)."""
    return f"judge_{name}"
