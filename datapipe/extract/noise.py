"""Layout noise out of extracted elements: running headers and footers repeated across pages, bare page
numbers, vertical margin stamps (arXiv's ``0 2 0 2 p e S 0 3 ] L C . s c [``) and words hyphenated at a
line end. Each removal is counted, so a document's manifest says what was taken out.

unstructured's ``fast`` PDF strategy labels no element Header or Footer (only the layout models do,
and they cannot be downloaded here), so repetition across pages is what gives a running header away.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

PAGE_NUMBER = re.compile(
    r"^(?:(?:page|p\.|seite|página|pagina)\s*)?[-–—(\[]?\s*(?:[a-z]-)?(?:\d{1,4}|[ivxlc]{1,7})\s*[-–—)\]]?"
    r"(?:\s*(?:of|/|von|de)\s*\d{1,4})?$",
    re.IGNORECASE,
)
_STAMP_RUN = re.compile(r"(?:(?<=\s)|^)(?:[\w\[\]().:/-] ){7,}[\w\[\]().:/-](?=\s|$)")
_HYPHEN_BREAK = re.compile(r"(?<=[a-zß-ÿ]{2})-\s*\n\s*(?=[a-zß-ÿ]{2})")
_HYPHEN_SPACE = re.compile(r"\b([A-Za-zß-ÿ][a-zß-ÿ]+)- (?!(?:and|or|to|und|oder|et|ou|y|o)\b)([a-zß-ÿ]{2,})")
_DIGITS = re.compile(r"\d+")
_SECTION_PAGE = re.compile(r"^[A-Z]-\d{1,3}$")  # a filing's financial-statement pages: F-1, F-2, ...
REPEAT_MIN_PAGES = 3
EDGE = 3  # elements from the top and bottom of a page where running headers and footers sit


@dataclass
class NoiseCounts:
    running_headers: int = 0
    page_numbers: int = 0
    margin_stamps: int = 0
    hyphenations: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _text(el: Any) -> str:
    return (getattr(el, "text", "") or "").strip()


def _page(el: Any) -> int | None:
    return getattr(getattr(el, "metadata", None), "page_number", None)


def _key(text: str) -> str:
    return _DIGITS.sub("#", " ".join(text.lower().split()))


def is_margin_stamp(text: str, el: Any = None) -> bool:
    """A line set vertically and read one glyph at a time: mostly single characters between spaces (eight
    or more of them, or three or more in a box at least 1.5 times as tall as it is wide)."""
    tokens = text.split()
    if len(tokens) < 3 or sum(len(t) == 1 for t in tokens) < 0.8 * len(tokens):
        return False
    return len(tokens) >= 8 or _tall(el)


def _box(el: Any) -> tuple[float, float, float, float] | None:
    points = getattr(getattr(getattr(el, "metadata", None), "coordinates", None), "points", None)
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _tall(el: Any) -> bool:
    box = _box(el)
    return box is not None and (box[3] - box[1]) >= 1.5 * max(1e-6, box[2] - box[0])


def _same_column(el: Any, stamps: list[tuple[float, float, float, float]]) -> bool:
    """A short fragment ("n u J", "1 2", "]") in the same narrow margin column as a stamp on its page."""
    box = _box(el)
    text = _text(el)
    if box is None or len(text) > 30 or not all(len(t) <= 2 for t in text.split()):
        return False
    return any(abs(box[0] - s[0]) <= 2 and abs(box[2] - s[2]) <= 2 for s in stamps)


def join_hyphenation(text: str) -> tuple[str, int]:
    """``exam-\\nple`` and ``exam- ple`` (a line break that became a space) -> ``example``."""
    text, n1 = _HYPHEN_BREAK.subn("", text)
    text, n2 = _HYPHEN_SPACE.subn(r"\1\2", text)
    return text, n1 + n2


def clean_elements(
    elements: list[Any], laid_out: bool, table_category: str = "Table"
) -> tuple[list[tuple[Any, str]], NoiseCounts]:
    """The elements to keep, each with its cleaned text, and what was removed. Tables pass untouched.

    ``laid_out``: the text comes from laid-out pages (PDF), where glyph runs inside an element may be a
    margin stamp and a hyphen before a line break splits a word; elsewhere only whole elements go.
    """
    counts = NoiseCounts()
    drop: dict[int, str] = {}  # element index -> the count it goes to
    on_page: dict[int, list[int]] = defaultdict(list)
    for i, el in enumerate(elements):
        if (p := _page(el)) is not None and _text(el):
            on_page[p].append(i)
    # a bare number is a page number at a page's top or bottom, not in the middle (an unruled table's cell)
    edges = {i for idx in on_page.values() for i in idx[:EDGE] + idx[-EDGE:]}
    for i, el in enumerate(elements):
        text = _text(el)
        if not text or getattr(el, "category", "") == table_category:
            continue
        paged = _page(el) is not None
        if PAGE_NUMBER.match(text) and (
            (paged and i in edges) or (not paged and (len(text) <= 3 or _SECTION_PAGE.match(text)))
        ):
            drop[i] = "page_numbers"
        elif is_margin_stamp(text, el):
            drop[i] = "margin_stamps"
    stamps: dict[int | None, list[tuple[float, float, float, float]]] = defaultdict(list)
    for i, kind in drop.items():
        if kind == "margin_stamps" and (box := _box(elements[i])) is not None:
            stamps[_page(elements[i])].append(box)
    for i, el in enumerate(elements):
        if i not in drop and _page(el) in stamps and _same_column(el, stamps[_page(el)]):
            drop[i] = "margin_stamps"
    pages: dict[int, list[int]] = defaultdict(list)
    for i, el in enumerate(elements):
        if (p := _page(el)) is not None and _text(el) and i not in drop:
            pages[p].append(i)
    if len(pages) >= REPEAT_MIN_PAGES:
        seen: dict[str, set[int | None]] = defaultdict(set)
        for idx in pages.values():
            for i in idx[:EDGE] + idx[-EDGE:]:
                text = _text(elements[i])
                if len(text) <= 200 and getattr(elements[i], "category", "") != table_category:
                    seen[_key(text)].add(_page(elements[i]))
        need = max(REPEAT_MIN_PAGES, len(pages) // 2)
        running = {k for k, on_pages in seen.items() if len(on_pages) >= need}
        first_title = True
        for i, el in enumerate(elements):
            if i in drop or not _text(el) or _key(_text(el)) not in running:
                continue
            if first_title and getattr(el, "category", "") == "Title":  # may be the document's real title
                first_title = False
                continue
            drop[i] = "running_headers"
    out: list[tuple[Any, str]] = []
    for i, el in enumerate(elements):
        text = _text(el)
        if not text:
            continue
        if i in drop:
            setattr(counts, drop[i], getattr(counts, drop[i]) + 1)
            continue
        if getattr(el, "category", "") == table_category or not laid_out:
            out.append((el, text))
            continue
        text, n = _STAMP_RUN.subn("", text)
        if n:
            counts.margin_stamps += n
            text = " ".join(text.split())
            if not text:
                continue
        text, n = join_hyphenation(text)
        counts.hyphenations += n
        out.append((el, text))
    return out, counts
