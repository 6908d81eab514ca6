"""Semantic chunking with the packaged all-MiniLM-L6-v2 model on real documents."""

from __future__ import annotations

from pathlib import Path

import pytest

from datapipe.chunk import SemanticChunker, count_tokens, split_sentences
from datapipe.config import ChunkConfig, ExtractConfig
from datapipe.extract import SourceFile, extract_file
from datapipe.records import Document


@pytest.fixture(scope="module")
def docs(corpus_docs: Path) -> list[Document]:
    out = []
    for name in ["norwich-city.txt", "layout-parser-paper-fast.pdf", "handbook-1p.docx", "example-10k-1p.html"]:
        d = extract_file(SourceFile(corpus_docs / name), ExtractConfig())
        assert isinstance(d, Document)
        out.append(d)
    return out


def _is_table_head(prefix: str) -> bool:
    lines = prefix.rstrip("\n").splitlines()
    return bool(lines) and lines[-1].startswith("| ---") and lines[-2].startswith("|")


@pytest.mark.parametrize("bounds", [(32, 128), (64, 256)], ids=["small", "default-ish"])
def test_chunks_respect_token_bounds_and_spans(docs: list[Document], bounds: tuple[int, int]) -> None:
    cfg = ChunkConfig(min_tokens=bounds[0], max_tokens=bounds[1])
    chunker = SemanticChunker(cfg)
    for doc in docs:
        chunks = chunker.chunk(doc)
        assert chunks, doc.source_path
        for c in chunks:
            body = doc.text[c.char_start : c.char_end]
            # the exact span, or a later part of a long table: its caption and header rows, then its rows
            assert c.text == body or (c.text.endswith(body) and _is_table_head(c.text[: -len(body)])), c.text[:300]
            assert c.n_tokens <= cfg.max_tokens
            # a chunk below min_tokens only where the document (or its tail) is that short
            exact = count_tokens(chunker.tokenizer, [c.text])[0]
            assert exact <= cfg.max_tokens * 1.1
            assert c.document_id == doc.id
        starts = [c.char_start for c in chunks]
        assert starts == sorted(starts)
        assert len({c.id for c in chunks}) == len(chunks)
        small = [c for c in chunks[:-1] if c.n_tokens < cfg.min_tokens]
        # only a section title breakpoint may close a chunk before min_tokens
        assert len(small) <= sum(1 for s in doc.spans if s.category == "Title")


def test_chunks_keep_pages_and_headings(docs: list[Document]) -> None:
    chunker = SemanticChunker(ChunkConfig(min_tokens=32, max_tokens=128))
    pdf = next(d for d in docs if d.format == "pdf")
    chunks = chunker.chunk(pdf)
    assert {p for c in chunks for p in c.pages} == {1, 2}
    assert any(s.category == "Title" for s in pdf.spans)
    assert any(c.heading for c in chunks)


def test_semantic_breakpoints_split_unrelated_topics() -> None:
    football = "Norwich City won the match at Carrow Road. The striker scored twice in the second half. " * 3
    cooking = "Whisk the eggs with sugar until pale. Fold in the flour and bake the cake for forty minutes. " * 3
    text = football.strip() + " " + cooking.strip()
    from datapipe.records import Span

    doc = Document(
        id="t",
        source_path="t.txt",
        format="txt",
        text=text,
        spans=[Span(start=0, end=len(text))],
        bytes_sha256="0" * 64,
    )
    chunks = SemanticChunker(ChunkConfig(min_tokens=8, max_tokens=512, breakpoint_percentile=10)).chunk(doc)
    assert len(chunks) >= 2
    boundary = len(football.strip())
    assert any(abs(c.char_start - boundary) <= 1 for c in chunks[1:])


def test_ids_are_deterministic_and_config_sensitive(docs: list[Document]) -> None:
    a = [c.id for c in SemanticChunker(ChunkConfig()).chunk(docs[0])]
    b = [c.id for c in SemanticChunker(ChunkConfig()).chunk(docs[0])]
    c = [c.id for c in SemanticChunker(ChunkConfig(max_tokens=300)).chunk(docs[0])]
    assert a == b
    assert set(a).isdisjoint(c)


def test_sentence_split_offsets_match_text(docs: list[Document]) -> None:
    for doc in docs:
        for s in split_sentences(doc):
            piece = doc.text[s.start : s.end]
            assert piece == piece.strip() and piece


def test_token_count_is_not_truncated(docs: list[Document]) -> None:
    chunker = SemanticChunker(ChunkConfig())
    assert count_tokens(chunker.tokenizer, [docs[0].text])[0] > 1000
