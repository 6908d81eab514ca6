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


def _insert_sentence(doc: Document, at: int, sentence: str) -> Document:
    """``doc`` with ``sentence`` inserted at char ``at`` (inside an element), spans moved as extract would."""
    from datapipe.records import Span

    piece = sentence + " "
    spans = [
        Span(
            start=s.start + (len(piece) if s.start >= at else 0),
            end=s.end + (len(piece) if s.end >= at else 0),
            page=s.page,
            category=s.category,
            heading=s.heading,
        )
        for s in doc.spans
    ]
    text = doc.text[:at] + piece + doc.text[at:]
    return doc.model_copy(update={"id": doc.id + "-edited", "text": text, "spans": spans})


def test_an_edit_changes_only_the_chunk_it_falls_in_and_every_other_chunk_keeps_its_id(docs: list[Document]) -> None:
    doc = docs[0]  # norwich-city.txt: about 100 chunks
    chunker = SemanticChunker(ChunkConfig())
    before = chunker.chunk(doc)
    sents = [s for s in split_sentences(doc) if not s.is_title]
    middle = sents[len(sents) // 2]
    sentence = "The club also runs a community scheme for schools across the county."
    edited = _insert_sentence(doc, middle.start, sentence)
    after = chunker.chunk(edited)

    old = {c.id: c for c in before}
    new = [c for c in after if c.id not in old]
    assert any(sentence in c.text for c in new)
    assert 1 <= len(new) <= 2, [c.text[:80] for c in new]
    assert len(after) - len(new) >= len(before) - 2  # every chunk but the touched ones (and one neighbour) kept
    for c in after:
        if c.id in old:  # same id: same text and heading, the span where it lies now, the new document's id
            assert (c.text, c.heading) == (old[c.id].text, old[c.id].heading)
            assert c.text == edited.text[c.char_start : c.char_end] and c.document_id == edited.id


def test_the_same_text_twice_in_a_document_gets_two_ids() -> None:
    from datapipe.records import Span

    para = "The boiler room is locked at all times. Only the caretaker holds a key to it. " * 4
    other = "Whisk the eggs with sugar until pale. Fold in the flour and bake the cake for forty minutes. " * 4
    parts = [para.strip(), other.strip(), para.strip()]
    text = "\n\n".join(parts)
    spans, pos = [], 0
    for p in parts:
        spans.append(Span(start=pos, end=pos + len(p)))
        pos += len(p) + 2
    doc = Document(id="d", source_path="d.txt", format="txt", text=text, spans=spans, bytes_sha256="0" * 64)
    chunks = SemanticChunker(ChunkConfig(min_tokens=16, max_tokens=96)).chunk(doc)
    texts = [c.text for c in chunks]
    assert len(set(texts)) < len(texts), texts  # the repeated paragraph is a chunk twice
    assert len({c.id for c in chunks}) == len(chunks)


def test_break_decisions_read_only_a_bounded_neighbourhood() -> None:
    """Scores changed at one gap move no candidate beyond ``window`` gaps, and no break beyond that plus
    ``min_tokens`` tokens: what keeps an edit from shifting boundaries far away."""
    import numpy as np

    from datapipe.chunk import local_candidates, suppress

    rng = np.random.default_rng(7)
    n, window, min_tokens = 400, 8, 48
    lengths = rng.integers(8, 40, size=n + 1).tolist()
    positions = np.cumsum(lengths)[:-1].tolist()
    scores = rng.uniform(0.0, 0.8, size=n)
    base_c = local_candidates(scores, 25, window)
    base_b = set(suppress(scores, base_c, positions, min_tokens, sum(lengths)))
    for k in (0, 57, 200, 399):
        changed = scores.copy()
        changed[k] = -0.5  # the edit: a new, very low similarity
        cand = local_candidates(changed, 25, window)
        far = [g for g in range(n) if abs(g - k) > window]
        assert (cand[far] == base_c[far]).all()
        breaks = set(suppress(changed, cand, positions, min_tokens, sum(lengths)))
        moved = range(max(0, k - window), min(n, k + window + 1))  # gaps whose candidacy may have changed
        reach = {g for g in range(n) if any(abs(positions[g] - positions[h]) < min_tokens for h in moved)}
        assert breaks - reach == base_b - reach
        assert k in breaks or positions[k] < min_tokens or sum(lengths) - positions[k] < min_tokens


def test_window_percentiles_are_each_windows_own_percentile() -> None:
    """The thresholds computed over all whole windows at once equal, bit for bit, np.percentile of each gap's
    own window (cut at the ends), for short and long score runs, ties, both float widths."""
    import numpy as np

    from datapipe.chunk import window_percentiles

    rng = np.random.default_rng(7)
    for n in [*range(12), 40, 333]:
        for window in (1, 3, 5, 10):
            for percentile in (10, 25, 33.3, 90):
                for dtype in (np.float32, np.float64):
                    scores = rng.random(n).astype(dtype)
                    if n > 3:
                        scores[n // 2] = scores[n // 2 - 1]  # a tie
                    one_by_one = [
                        np.percentile(scores[max(0, i - window) : i + window + 1], percentile) for i in range(n)
                    ]
                    assert np.array_equal(window_percentiles(scores, percentile, window), one_by_one), (n, window)
