"""Tables stay tables: real unstructured (and pdfplumber) over the shared corpus and over documents the tests
write the way their producers do (an SEC-style 10-K, DOCX and XLSX through their libraries, a PDF through
reportlab); long tables split by rows with the header repeated; layout noise out of a generated PDF."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from datapipe.config import ChunkConfig, ExtractConfig
from datapipe.extract import SourceFile, extract_file
from datapipe.extract.tables import html_fragment_table
from datapipe.records import Document, Reject
from tests.doc_kit import BALANCE_SHEET, long_10k_html, table_pdf

CFG = ExtractConfig()


def _doc(path: Path, cfg: ExtractConfig = CFG) -> Document:
    out = extract_file(SourceFile(path), cfg)
    assert isinstance(out, Document), out
    return out


def _tables(doc: Document) -> list[str]:
    return [doc.text[s.start : s.end] for s in doc.spans if s.category == "Table"]


def _rows(table: str) -> list[list[str]]:
    """A Markdown table's rows as cell lists (header first), separator and caption lines left out."""
    out = []
    for line in table.splitlines():
        if not line.startswith("|") or re.match(r"^\|(\s*-{3,}\s*\|)+$", line):
            continue
        out.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return out


def test_long_10k_balance_sheet_keeps_each_value_in_its_row_under_its_year(tmp_path: Path) -> None:
    path = tmp_path / "gmgi-10k.html"
    path.write_text(long_10k_html(pages=80), encoding="utf-8")
    doc = _doc(path)
    sheets = [t for t in _tables(doc) if "Cash and cash equivalents" in t]
    assert len(sheets) == 1, _tables(doc)
    rows = _rows(sheets[0])
    header = rows[0]
    assert header[1:] == ["December 31, 2021", "December 31, 2020"]
    by_label = {r[0]: r[1:] for r in rows[1:]}
    assert by_label["Cash and cash equivalents"] == ["$16,058,714", "$5,993,388"]
    assert "| Cash and cash equivalents | $16,058,714 | $5,993,388 |" in doc.text
    for label, a, b in BALANCE_SHEET:  # every row, with "$" and ")" joined to their values
        if a is not None:
            assert by_label[label][0].lstrip("$") == a and by_label[label][1].lstrip("$") == b, label
    assert sheets[0].startswith("Table: ")
    assert doc.removed.page_numbers == 71  # pages 10-80 (unstructured drops one-character paragraphs itself)
    assert not re.search(r"(?m)^\d{1,3}$", doc.text)


def test_shared_10k_cover_tables_come_out_as_rows(corpus_docs: Path) -> None:
    doc = _doc(corpus_docs / "example-10k-1p.html")
    tables = _tables(doc)
    rows = [r for t in tables for r in _rows(t)]
    assert ["Common stock", "GLXZ", "OTCQB marketplace"] in rows
    assert ["Title of each class", "Trading symbol", "Name of exchange on which registered"] in rows
    assert ["Item 1A.", "Risk Factors", "9"] in rows


