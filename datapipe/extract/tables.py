"""Tables as Markdown: HTML tables (a source page's, or unstructured's ``text_as_html`` for DOCX, PPTX and
XLSX) and ruled PDF tables (pdfplumber) become a header row plus one Markdown row per table row.

Why not unstructured's table text: it joins every cell with spaces, so which figure belongs to which
year is lost. Why not a plain HTML-to-Markdown converter: financial filings (SEC 10-K/10-Q) lay tables
out for print — a ``$`` in its own cell, ``(1,234`` and ``)`` in two cells, empty spacer columns, years
spanning three columns each (``colspan``), tables nested in layout tables. :func:`parse_html_table`
rebuilds the logical columns: it joins currency signs and closing parentheses/percent signs to their
value, then places the fewest column cuts that keep every two neighbouring cells of every row apart
(an interval-stabbing problem, solved greedily), so spacer columns vanish and a header spanning a
value's cells lands over that value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MAX_SPAN = 64  # a colspan/rowspan above this is treated as this (hostile or broken markup)
_WS = re.compile(r"\s+")
_CURRENCY = {"$", "US$", "€", "£", "¥", "CHF", "C$", "A$"}
_CLOSERS = re.compile(r"^(?:\)|%|\)%|%\)|pts?\.?)$")
_YEARISH = re.compile(r"^(?:(?:19|20)\d\d|fy\s?\d{2,4}|q[1-4]|\d{1,2}/\d{1,2}/\d{2,4})$", re.IGNORECASE)
_VALUEISH = re.compile(r"\d[\d,]*\.?\d*|—|–")
_NUMBER = re.compile(r"^[$€£¥(\-–—]*\d[\d,.]*\)?%?$")


def _is_value(cell: str) -> bool:
    """A figure in a table body (``$16,058,714``, ``(1,204)``, ``12.5%``), not a year heading."""
    return bool(_NUMBER.match(cell)) and not _YEARISH.match(cell)


TABLE_CATEGORY = "Table"


@dataclass
class _Cell:
    text: str
    start: int  # first grid column it covers
    end: int  # one past the last grid column it covers
    header: bool = False  # a <th>, or a cell inside <thead>


@dataclass
class Table:
    """A table's logical content: one header row (multi-row headers joined per column) and body rows."""

    header: list[str]
    rows: list[list[str]]
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_cols(self) -> int:
        return len(self.header)

    def markdown(self) -> str:
        """The table as GitHub-flavoured Markdown: header row, separator, one line per row."""
        lines = [_md_row(self.header), "| " + " | ".join("---" for _ in self.header) + " |"]
        lines += [_md_row(r) for r in self.rows]
        return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def clean_text(text: str) -> str:
    return _WS.sub(" ", text.replace("\u00a0", " ").replace("\u200b", "")).strip()


def _cell_text(el: Any) -> str:
    # Block children (<p>, <div>, <br>) separate words; inline XBRL tags (ix:nonNumeric) do not.
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node.tag, str) and node.text:
            parts.append(node.text)
        for child in node:
            block = isinstance(child.tag, str) and child.tag.lower() in ("p", "div", "br", "li", "tr", "td", "th")
            if block:
                parts.append(" ")
            walk(child)
            if block:
                parts.append(" ")
            if child.tail:
                parts.append(child.tail)

    walk(el)
    return clean_text("".join(parts))


def _rows_of(table: Any) -> list[tuple[Any, bool]]:
    """The table's own rows (not those of nested tables), each with whether it sits in <thead>."""
    out = []
    for child in table:
        tag = child.tag.lower() if isinstance(child.tag, str) else ""
        if tag == "tr":
            out.append((child, False))
        elif tag in ("thead", "tbody", "tfoot"):
            out += [(tr, tag == "thead") for tr in child if isinstance(tr.tag, str) and tr.tag.lower() == "tr"]
    return out


def _span(el: Any, name: str) -> int:
    try:
        return max(1, min(MAX_SPAN, int(str(el.get(name, "1")).strip() or 1)))
    except ValueError:
        return 1


def _grid(table: Any) -> list[list[_Cell]]:
    """Each row's non-empty cells with the grid columns they cover (colspan and rowspan expanded)."""
    taken: dict[tuple[int, int], bool] = {}
    rows: list[list[_Cell]] = []
    for r, (tr, in_head) in enumerate(_rows_of(table)):
        col = 0
        cells: list[_Cell] = []
        for td in tr:
            tag = td.tag.lower() if isinstance(td.tag, str) else ""
            if tag not in ("td", "th"):
                continue
            while taken.get((r, col)):
                col += 1
            cs, rs = _span(td, "colspan"), _span(td, "rowspan")
            for dr in range(1, rs):
                for dc in range(cs):
                    taken[(r + dr, col + dc)] = True
            text = _cell_text(td)
            if text:
                cells.append(_Cell(text, col, col + cs, in_head or tag == "th"))
            col += cs
        rows.append(_join_split_values(cells))
    return rows


