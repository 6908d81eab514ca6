"""Test documents written the way their real producers write them: a long 10-K in the HTML that SEC filing
agents emit, PDFs with a ruled table, running headers, page numbers and an arXiv-style margin stamp
(reportlab), an EPUB and other formats through pandoc."""

from __future__ import annotations

import random
from pathlib import Path

_P = '<p style="margin-top:0pt;margin-bottom:0pt;font-size:10pt;font-family:Times New Roman">{}</p>'
_TD = '<td valign="bottom" style="width:{w}%;padding:0"{span}>{body}</td>'

BALANCE_SHEET = [  # label, 2021, 2020 (a negative value in parentheses); None: a section row
    ("ASSETS", None, None),
    ("Current assets:", None, None),
    ("Cash and cash equivalents", "16,058,714", "5,993,388"),
    ("Accounts receivable, net of allowance", "2,843,950", "1,522,128"),
    ("Prepaid expenses", "397,263", "277,106"),
    ("Total current assets", "19,299,927", "7,792,622"),
    ("Property and equipment, net", "97,453", "125,722"),
    ("Accumulated deficit", "(9,245,021)", "(12,631,002)"),
    ("Total assets", "37,447,185", "26,776,430"),
]


def _money_cells(value: str, first: bool) -> str:
    """A value as a filing agent lays it out: '$' in its own cell on the first and total rows, the value,
    a closing parenthesis in a cell of its own, then an empty spacer cell."""
    neg = value.startswith("(")
    body = value.rstrip(")") if neg else value
    cells = [
        _TD.format(w=1, span="", body=_P.format("$") if first else "&#160;"),
        _TD.format(w=9, span="", body=_P.format(f'<ix:nonFraction name="us-gaap:X" scale="0">{body}</ix:nonFraction>')),
        _TD.format(w=1, span="", body=_P.format(")") if neg else "&#160;"),
        _TD.format(w=2, span="", body="&#160;"),
    ]
    return "".join(cells)


def balance_sheet_html() -> str:
    """The balance sheet table: years spanning three cells each, spacer columns, nested in a layout table."""
    head = (
        "<tr>"
        + _TD.format(w=60, span="", body="&#160;")
        + _TD.format(w=2, span="", body="&#160;")
        + _TD.format(w=24, span=' colspan="7"', body=_P.format("<b>December 31,</b>"))
        + "</tr><tr>"
        + _TD.format(w=60, span="", body="&#160;")
        + _TD.format(w=2, span="", body="&#160;")
        + _TD.format(w=11, span=' colspan="3"', body=_P.format("<b>2021</b>"))
        + _TD.format(w=2, span="", body="&#160;")
        + _TD.format(w=11, span=' colspan="3"', body=_P.format("<b>2020</b>"))
        + "</tr>"
    )
    rows = []
    for label, a, b in BALANCE_SHEET:
        cells = _TD.format(w=60, span="", body=_P.format(label)) + _TD.format(w=2, span="", body="&#160;")
        if a is None:
            cells += _TD.format(w=38, span=' colspan="8"', body="&#160;")
        else:
            first = label.startswith(("Cash", "Total"))
            cells += _money_cells(a, first) + _money_cells(b, first)
        rows.append(f"<tr>{cells}</tr>")
    inner = f'<table border="0" cellspacing="0" cellpadding="0" style="width:100%">{head}{"".join(rows)}</table>'
    return f'<table style="width:100%"><tr><td>{inner}</td></tr></table>'


def long_10k_html(pages: int = 60, seed: int = 7) -> str:
    """A 10-K-like filing: a cover page with checkbox layout tables, many pages of prose, each ending with
    a page number and a page break, and the consolidated balance sheet deep inside."""
    rng = random.Random(seed)
    words = (
        "the company revenue gaming table games licensing customers casinos market risk operations fiscal "
        "results management compensation agreements intellectual property regulatory approvals jurisdictions"
    ).split()
    out = [
        "<html><head><title>gmgi-10k_20211231.htm</title></head><body>",
        _P.format("<b>UNITED STATES SECURITIES AND EXCHANGE COMMISSION</b>"),
        _P.format("<b>FORM 10-K</b>"),
        '<table><tr><td style="width:4%">&#9746;</td><td>'
        + _P.format("ANNUAL REPORT PURSUANT TO SECTION 13 OR 15(d) OF THE SECURITIES EXCHANGE ACT OF 1934")
        + "</td></tr></table>",
        _P.format("Galaxy Gaming, Inc."),
    ]
    where = pages * 2 // 3
    for page in range(1, pages + 1):
        for _ in range(4):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(12, 24)))
            out.append(_P.format(sentence.capitalize() + "."))
        if page == where:
            out.append(_P.format("<b>GALAXY GAMING, INC.</b>"))
            out.append(_P.format("<b>CONSOLIDATED BALANCE SHEETS</b>"))
            out.append(balance_sheet_html())
        out.append(f'<p style="text-align:center">{page}</p><hr style="page-break-after:always"/>')
    out.append("</body></html>")
    return "\n".join(out)


def table_pdf(path: Path, pages: int = 4, stamp: bool = True) -> Path:
    """A paper-like PDF: a running header and a page number on every page, body text, an arXiv-style
    vertical stamp in the left margin of page 1, and a ruled price table on page 2."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.platypus import PageBreak, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()

    def decorate(canvas: object, doc: object) -> None:
        c = canvas
        c.saveState()  # type: ignore[attr-defined]
        c.setFont("Helvetica", 9)  # type: ignore[attr-defined]
        c.drawString(72, A4[1] - 40, "Journal of Synthetic Tabular Studies, Vol. 12")  # type: ignore[attr-defined]
        c.drawCentredString(A4[0] / 2, 30, str(c.getPageNumber()))  # type: ignore[attr-defined]
        if stamp and c.getPageNumber() == 1:  # type: ignore[attr-defined]
            c.setFont("Times-Roman", 20)  # type: ignore[attr-defined]
            c.translate(30, 250)  # type: ignore[attr-defined]
            c.rotate(90)  # type: ignore[attr-defined]
            c.drawString(0, 0, "arXiv:2009.30202v1 [cs.CL] 30 Sep 2020")  # type: ignore[attr-defined]
        c.restoreState()  # type: ignore[attr-defined]

    story: list[object] = [Paragraph("Measuring Widget Prices Across Regions", styles["Title"])]
    body = (
        "We study the prices of widgets sold in several regions over two years. The measurements were "
        "collected by field teams and cleaned by hand. Prices are in euros and include all taxes. "
    )
    for page in range(pages):
        for _ in range(3):
            story.append(Paragraph(body * 3, styles["BodyText"]))
            story.append(Spacer(1, 8))
        if page == 1:
            story.append(Paragraph("Table 1: Widget prices by region", styles["BodyText"]))
            data = [
                ["Region", "Widget", "Price 2022", "Price 2023"],
                ["North", "Sprocket", "12.50", "13.10"],
                ["South", "Gear", "8.75", "9.20"],
                ["East", "Flange", "21.00", "19.95"],
                ["West", "Bearing", "4.30", "4.45"],
            ]
            t = Table(data)
            t.setStyle(TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.black)]))
            story.append(t)
        if page < pages - 1:
            story.append(PageBreak())
    SimpleDocTemplate(str(path), pagesize=A4).build(story, onFirstPage=decorate, onLaterPages=decorate)
    return path
