"""The fast embedders (chunk.backend onnx-int8 and openvino) and the approximate semantic dedup, on the real
packaged all-MiniLM-L6-v2 and real text from the shared corpus."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from datapipe.chunk import SemanticChunker, default_model_path, fragile_gaps, load_embedder
from datapipe.chunk.quantised import FP32_FILE, ONNX_FILE, QuantisedEmbedder, export_dir
from datapipe.config import ChunkConfig, ExtractConfig, SemanticDedupConfig
from datapipe.extract import SourceFile, extract_file
from datapipe.filter.dedup import ann_pairs, exact_semantic_duplicates, semantic_duplicates_of
from datapipe.records import Document, content_id


def _sentences(corpus_docs: Path, n: int) -> list[str]:
    text = re.sub(r"\s+", " ", (corpus_docs / "norwich-city.txt").read_text(encoding="utf-8"))
    out = [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text) if 40 <= len(s) <= 300]
    return out[:n]


@pytest.fixture(scope="module")
def quantised(tmp_path_factory: pytest.TempPathFactory) -> QuantisedEmbedder:
    """Exported into a fresh cache folder (DATAPIPE_CACHE), so the export itself is exercised."""
    cache = tmp_path_factory.mktemp("datapipe-cache")
    old = os.environ.get("DATAPIPE_CACHE")
    os.environ["DATAPIPE_CACHE"] = str(cache)
    try:
        yield QuantisedEmbedder(default_model_path())
    finally:
        if old is None:
            os.environ.pop("DATAPIPE_CACHE", None)
        else:
            os.environ["DATAPIPE_CACHE"] = old


def test_export_is_cached_under_the_model_hash_and_reused(quantised: QuantisedEmbedder) -> None:
    folder = export_dir(default_model_path())
    assert Path(quantised.path) == folder
    assert folder.name.startswith("model-") and folder.name.endswith("-onnx-int8")
    onnx = folder / ONNX_FILE
    # int8 MatMul weights, fp32 word embeddings: ~59 MB against ~90 MB for the fp32 export
    assert onnx.is_file() and onnx.stat().st_size < 64 * 2**20
    assert (folder / FP32_FILE).is_file()  # kept for the chunker's exact rescoring
    before = onnx.stat().st_mtime_ns
    again = QuantisedEmbedder(default_model_path())  # a second load finds the export and does not redo it
    assert onnx.stat().st_mtime_ns == before
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left behind
    assert again.encode(["one sentence"]).shape == (1, 384)


def test_quantised_embeddings_are_close_to_pytorch(quantised: QuantisedEmbedder, corpus_docs: Path) -> None:
    texts = _sentences(corpus_docs, 120)
    a = load_embedder(None).encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    b = quantised.encode(texts, batch_size=32, normalize_embeddings=True)
    cos = np.sum(a * b, axis=1)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert cos.mean() >= 0.985 and cos.min() >= 0.95
    # rows come back in input order (encode sorts by length inside); dynamic quantisation scales activations per
    # batch, so another batching moves a row slightly, never to another sentence
    other = quantised.encode(texts[:7], batch_size=3, normalize_embeddings=True)
    assert np.sum(other * b[:7], axis=1).min() >= 0.98


def test_backend_is_part_of_chunk_ids_but_torch_ids_are_unchanged(
    quantised: QuantisedEmbedder, corpus_docs: Path
) -> None:
    doc = extract_file(SourceFile(corpus_docs / "norwich-city.txt"), ExtractConfig())
    assert isinstance(doc, Document)
    torch_chunker = SemanticChunker(ChunkConfig(min_tokens=16, max_tokens=96))
    # the torch backend hashes the config as it did before the backend field existed
    legacy = ChunkConfig(min_tokens=16, max_tokens=96).model_dump(mode="json")
    legacy.pop("backend")
    legacy.pop("exact_margin")
    assert torch_chunker.config_hash == content_id(legacy, torch_chunker.model_name, length=16)
    q = SemanticChunker(ChunkConfig(min_tokens=16, max_tokens=96, backend="onnx-int8"))  # the fixture's cache
    assert q.model.path == quantised.path
    mine, theirs = q.chunk(doc), torch_chunker.chunk(doc)
    assert mine and theirs
    assert mine[-1].char_end == theirs[-1].char_end
    assert not {c.id for c in mine} & {c.id for c in theirs}  # another backend, other ids: no stale reuse


def test_close_decisions_are_rescored_exactly_so_chunks_match_torch(
    quantised: QuantisedEmbedder, corpus_docs: Path
) -> None:
    """The document whose chunks int8 similarities alone moved (bench_chunk before the exact rescoring): its
    close decisions are taken again on float32 embeddings, and its chunks are the torch backend's."""
    texts = _sentences(corpus_docs, 40)
    exact = quantised.encode_exact(texts)
    ref = load_embedder(None).encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    assert np.sum(exact * ref, axis=1).min() >= 0.9999
    doc = extract_file(SourceFile(corpus_docs / "norwich-city.txt"), ExtractConfig())
    assert isinstance(doc, Document)
    torch_spans = [(c.char_start, c.char_end) for c in SemanticChunker(ChunkConfig()).chunk(doc)]
    q = SemanticChunker(ChunkConfig(backend="onnx-int8"))
    assert [(c.char_start, c.char_end) for c in q.chunk(doc)] == torch_spans
    assert 0 < q.gaps_refined < q.gaps_scored / 3  # a few gaps rescored, not the document
    off = SemanticChunker(ChunkConfig(backend="onnx-int8", exact_margin=0))
    off.chunk(doc)
    assert off.gaps_refined == 0


