"""Extraction on every local core: ``run_extract`` with a pool of worker processes writes the same documents,
rejects and manifest figures as one process, and the manifest counts the layout noise removed per document."""

from __future__ import annotations

import shutil
from pathlib import Path

from datapipe.config import load_config
from datapipe.pipeline import run_extract, store_for
from datapipe.records import Document
from tests.conftest import write_config
from tests.doc_kit import long_10k_html, table_pdf


def _run(tmp_path: Path, docs: Path, name: str, workers: int) -> tuple[dict[str, Document], dict[str, str], dict]:
    cfg = load_config(
        write_config(
            tmp_path / f"{name}.yaml", run_id=name, store="runs", sources=[str(docs)], extract={"workers": workers}
        )
    )
    manifest = run_extract(cfg)
    store = store_for(cfg)
    out = {Path(d.source_path).name: d for d in store.iter_records("extract", Document)}
    rejects = {Path(r.source_path or "").name: r.reason for r in store.iter_rejects("extract")}
    return out, rejects, manifest


def test_pool_and_one_process_write_the_same_records(tmp_path: Path, corpus_docs: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    table_pdf(docs / "paper.pdf", pages=4)
    (docs / "filing.html").write_text(long_10k_html(pages=12), encoding="utf-8")
    shutil.copy(corpus_docs / "handbook-1p.docx", docs / "handbook.docx")
    shutil.copy(corpus_docs / "handbook-1p.docx", docs / "handbook2.docx")  # a duplicate, listed after it
    (docs / "broken.epub").write_bytes(b"PK\x03\x04 not really a zip")
    one, one_rej, one_man = _run(tmp_path, docs, "one", 1)
    many, many_rej, many_man = _run(tmp_path, docs, "many", 2)

    assert sorted(one) == sorted(many) == ["filing.html", "handbook.docx", "paper.pdf"]
    for name in one:
        assert one[name].text == many[name].text and one[name].spans == many[name].spans, name
        assert one[name].removed == many[name].removed
    assert one_rej == many_rej
    assert one_rej["broken.epub"] == "parse_error"
    assert one_rej["handbook2.docx"].startswith("duplicate_of:")
    assert one_man["counts"] == many_man["counts"]
    assert one_man["config_hash"] == many_man["config_hash"]  # workers do not change what is extracted
    noise = many_man["noise_removed"]
    paper = next(v for k, v in noise.items() if k.endswith("paper.pdf"))
    assert paper == {"running_headers": 4, "page_numbers": 4, "margin_stamps": 3}
    filing = next(v for k, v in noise.items() if k.endswith("filing.html"))
    assert filing == {"page_numbers": 3}  # pages 10-12: unstructured itself drops one-character paragraphs