def _join_split_values(cells: list[_Cell]) -> list[_Cell]:
    """``$`` | ``1,234`` -> ``$1,234``; ``(1,234`` | ``)`` -> ``(1,234)``; ``12`` | ``%`` -> ``12%``."""
    out: list[_Cell] = []
    pending: _Cell | None = None
    for c in cells:
        if pending is not None:
            c = _Cell(pending.text + c.text, pending.start, c.end, c.header)
            pending = None
        if c.text in _CURRENCY:
            pending = c
            continue
        if out and _CLOSERS.match(c.text):
            prev = out[-1]
            out[-1] = _Cell(prev.text + c.text, prev.start, c.end, prev.header)
            continue
        out.append(c)
    if pending is not None:
        out.append(pending)
    return out


def _cuts(rows: list[list[_Cell]]) -> list[int]:
    """The fewest column boundaries that separate every two neighbouring cells of every row."""
    gaps = sorted(
        {(a.end, b.start) for row in rows for a, b in zip(row, row[1:], strict=False)}, key=lambda g: (g[1], g[0])
    )
    cuts: list[int] = []
    for lo, hi in gaps:
        if not any(lo <= c <= hi for c in cuts):
            cuts.append(hi)
    return sorted(cuts)


def _header_rows(grid: list[list[str]], th_rows: list[bool], full: list[bool]) -> int:
    """How many leading rows are column headers: <th>/<thead> rows, else rows with an empty first column
    (a filing's "December 31," over its years), then a row of years or words under them. A row that is
    one cell across the whole table is a title, not a column header. 0: no header row."""
    n = 0
    while n < len(grid) - 1 and th_rows[n] and not full[n]:
        n += 1
    if n:
        return n
    while n < len(grid) - 1 and not grid[n][0] and not full[n] and not any(_is_value(c) for c in grid[n][1:]):
        n += 1
    if n < len(grid) - 1 and not full[n]:
        rest = [c for c in grid[n][1:] if c]
        if rest and all(_YEARISH.match(c) or not _VALUEISH.search(c) for c in rest):
            n += 1
    if n == 0 and not full[0]:
        n = 1
    return n


def parse_html_table(table: Any, caption: str | None = None) -> Table | None:
    """The logical table of an lxml ``<table>`` element; None when it is not a data table
    (fewer than two columns or two rows of content: layout tables, a checkbox next to its label)."""
    rows = [r for r in _grid(table) if r]
    if len(rows) < 2:
        return None
    cuts = _cuts(rows)
    width = max(c.end for r in rows for c in r)
    bounds = [0, *[c for c in cuts if 0 < c < width], width]
    cols = list(zip(bounds, bounds[1:], strict=False))
    grid: list[list[str]] = []
    th_rows: list[bool] = []
    spans: list[list[bool]] = []  # per row and column: the text repeats a cell spanning several columns
    for row in rows:
        out = [""] * len(cols)
        rep = [False] * len(cols)
        for cell in row:
            hit = [i for i, (a, b) in enumerate(cols) if a < cell.end and cell.start < b]
            for k, i in enumerate(hit):
                out[i] = cell.text
                rep[i] = k > 0
        grid.append(out)
        spans.append(rep)
        th_rows.append(all(c.header for c in row))
    keep = [i for i in range(len(cols)) if any(g[i] for g in grid)]
    grid = [[g[i] for i in keep] for g in grid]
    spans = [[s[i] for i in keep] for s in spans]
    if len(keep) < 2:
        return None
    full = [len(row) == 1 and all(rep[1:]) for row, rep in zip(rows, spans, strict=True)]
    n_head = _header_rows(grid, th_rows, full)
    header: list[str] = []
    for i in range(len(keep)):
        words: list[str] = []
        for g in grid[:n_head]:
            if g[i] and (not words or words[-1] != g[i]):
                words.append(g[i])
        header.append(" ".join(words))
    body = []
    for g, s in zip(grid[n_head:], spans[n_head:], strict=True):
        cells = [("" if rep else t) for t, rep in zip(g, s, strict=True)]  # a spanning body cell: first column only
        if any(cells):
            body.append(cells)
    if not body:
        return None
    return Table(header=header, rows=body, caption=caption)