def test_openvino_embeddings_and_chunks_match_pytorch(quantised: QuantisedEmbedder, corpus_docs: Path) -> None:
    """OpenVINO runs the same float32 export (bfloat16 on a CPU with AMX/AVX512-BF16, as this machine's): its
    embeddings are the PyTorch model's to a cosine of 0.999, the chunks of the document int8 moved are the torch
    backend's after rescoring fewer gaps than int8 needs, and two threads may encode at once."""
    ov = load_embedder(None, "openvino")
    assert ov.path == quantised.path  # the export the fixture made, not a second one
    texts = _sentences(corpus_docs, 120)
    ref = load_embedder(None).encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    got = ov.encode(texts, batch_size=32, normalize_embeddings=True)
    cos = np.sum(got * ref, axis=1)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert cos.min() >= 0.999, (ov.precision, cos.min())
    with ThreadPoolExecutor(2) as pool:  # an infer request per thread: concurrent calls do not mix their inputs
        halves = list(pool.map(lambda part: ov.encode(part, batch_size=32, normalize_embeddings=True), [texts] * 4))
    assert all(np.allclose(h, got, atol=1e-5) for h in halves)

    assert ChunkConfig(backend="openvino").exact_margin == 0.006  # its own default, below int8's 0.03
    assert ChunkConfig(backend="openvino", exact_margin=0.01).exact_margin == 0.01
    doc = extract_file(SourceFile(corpus_docs / "norwich-city.txt"), ExtractConfig())
    assert isinstance(doc, Document)
    torch_spans = [(c.char_start, c.char_end) for c in SemanticChunker(ChunkConfig()).chunk(doc)]
    fast = SemanticChunker(ChunkConfig(backend="openvino"))
    assert [(c.char_start, c.char_end) for c in fast.chunk(doc)] == torch_spans
    q = SemanticChunker(ChunkConfig(backend="onnx-int8"))
    q.chunk(doc)
    assert fast.gaps_refined < q.gaps_refined
    assert fast.config_hash not in {q.config_hash, SemanticChunker(ChunkConfig()).config_hash}