def test_docx_table_cells_stay_under_their_header(tmp_path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Price list 2024", level=1)
    d.add_paragraph("Prices below are per unit, in euros, before tax.")
    t = d.add_table(rows=4, cols=3)
    for r, row in enumerate(
        [
            ("Product", "Unit", "Price"),
            ("Bolt M6", "box of 100", "4.20"),
            ("Nut M6", "box of 100", "2.10"),
            ("Washer", "box of 500", "3.35"),
        ]
    ):
        for c, value in enumerate(row):
            t.cell(r, c).text = value
    path = tmp_path / "prices.docx"
    d.save(str(path))
    doc = _doc(path)
    (table,) = _tables(doc)
    assert table.startswith("Table: Price list 2024")
    rows = _rows(table)
    assert rows[0] == ["Product", "Unit", "Price"]
    assert ["Nut M6", "box of 100", "2.10"] in rows


def test_shared_docx_extracts_with_tables_as_markdown_when_it_has_any(corpus_docs: Path) -> None:
    doc = _doc(corpus_docs / "handbook-1p.docx")
    for table in _tables(doc):
        rows = _rows(table)
        assert len(rows) >= 2 and len({len(r) for r in rows}) == 1, table


def test_xlsx_sheet_is_a_table(tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Schedule"
    for row in [("Route", "Departs", "Arrives"), ("Oslo-Bergen", "07:25", "14:05"), ("Bergen-Flåm", "08:10", "13:30")]:
        ws.append(row)
    path = tmp_path / "schedule.xlsx"
    wb.save(str(path))
    doc = _doc(path, ExtractConfig(min_chars=10))
    rows = [r for t in _tables(doc) for r in _rows(t)]
    assert ["Bergen-Flåm", "08:10", "13:30"] in rows


def test_sec_html_quirks_in_text_as_html() -> None:
    """unstructured's text_as_html keeps colspans and split cells as the source had them."""
    html = (
        "<table><tr><td></td><td colspan='3'>2023</td><td colspan='3'>2022</td></tr>"
        "<tr><td>Net loss</td><td>$</td><td>(1,204</td><td>)</td><td>$</td><td>(880</td><td>)</td></tr>"
        "<tr><td>Margin</td><td></td><td>12.5</td><td>%</td><td></td><td>9.0</td><td>%</td></tr></table>"
    )
    table = html_fragment_table(html)
    assert table is not None
    assert table.header == ["", "2023", "2022"]
    assert table.rows == [["Net loss", "$(1,204)", "$(880)"], ["Margin", "12.5%", "9.0%"]]


@pytest.fixture(scope="module")
def paper_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return table_pdf(tmp_path_factory.mktemp("pdf") / "paper.pdf", pages=4)


@pytest.fixture(scope="module")
def paper_pdf(paper_path: Path) -> Document:
    return _doc(paper_path)


def test_pdf_ruled_table_rows_keep_their_cells(paper_pdf: Document) -> None:
    (table,) = _tables(paper_pdf)
    rows = _rows(table)
    assert rows[0] == ["Region", "Widget", "Price 2022", "Price 2023"]
    assert ["East", "Flange", "21.00", "19.95"] in rows
    assert "Flange" not in paper_pdf.text.replace(table, "")  # the cells are not also left as loose text
    span = next(s for s in paper_pdf.spans if s.category == "Table")
    assert span.page == 2


@pytest.mark.parametrize(
    "skip", [["Header", "Footer", "PageBreak"], ["PageBreak"]], ids=["unstructured-labels-kept", "by-repetition"]
)
def test_pdf_margin_stamp_running_header_and_page_numbers_are_removed(paper_path: Path, skip: list[str]) -> None:
    """With unstructured's Header/Footer labels (position) dropped as configured by default, and without
    them, where repetition across pages and the page-number pattern must find them."""
    doc = _doc(paper_path, ExtractConfig(skip_categories=skip))
    text = doc.text
    assert text.count("Journal of Synthetic Tabular Studies") == 0
    assert not re.search(r"(?:\b\w\b ){3,}", text), text[:300]  # no glyph run of the vertical stamp
    assert not re.search(r"(?m)^\s*[1-4]\s*$", text)
    assert text.startswith("Measuring Widget Prices Across Regions")
    removed = doc.removed
    assert removed.running_headers == 4 and removed.page_numbers == 4 and removed.margin_stamps == 3, removed


def test_long_table_splits_by_rows_with_the_header_repeated(tmp_path: Path) -> None:
    from datapipe.chunk import SemanticChunker

    rows = "".join(f"<tr><td>Item {i:03d}</td><td>{i * 3}.50</td><td>warehouse {i % 7}</td></tr>" for i in range(200))
    html = (
        "<html><body><h1>Inventory</h1><p>The inventory at year end, by item.</p>"
        f"<table><tr><th>Item</th><th>Price</th><th>Location</th></tr>{rows}</table>"
        "<p>Counts were taken on 31 December by two teams.</p></body></html>"
    )
    path = tmp_path / "inventory.html"
    path.write_text(html, encoding="utf-8")
    doc = _doc(path)
    chunker = SemanticChunker(ChunkConfig(max_tokens=128, min_tokens=16))
    chunks = chunker.chunk(doc)
    table_chunks = [c for c in chunks if "| Item | Price | Location |" in c.text]
    assert len(table_chunks) >= 5
    seen = []
    for c in table_chunks:
        lines = [line for line in c.text.splitlines() if line.startswith("| Item ")]
        assert lines[0] == "| Item | Price | Location |"  # the header opens every part
        body = [line for line in lines[1:]]
        assert all(re.fullmatch(r"\| Item \d{3} \| \d+\.50 \| warehouse \d \|", line) for line in body), body
        seen += body
        assert c.n_tokens <= 128
    assert len(seen) == 200 and len(set(seen)) == 200  # every row once, none cut


def test_broken_ruled_pdf_is_a_clear_reject(tmp_path: Path) -> None:
    path = table_pdf(tmp_path / "cut.pdf", pages=2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    out = extract_file(SourceFile(path), CFG)
    if isinstance(out, Reject):
        assert out.reason in {"parse_error", "no_text", "too_little_text"} and out.detail
    else:  # pdfminer reads what is left of a truncated file; the table finder must not break on it
        assert out.text


def test_html_page_numbers_go_and_years_and_prose_stay(tmp_path: Path) -> None:
    paras = ["Revenue grew in every region this year, led by licensing.", "F-3", "1999", "47", "Table 3", "Note 4"]
    path = tmp_path / "filing.html"
    path.write_text("<html><body>" + "".join(f"<p>{p}</p>" for p in paras) + "</body></html>", encoding="utf-8")
    doc = _doc(path, ExtractConfig(min_chars=10))
    kept = doc.text.split("\n\n")
    assert kept == ["Revenue grew in every region this year, led by licensing.", "1999", "Table 3", "Note 4"]
    assert doc.removed.page_numbers == 2


def test_body_rows_without_a_label_are_not_taken_for_headers() -> None:
    html = (
        "<table><tr><td></td><td>Q1</td><td>Q2</td></tr>"
        "<tr><td></td><td>1,204</td><td>880</td></tr>"
        "<tr><td>Total</td><td>$2,000</td><td>$1,000</td></tr></table>"
    )
    table = html_fragment_table(html)
    assert table is not None
    assert table.header == ["", "Q1", "Q2"]
    assert table.rows == [["", "1,204", "880"], ["Total", "$2,000", "$1,000"]]


def test_shared_arxiv_paper_loses_its_whole_margin_stamp(corpus_docs: Path) -> None:
    doc = _doc(corpus_docs / "layout-parser-paper-fast.pdf")
    assert doc.text.startswith("LayoutParser: A Uniﬁed Toolkit for Deep Learning Based Document Image Analysis")
    assert "v i X r a" not in doc.text and "n u J" not in doc.text
    assert doc.removed.margin_stamps >= 5
