"""Extraction with the real unstructured library over the shared corpus and its awkward files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from datapipe.config import ExtractConfig
from datapipe.extract import SourceFile, extract_file, resolve_sources
from datapipe.records import Document, Reject

CFG = ExtractConfig()
PAGED = {".pdf", ".docx", ".pptx"}


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """unstructured must never try to fetch its spaCy model: make any attempt fail the test."""
    import unstructured.nlp.tokenize as tok

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unstructured tried to download a spaCy model")

    monkeypatch.setattr(tok, "_download_with_timeout", refuse)


def _docs(corpus_docs: Path) -> list[Path]:
    files = sorted(p for p in corpus_docs.iterdir() if p.is_file())
    assert len(files) >= 8
    return files


def test_every_corpus_document_yields_text(corpus_docs: Path) -> None:
    for path in _docs(corpus_docs):
        out = extract_file(SourceFile(path), CFG)
        assert isinstance(out, Document), f"{path.name}: {out}"
        assert len(out.text) >= CFG.min_chars
        assert out.spans and all(out.text[s.start : s.end].strip() for s in out.spans)
        if path.suffix in PAGED:
            assert out.n_pages and out.n_pages >= 1, path.name
            assert all(s.page is not None for s in out.spans), path.name
        assert out.id == out.bytes_sha256[:24]


def test_pdf_pages_are_numbered(corpus_docs: Path) -> None:
    doc = extract_file(SourceFile(corpus_docs / "layout-parser-paper-fast.pdf"), CFG)
    assert isinstance(doc, Document)
    assert {s.page for s in doc.spans} == {1, 2}
    assert "LayoutParser" in doc.text


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        pytest.param("password.pdf", "encrypted", id="password-pdf"),
        pytest.param("empty.txt", "empty_file", id="empty"),
        pytest.param("fake-text-all-whitespace.txt", "no_text", id="whitespace-only"),
        pytest.param("fake-power-point-malformed.pptx", "too_little_text", id="malformed-pptx"),
    ],
)
def test_bad_inputs_become_rejects(bad_inputs: Path, name: str, reason: str) -> None:
    out = extract_file(SourceFile(bad_inputs / name), CFG)
    assert isinstance(out, Reject)
    assert out.reason == reason
    assert out.source_path == str(bad_inputs / name) and out.detail


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param("umlauts-non-utf8.md", ["können", "äöüß"], id="latin1-markdown"),
        pytest.param("fake-html-cp1252.html", ["schöne", "köstlich", "été", "niño", "15,50 €"], id="cp1252-html"),
    ],
)
def test_non_utf8_text_keeps_accents(bad_inputs: Path, name: str, expected: list[str]) -> None:
    out = extract_file(SourceFile(bad_inputs / name), ExtractConfig(min_chars=1))
    assert isinstance(out, Document), out
    for word in expected:
        assert word in out.text
    assert "Ã" not in out.text  # the usual mojibake of UTF-8 read as Latin-1


def test_pdf_without_text_is_no_text(tmp_path: Path) -> None:
    from pypdf import PdfWriter

    w = PdfWriter()
    w.add_blank_page(width=612, height=792)
    path = tmp_path / "blank.pdf"
    with open(path, "wb") as fh:
        w.write(fh)
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Reject) and out.reason == "no_text"


def test_truncated_pptx_is_parse_error(corpus_docs: Path, tmp_path: Path) -> None:
    data = (corpus_docs / "fake-power-point.pptx").read_bytes()
    path = tmp_path / "broken.pptx"
    path.write_bytes(data[: len(data) // 2])
    out = extract_file(SourceFile(path), CFG)
    assert isinstance(out, Reject) and out.reason == "parse_error"
    assert "broken.pptx" in out.source_path


def test_resolve_sources_folders_globs_and_unsupported(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("hello")
    (tmp_path / "a" / "y.sav").write_text("1,2")  # an SPSS file: no extractor reads it
    (tmp_path / "a" / ".hidden.txt").write_text("secret")
    (tmp_path / "b.md").write_text("# t")
    with zipfile.ZipFile(tmp_path / "a" / "z.docx", "w") as z:
        z.writestr("x", "y")
    files, rejects = resolve_sources(["a", "*.md"], tmp_path, CFG.extensions)
    assert [f.path.name for f in files] == ["z.docx", "x.txt", "b.md"] or sorted(f.path.name for f in files) == [
        "b.md",
        "x.txt",
        "z.docx",
    ]
    assert [(Path(r.record_id).name, r.reason) for r in rejects] == [("y.sav", "unsupported_format")]


def test_missing_source_is_a_config_error(tmp_path: Path) -> None:
    from datapipe.errors import ConfigError

    with pytest.raises(ConfigError, match="nope"):
        resolve_sources(["nope"], tmp_path, CFG.extensions)