def test_fragile_gaps_are_the_close_decisions_that_can_change_a_break() -> None:
    positions = [10 * (g + 1) for g in range(8)]  # tokens before each gap
    scores = np.array([0.5, 0.5, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5])
    thresholds = np.full(8, 0.3)
    # gap 5 sits at its threshold and no stronger candidate is near it: its decision can make a break
    scores[5] = 0.301
    candidate = scores <= thresholds
    fragile = fragile_gaps(scores, thresholds, scores.copy(), candidate, positions, 15, 100, 2, 0.03)
    assert 5 in fragile and 2 not in fragile
    # the same gap next to a far stronger candidate (within min_tokens) cannot be kept nor suppress one
    scores2 = scores.copy()
    scores2[4] = 0.0
    candidate2 = scores2 <= thresholds
    assert 5 not in fragile_gaps(scores2, thresholds, scores2.copy(), candidate2, positions, 15, 100, 2, 0.03)
    # two near-tied candidates, neither beaten by a third: both are rescored
    scores3 = np.array([0.5, 0.5, 0.1, 0.11, 0.5, 0.5, 0.5, 0.5])
    fragile3 = fragile_gaps(scores3, thresholds, scores3.copy(), scores3 <= thresholds, positions, 15, 100, 2, 0.03)
    assert {2, 3} <= fragile3


def _paraphrased(corpus_docs: Path) -> tuple[np.ndarray, set[int]]:
    """Real sentences, and one-word edits of every fifth one appended later (planted near-duplicates)."""
    base = _sentences(corpus_docs, 400)
    edits = []
    for s in base[::5]:
        words = s.split()
        words[len(words) // 2] = "indeed"
        edits.append(" ".join(words))
    emb = load_embedder(None).encode(base + edits, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float32), set(range(len(base), len(base) + len(edits)))


def test_index_dedup_equals_brute_force(corpus_docs: Path) -> None:
    emb, planted = _paraphrased(corpus_docs)
    cfg = SemanticDedupConfig(ann_min_samples=0, nprobe=2)  # few cells probed: a real approximation
    exact = exact_semantic_duplicates(emb, cfg.threshold)
    approx = semantic_duplicates_of(emb, cfg)
    assert len(planted & set(exact)) >= 0.95 * len(planted)  # the brute force finds the planted edits ...
    same = [i for i in exact if approx.get(i, (None,))[0] == exact[i][0]]
    assert len(same) >= 0.99 * len(exact)  # ... and the index the same duplicates, with the same representatives
    assert set(approx) <= set(exact)  # nothing the brute force would keep
    # brute force pairs over the threshold found by the index
    sims = emb @ emb.T
    truth = {(int(i), int(j)) for i, j in zip(*np.nonzero(np.tril(sims >= cfg.threshold, -1)), strict=True)}
    found = {(i, j) for i, j, _ in ann_pairs(emb, cfg.threshold, cfg.nprobe)}
    assert found <= truth and len(found) >= 0.99 * len(truth)


def test_below_ann_min_samples_the_exact_path_runs(corpus_docs: Path) -> None:
    emb, _ = _paraphrased(corpus_docs)
    assert semantic_duplicates_of(emb, SemanticDedupConfig()) == exact_semantic_duplicates(emb, 0.8)


def test_chunk_stage_key_is_unchanged_for_the_torch_backend() -> None:
    """The chunk stage's shard key (section_hash) of the default backend is what it was before the field
    existed, so existing run folders reuse their chunk shards; onnx-int8 gets a key of its own."""
    import hashlib
    import json

    from datapipe.config import PipelineConfig

    torch_cfg = PipelineConfig(sources=["docs"])
    dump = torch_cfg.model_dump(mode="json")["chunk"]
    dump.pop("backend")
    dump.pop("exact_margin")
    before = hashlib.sha256(json.dumps({"chunk": dump}, sort_keys=True).encode()).hexdigest()[:16]
    assert torch_cfg.section_hash("chunk") == before
    assert before == "81062a3153ba39ea"  # the key before the backend field existed (git archive 71495e3)
    assert PipelineConfig(sources=["docs"], chunk=ChunkConfig(backend="onnx-int8")).section_hash("chunk") != before
    # onnx-int8's key is what it was before openvino (and per-backend margins) existed
    int8 = PipelineConfig(sources=["docs"], chunk={"backend": "onnx-int8"})
    assert int8.chunk.exact_margin == 0.03 and int8.section_hash("chunk") == "6e6067e1eb9ec594"
