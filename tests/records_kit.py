"""A minimal instruction/QA sample for tests: one user turn, one assistant turn, a chunk-shaped provenance."""

from __future__ import annotations

from typing import Literal

from datapipe.records import Message, Provenance, Sample


def make_sample(
    sample_id: str,
    instruction: str,
    response: str,
    context: str = "ctx",
    kind: Literal["instruction", "qa"] = "instruction",
    source_path: str = "x.txt",
) -> Sample:
    return Sample(
        id=sample_id,
        kind=kind,
        instruction=instruction,
        response=response,
        messages=[Message(role="user", content=instruction), Message(role="assistant", content=response)],
        provenance=Provenance(
            source_path=source_path,
            document_id="d",
            chunk_id="c",
            char_start=0,
            char_end=len(context),
            pages=[],
            context=context,
            teacher_calls=[],
        ),
    )
