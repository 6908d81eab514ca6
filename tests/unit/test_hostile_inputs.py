"""A document folder full of hostile files: each is rejected with a clear reason, unread where reading it would
cost unbounded memory, and the good documents beside them come through unaffected."""

from __future__ import annotations

import os
import resource
import shutil
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from datapipe.config import ExtractConfig, load_config
from datapipe.extract import SourceFile, extract_file, resolve_sources
from datapipe.pipeline import run_chunk, run_extract, store_for
from datapipe.records import Chunk, Document
from tests.conftest import write_config

BIG_MB = 200
LATIN1_NAME = os.fsencode("latin1-") + b"\xe9.txt"  # not UTF-8: a name from an old Windows share
ODD_NAME = "odd \u202e\u200dname \U0001f986 e\u0301.txt"  # right-to-left override, zero-width joiner, emoji, NFD
PROSE = "Ducks spend the winter on the pond behind the library, and the gardeners feed them oats. " * 3

EXPECTED = {
    "zero-bytes.pdf": "empty_file",
    "really-html.pdf": "format_mismatch",
    "old-word.docx": "format_mismatch",
    "big.txt": "too_large",
    "deeply-nested.html": "too_deeply_nested",
    "zip-bomb.docx": "zip_bomb",
    "loop-a.txt": "unreadable",
    "loop-b.txt": "unreadable",
    "loop-folder": "symlinked_folder",
    "fifo.txt": "unreadable",
    "password.pdf": "encrypted",
    "empty.txt": "empty_file",
    "fake-text-all-whitespace.txt": "no_text",
    "fake-power-point-malformed.pptx": "too_little_text",
}
GOOD = {"ideas-page.html", "handbook-1p.docx", ODD_NAME, "latin1-\\xe9.txt", "fake-html-cp1252.html"}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, bad_inputs: Path, corpus_docs: Path) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "docs"
    d.mkdir()
    for p in bad_inputs.iterdir():
        shutil.copy(p, d / p.name)
    for name in ("ideas-page.html", "handbook-1p.docx"):
        shutil.copy(corpus_docs / name, d / name)
    (d / "zero-bytes.pdf").write_bytes(b"")
    (d / "really-html.pdf").write_text(f"<!doctype html><html><body><p>Please sign in. {PROSE}</p></body></html>")
    (d / "old-word.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 4096)
    with open(d / "big.txt", "w", encoding="utf-8") as fh:
        block = PROSE * 4000
        for _ in range(BIG_MB * 1024 * 1024 // len(block) + 1):
            fh.write(block)
    depth = 5000
    (d / "deeply-nested.html").write_text(
        f"<html><body><p>{PROSE}</p>{'<div>' * depth}<p>{PROSE}</p>{'</div>' * depth}</body></html>"
    )
    with zipfile.ZipFile(d / "zip-bomb.docx", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            zeros = b"\0" * (1 << 20)
            for _ in range(BIG_MB):
                member.write(zeros)
    (d / ODD_NAME).write_text(PROSE, encoding="utf-8")
    with open(os.path.join(os.fsencode(d), LATIN1_NAME), "wb") as fh:
        fh.write(PROSE.replace("Ducks", "Geese").encode())
    os.symlink("loop-b.txt", d / "loop-a.txt")
    os.symlink("loop-a.txt", d / "loop-b.txt")
    os.symlink(".", d / "loop-folder")
    os.mkfifo(d / "fifo.txt")  # reading it would block for ever
    return d


@pytest.fixture(scope="module")
def warm(hostile: Path) -> None:
    """Import the parsers and load spaCy first, so the memory measured is what the files themselves cost."""
    for name in ("ideas-page.html", "handbook-1p.docx", ODD_NAME):
        assert isinstance(extract_file(SourceFile(hostile / name), ExtractConfig()), Document)


def _name(source_path: str) -> str:
    return source_path.rsplit("/", 1)[-1]


def test_hostile_folder_is_rejected_file_by_file_and_the_rest_goes_on(
    hostile: Path, warm: None, tmp_path: Path
) -> None:
    cfg = load_config(
        write_config(
            tmp_path / "p.yaml",
            run_id="hostile",
            store="runs",
            sources=[str(hostile)],
            extract={"workers": 1},  # in this process, where tracemalloc sees what extraction allocates
        )
    )
    tracemalloc.start()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        run_extract(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"extract over the hostile folder: peak Python allocations {peak / 1e6:.1f} MB, "
        f"process peak RSS grew {(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024:.0f} MB"
    )
    assert peak < 100e6, f"{peak / 1e6:.0f} MB allocated: a {BIG_MB} MB file was read whole?"
    store = store_for(cfg)
    docs = {_name(d.source_path): d for d in store.iter_records("extract", Document)}
    rejects = {_name(r.source_path or ""): r for r in store.iter_rejects("extract")}
    for name, reason in EXPECTED.items():
        assert name in rejects, f"{name}: no reject (documents: {sorted(docs)})"
        r = rejects[name]
        assert r.reason == reason, (name, r.reason, r.detail)
        assert r.detail and len(r.detail) > 20, (name, r.detail)
    assert "loop" in rejects["loop-a.txt"].detail and "regular file" in rejects["fifo.txt"].detail
    assert "HTML" in rejects["really-html.pdf"].detail and "ratio" in rejects["zip-bomb.docx"].detail
    assert "extract.max_text_mb" in rejects["big.txt"].detail
    assert GOOD <= set(docs), sorted(docs)
    assert "Geese" in docs["latin1-\\xe9.txt"].text and "Ducks" in docs[ODD_NAME].text
    on_disk = {os.fsdecode(n) for n in os.listdir(os.fsencode(hostile))}
    accounted = set(docs) | set(rejects)
    assert len(accounted) == len(on_disk) and not set(docs) & set(rejects)

    run_chunk(cfg)
    chunked = {_name(c.source_path) for c in store.iter_records("chunk", Chunk)}
    assert chunked == set(docs)


@pytest.mark.parametrize("name", ["big.txt", "zip-bomb.docx", "deeply-nested.html", "really-html.pdf"])
def test_hostile_file_is_judged_in_bounded_memory(hostile: Path, warm: None, name: str) -> None:
    tracemalloc.start()
    try:
        out = extract_file(SourceFile(hostile / name), ExtractConfig())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.__class__.__name__ == "Reject"
    assert peak < 16e6, f"{name}: {peak / 1e6:.1f} MB allocated to reject it"


def test_limits_are_configurable(hostile: Path) -> None:
    out = extract_file(SourceFile(hostile / "zip-bomb.docx"), ExtractConfig(max_zip_ratio=5000, max_unpacked_mb=100))
    assert out.__class__.__name__ == "Reject" and out.reason == "too_large"  # type: ignore[union-attr]
    assert "extract.max_unpacked_mb" in out.detail  # type: ignore[union-attr]


def test_globs_do_not_descend_into_folder_links(tmp_path: Path) -> None:
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text(PROSE)
    (tmp_path / "docs" / "sub" / "b.txt").write_text(PROSE)
    os.symlink(".", tmp_path / "docs" / "loop")  # glob.glob("**") follows it 40 levels deep (to ELOOP)
    files, rejects = resolve_sources(["docs/**/*.txt"], tmp_path, ExtractConfig().extensions)
    assert sorted(f.path.relative_to(tmp_path).as_posix() for f in files) == ["docs/a.txt", "docs/sub/b.txt"]
    files, rejects = resolve_sources(["docs"], tmp_path, ExtractConfig().extensions)
    assert len(files) == 2
    assert [(Path(r.source_path or "").name, r.reason) for r in rejects] == [("loop", "symlinked_folder")]
