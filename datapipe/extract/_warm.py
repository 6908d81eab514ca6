"""Imported by the extraction pool's fork server, so every worker forks with the parsers already loaded.

unstructured imports most of a format's parser (and, for PDFs, unstructured-inference) on a file's first
partition, and loads its spaCy model on first use: seconds per process. Extracting three tiny files
here, once, means a worker forked from this server starts warm however many pools a process opens.
Failures are left for the first real file to report, with its message and install line.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path


def tiny_pdf() -> bytes:
    """A valid one-page PDF with one line of text (objects and cross-reference table written by hand)."""
    stream = b"BT /F1 12 Tf 72 720 Td (Warm up the PDF parser with one short line.) Tj ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def warm() -> None:
    from datapipe.config import ExtractConfig
    from datapipe.extract import SourceFile, extract_file

    text = "Warm up the parsers. This sentence is long enough to pass the minimum length check easily."
    with tempfile.TemporaryDirectory(prefix="datapipe-warm-") as tmp:
        files = {
            "warm.pdf": tiny_pdf(),
            "warm.html": f"<html><body><p>{text}</p><table><tr><th>a</th><th>b</th></tr>"
            "<tr><td>1</td><td>2</td></tr></table></body></html>".encode(),
            "warm.txt": text.encode(),
        }
        for name, data in files.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            with contextlib.suppress(Exception):
                extract_file(SourceFile(path), ExtractConfig(min_chars=1))


with contextlib.suppress(Exception):
    warm()
