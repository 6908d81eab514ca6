"""More formats through real unstructured: EPUB, ODT, RTF, reStructuredText and Org (unstructured runs
pandoc; the test files are written by pandoc from one Markdown source), CSV/TSV, XLSX (openpyxl) and e-mail
(Python's email package). Each extracts its text and its table; each has a clear reject when broken."""

from __future__ import annotations

import re
import subprocess
from email.message import EmailMessage
from pathlib import Path

import pytest

from datapipe.config import ExtractConfig
from datapipe.extract import SourceFile, extract_file
from datapipe.records import Document, Reject

CFG = ExtractConfig(min_chars=20)
SOURCE_MD = """# Field guide to northern birds

The Arctic tern migrates from the Arctic to the Antarctic every year, the longest migration of any animal.

| Bird | Wingspan (cm) | Weight (g) |
| --- | --- | --- |
| Arctic tern | 76 | 110 |
| Puffin | 53 | 490 |

Puffins nest in burrows on grassy cliff tops and dive for sand eels.
"""


def _pandoc(tmp_path: Path, fmt: str) -> Path:
    src = tmp_path / "birds.md"
    src.write_text(SOURCE_MD, encoding="utf-8")
    out = tmp_path / f"birds.{fmt}"
    to = {"epub": "epub", "odt": "odt", "rtf": "rtf", "rst": "rst", "org": "org"}[fmt]
    subprocess.run(["pandoc", "-s", str(src), "-f", "markdown", "-t", to, "-o", str(out)], check=True)
    return out


def _rows(doc: Document) -> list[list[str]]:
    out = []
    for s in doc.spans:
        if s.category != "Table":
            continue
        for line in doc.text[s.start : s.end].splitlines():
            if line.startswith("|") and not re.match(r"^\|(\s*-{3,}\s*\|)+$", line):
                out.append([c.strip() for c in line.strip().strip("|").split("|")])
    return out


@pytest.mark.parametrize("fmt", ["epub", "odt", "rtf", "rst", "org"])
def test_pandoc_formats_extract_text_and_table(tmp_path: Path, fmt: str) -> None:
    out = extract_file(SourceFile(_pandoc(tmp_path, fmt)), CFG)
    assert isinstance(out, Document), out
    assert "longest migration of any animal" in out.text
    assert "sand eels" in out.text
    assert ["Puffin", "53", "490"] in _rows(out), out.text


@pytest.mark.parametrize("fmt, sep", [("csv", ","), ("tsv", "\t")], ids=["csv", "tsv"])
def test_delimited_files_are_tables(tmp_path: Path, fmt: str, sep: str) -> None:
    path = tmp_path / f"stock.{fmt}"
    rows = [["sku", "name", "on_hand"], ["A-100", "Hex bolt", "420"], ["A-200", "Lock nut", "1310"]]
    path.write_text("\n".join(sep.join(r) for r in rows) + "\n", encoding="utf-8")
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Document), out
    assert ["A-200", "Lock nut", "1310"] in _rows(out), out.text


def test_email_extracts_its_body(tmp_path: Path) -> None:
    msg = EmailMessage()
    msg["From"] = "ops@example.com"
    msg["To"] = "team@example.com"
    msg["Subject"] = "Maintenance window"
    msg.set_content("The database maintenance window moves to Saturday 02:00 UTC and lasts two hours.")
    path = tmp_path / "notice.eml"
    path.write_bytes(bytes(msg))
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Document), out
    assert "Saturday 02:00 UTC" in out.text


@pytest.mark.parametrize("fmt", ["epub", "odt"])
def test_truncated_zip_formats_are_parse_errors(tmp_path: Path, fmt: str) -> None:
    path = _pandoc(tmp_path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Reject)
    assert out.reason == "parse_error" and "damaged or truncated ZIP" in out.detail


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("book.epub", b"<html><body>Sign in</body></html>", "format_mismatch"),
        ("memo.rtf", b"plain text saved with the wrong name, long enough to pass", "format_mismatch"),
        ("data.csv", b"\x00\x01\x02binary\x00" * 20, "format_mismatch"),
        ("notes.org", b"\x7fELF\x00\x00" * 40, "format_mismatch"),
    ],
    ids=["html-named-epub", "text-named-rtf", "binary-csv", "binary-org"],
)
def test_misnamed_files_are_rejected_with_their_real_type(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Reject), out
    assert out.reason == reason and name.rsplit(".", 1)[1] in out.detail


def test_broken_rtf_is_a_clear_reject_or_its_text(tmp_path: Path) -> None:
    path = _pandoc(tmp_path, "rtf")
    path.write_bytes(path.read_bytes()[:40])
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Reject) and out.reason in {"parse_error", "no_text", "too_little_text"}, out
