"""What one export is asked to write (:class:`ExportOptions`) and what it wrote (:class:`ExportResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from upath import UPath

from datapipe.records import Record, Reject


@dataclass(frozen=True)
class ExportOptions:
    """The ``export:`` config section as one export uses it (paths already resolved)."""

    fmt: str = "chatml"
    system_prompt: str | None = None
    split: float = 1.0
    tokenizer: str | None = None
    token_lengths: bool = True
    max_seq_len: int | None = None
    on_too_long: str = "drop"
    license: str = "other"
    language: tuple[str, ...] = ()
    pretty_name: str | None = None

    def length_settings(self) -> dict[str, Any]:
        """What the per-record token counts and too-long verdicts depend on (the split does not)."""
        return {
            "fmt": self.fmt,
            "system_prompt": self.system_prompt,
            "token_lengths": self.token_lengths,
            "max_seq_len": self.max_seq_len,
            "on_too_long": self.on_too_long,
        }


@dataclass
class RunFacts:
    """What the dataset card says about the run that made the data, read from its manifests."""

    run_id: str | None = None
    sources: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    teachers: list[str] = field(default_factory=list)


@dataclass
class ExportResult:
    """The files one export wrote, its counts, token lengths and rejects."""

    options: ExportOptions
    out_dir: Path | UPath
    schema: pa.Schema
    files: dict[str, Path | UPath]
    rows: dict[str, int]
    n_in: int
    rejects: list[Reject]
    flagged: int
    n_tokens: dict[str, int | None]
    lengths: dict[str, Any] | None
    tokenizer: dict[str, Any] | None
    record_facts: dict[str, Any]
    facts: RunFacts | None = None
    extra_files: dict[str, Path | UPath] = field(default_factory=dict)

    @property
    def fmt(self) -> str:
        return self.options.fmt

    @property
    def n_out(self) -> int:
        return sum(self.rows.values())

    def empty_splits(self) -> list[str]:
        """Splits without records: an empty validation split is not written (``datasets`` cannot load it)."""
        empty = [] if self.rows.get("train") else ["train"]
        if self.options.split < 1.0 and not self.rows.get("validation"):
            empty.append("validation")
        return empty

    def manifest_fields(self) -> dict[str, Any]:
        """The export's own entries of its manifest (next to the stage counts)."""
        return {
            "format": self.fmt,
            "path": str(self.files["train"]),
            "out_dir": str(self.out_dir),
            "files": {k: str(v) for k, v in self.files.items()},
            "splits": dict(self.rows),
            "split_fraction": self.options.split,
            "empty_splits": self.empty_splits(),
            "token_lengths": self.lengths,
            "tokenizer": self.tokenizer,
            "max_seq_len": self.options.max_seq_len,
            "on_too_long": self.options.on_too_long,
            "flagged_too_long": self.flagged,
            "card": str(self.extra_files.get("card", "")),
            "snippets": {k: str(v) for k, v in self.extra_files.items() if k != "card"},
        }


class TokenCount(Record):
    """One exported record's token count, kept in the run store so a re-export need not tokenize again."""

    id: str
    n_tokens: int | None = None

    schema_ = pa.schema([("id", pa.string()), ("n_tokens", pa.int32())])