def html_fragment_table(html: str) -> Table | None:
    """The first table of an HTML fragment (unstructured's ``text_as_html``) as a :class:`Table`."""
    import lxml.html

    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except Exception:  # lxml raises several types for broken markup
        return None
    found = root.xpath(".//table")
    return parse_html_table(found[0]) if found else None


TOKEN = "DATAPIPETABLE{:06d}X"
TOKEN_RE = re.compile(r"^DATAPIPETABLE(\d{6})X$")


def replace_html_tables(html: str) -> tuple[str, list[Table]]:
    """Swap every data table of an HTML page for a paragraph holding a token (``DATAPIPETABLE000000X``)
    and return the page and the tables; the extractor puts each table's Markdown where its token lands.

    Innermost tables first: a data table nested in a layout table is kept and the layout table
    unwrapped; a layout table without data tables is left to unstructured as text.
    """
    import lxml.html

    if "<table" not in html.lower():
        return html, []
    parser = lxml.html.HTMLParser(encoding="utf-8", remove_comments=True, remove_pis=True)
    doc = lxml.html.document_fromstring(html.encode("utf-8", errors="replace"), parser=parser)
    tables: list[Table] = []
    for table in reversed(doc.xpath("//table")):
        if table.getparent() is None:
            continue
        caption_el = next((c for c in table if isinstance(c.tag, str) and c.tag.lower() == "caption"), None)
        caption = clean_text(caption_el.text_content()) if caption_el is not None else None
        has_token = any(TOKEN_RE.match(clean_text(p.text_content())) for p in table.iter("p"))
        parsed = None if has_token else parse_html_table(table, caption or None)
        parent = table.getparent()
        if parsed is not None:
            p = lxml.html.Element("p")
            p.text = TOKEN.format(len(tables))
            p.tail = table.tail
            parent.replace(table, p)
            tables.append(parsed)
        elif has_token:  # a layout table around data tables: keep its cells' content as blocks
            div = lxml.html.Element("div")
            for cell in table.iter("td", "th"):
                block = lxml.html.Element("div")
                block.text = cell.text
                for child in list(cell):
                    block.append(child)
                div.append(block)
            div.tail = table.tail
            parent.replace(table, div)
    if not tables:
        return html, []
    return lxml.html.tostring(doc, encoding="unicode"), tables


def ruled_pages(path: str, min_paths: int = 4) -> set[int]:
    """Page numbers with at least ``min_paths`` drawn path objects (lines, boxes): the only pages where a
    ruled table can be. pdfium counts them in milliseconds; pdfplumber would parse every page to find out."""
    import pypdfium2 as pdfium

    pages: set[int] = set()
    try:
        pdf = pdfium.PdfDocument(path)
    except Exception:  # pdfium raises its own error types for damaged files; unstructured reports those
        return pages
    try:
        for i in range(len(pdf)):
            page = pdf[i]
            n = 0
            for _ in page.get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_PATH], max_depth=2):
                n += 1
                if n >= min_paths:
                    pages.add(i + 1)
                    break
            page.close()
    finally:
        pdf.close()
    return pages


PdfTables = dict[int, list[tuple[tuple[float, float, float, float], Table]]]


def pdf_tables(path: str) -> PdfTables:
    """Ruled tables of a PDF (pdfplumber's line-based finder, no model): per page number, each table's
    bounding box (x0, top, x1, bottom in points from the top-left) and content. Only pages with enough
    drawn paths to form a table (:func:`ruled_pages`) are opened by pdfplumber."""
    candidates = ruled_pages(path)
    if not candidates:
        return {}
    import pdfplumber

    out: PdfTables = {}
    with pdfplumber.open(path, pages=sorted(candidates)) as pdf:
        for page in pdf.pages:
            found = []
            for t in page.find_tables():
                raw = [[clean_text(c or "") for c in row] for row in t.extract()]
                raw = [r for r in raw if any(r)]
                if len(raw) < 2 or max(len(r) for r in raw) < 2:
                    continue
                keep = [i for i in range(len(raw[0])) if any(i < len(r) and r[i] for r in raw)]
                raw = [[r[i] if i < len(r) else "" for i in keep] for r in raw]
                if len(keep) < 2:
                    continue
                found.append(((t.bbox[0], t.bbox[1], t.bbox[2], t.bbox[3]), Table(header=raw[0], rows=raw[1:])))
            if found:
                out[page.page_number] = found
            page.close()
    return out
