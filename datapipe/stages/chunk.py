"""The chunk stage: each extract shard into a chunk shard."""

from __future__ import annotations

from typing import Any

from datapipe.config import PipelineConfig
from datapipe.records import Chunk, Document, content_id
from datapipe.stages.runner import NullProgress, Part, Progress, ShardJob, ShardLoop
from datapipe.store import StageRecorder, store_for


def run_chunk(
    cfg: PipelineConfig,
    progress: Progress | None = None,
    *,
    part: Part = None,
    done_elsewhere: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Chunk each extract shard into a chunk shard (``part``/``done_elsewhere``: see :func:`run_extract`)."""
    from datapipe.chunk import SemanticChunker

    progress = progress or NullProgress()
    store = store_for(cfg)
    in_keys = store.current_keys("extract")
    cfg_hash = cfg.section_hash("chunk")
    rec = StageRecorder(store, "chunk", cfg_hash)
    chunker: SemanticChunker | None = None
    progress.start("chunk", len(in_keys))
    loop = ShardLoop(store, "chunk", rec, Chunk, progress, part=part, done_elsewhere=done_elsewhere)

    def job(in_key: str) -> ShardJob:
        docs: list[Document] = []

        def read() -> int:  # the documents in, also counted for a reused shard
            docs.extend(store.read_shard("extract", in_key, Document))
            return len(docs)

        def compute() -> tuple[list[Chunk], list[Any]]:
            nonlocal chunker
            chunker = chunker or SemanticChunker(cfg.chunk, str(cfg.base_dir))
            return [c for d in docs for c in chunker.chunk(d)], []

        return ShardJob(content_id(in_key, cfg_hash), [in_key], read, compute, units=1)

    loop.run([job(in_key) for in_key in in_keys])
    return loop.finish()
