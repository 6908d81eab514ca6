"""The one shard loop (datapipe.stages.runner) on a real run store, and the one stage registry.

The loop is exercised with jobs of its own contract (key, inputs, records in, compute): documents with
the fields extract writes, rejects with reasons from the catalogue (a final one and a retryable one).
What the stages do inside ``compute`` is covered by their own tests; here: reuse, Ray parts and
done-elsewhere, rejects before the shards, pending records, manifest order and progress.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from datapipe.records import Document, Reject, content_id
from datapipe.stages import STAGES, part_stages, runner_of
from datapipe.stages.runner import ShardJob, ShardLoop, in_part
from datapipe.store import STAGE_DIRS, RunStore, StageRecorder


def _doc(text: str) -> Document:
    return Document(
        id=content_id(text), source_path=f"{text}.txt", format="txt", text=text, spans=[], bytes_sha256=content_id(text)
    )


class _Progress:
    def __init__(self) -> None:
        self.advanced = 0
        self.done_ = False

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        self.advanced += n

    def done(self, stage: str) -> None:
        self.done_ = True


def _jobs(calls: list[str], texts: list[str], reason: str | None = None) -> list[ShardJob]:
    def job(text: str) -> ShardJob:
        def compute() -> tuple[list[Document], list[Reject]]:
            calls.append(text)
            rejects = [Reject(stage="extract", record_id=f"r-{text}", reason=reason, detail="x")] if reason else []
            return [_doc(text)], rejects

        return ShardJob(content_id("shard", text), [f"{text}.txt"], 1, compute)

    return [job(t) for t in texts]


def _loop(store: RunStore, progress: Any = None, **kw: Any) -> ShardLoop:
    return ShardLoop(store, "extract", StageRecorder(store, "extract", "h"), Document, progress or _Progress(), **kw)


def test_computes_once_then_reuses(tmp_path: Any) -> None:
    store = RunStore(tmp_path)
    calls: list[str] = []
    texts = ["a", "b", "c"]
    progress = _Progress()
    loop = _loop(store, progress)
    loop.run(_jobs(calls, texts, reason="parse_error"))
    first = loop.finish()
    assert calls == texts and progress.done_ and progress.advanced == 3
    assert [s["key"] for s in first["shards"]] == [content_id("shard", t) for t in texts]
    assert [(s["in"], s["out"], s["rejects"], s["reused"]) for s in first["shards"]] == [(1, 1, 1, False)] * 3
    assert first["rejects_by_reason"] == {"parse_error": 3}

    loop = _loop(store)
    loop.run(_jobs(calls, texts, reason="parse_error"))
    second = loop.finish()
    assert calls == texts  # nothing computed again
    assert [(s["key"], s["out"], s["rejects"], s["reused"]) for s in second["shards"]] == [
        (s["key"], 1, 1, True) for s in first["shards"]
    ]


def test_parts_share_the_shards_and_the_driver_records_them(tmp_path: Any) -> None:
    store = RunStore(tmp_path)
    calls: list[str] = []
    texts = [f"t{i}" for i in range(12)]
    done: dict[str, float] = {}
    for i in range(3):
        loop = _loop(store, part=(i, 3))
        loop.run(_jobs(calls, texts))
        out = loop.finish()
        assert set(out) == {"computed"}  # a part writes no manifest
        assert all(in_part(k, (i, 3)) for k in out["computed"])
        done.update(out["computed"])
    assert sorted(calls) == sorted(texts) and len(done) == 12  # each shard in exactly one part
    assert store.read_manifest("extract") is None
    loop = _loop(store, done_elsewhere={k: 7.5 for k in done})
    loop.run(_jobs(calls, texts))
    manifest = loop.finish()
    assert len(calls) == 12  # the driver's pass computes nothing
    assert [(s["reused"], s["seconds"]) for s in manifest["shards"]] == [(False, 7.5)] * 12  # done here, in parts
    again = _loop(store, part=(0, 3))
    again.run(_jobs(calls, texts))
    assert again.finish() == {"computed": {}} and len(calls) == 12  # a part skips shards already written


def test_pending_records_leave_the_shard_incomplete(tmp_path: Any) -> None:
    store = RunStore(tmp_path)
    calls: list[str] = []
    loop = _loop(store, part=(0, 1))
    loop.run(_jobs(calls, ["a"], reason="teacher_unavailable"))
    assert loop.finish() == {"computed": {}}  # a partial shard is not done: not reported to the driver
    loop = _loop(store)
    loop.run(_jobs(calls, ["a"], reason="teacher_unavailable"))
    manifest = loop.finish()
    (shard,) = manifest["shards"]
    assert shard["key"].startswith("partial-") and shard["pending"] == 1 and shard["rejects"] == 0
    assert not store.has_shard("extract", content_id("shard", "a"))
    assert [r.record_id for r in store.iter_pending("extract")] == ["r-a"]
    assert calls == ["a", "a"]  # asked again on the next run


def test_rejects_before_the_shards(tmp_path: Any) -> None:
    store = RunStore(tmp_path)
    rejects = [Reject(stage="extract", record_id="bad.pdf", reason="unreadable", detail="x")]
    for _ in range(2):
        loop = _loop(store)
        loop.rejects_before("sources-k", ["bad.pdf"], rejects)
        loop.run(_jobs([], ["a"]))
        manifest = loop.finish()
        assert [s["key"] for s in manifest["shards"]][0] == "sources-k"
        assert manifest["rejects_by_reason"] == {"unreadable": 1}
    part = _loop(store, part=(0, 2))
    part.rejects_before("sources-other", ["bad.pdf"], rejects)
    assert not store.has_shard("extract", "sources-other")  # a part leaves them to the driver's pass


def test_async_jobs_are_recorded_in_job_order(tmp_path: Any) -> None:
    store = RunStore(tmp_path)

    def job(text: str, delay: float) -> ShardJob:
        async def compute() -> tuple[list[Document], list[Reject]]:
            await asyncio.sleep(delay)
            return [_doc(text)], []

        return ShardJob(content_id(text), [text], 1, compute)

    loop = _loop(store)
    jobs = [job("slow", 0.2), job("fast", 0.0)]
    asyncio.run(loop.arun(jobs, concurrency=2))
    assert [s["inputs"] for s in loop.finish()["shards"]] == [["slow"], ["fast"]]


def test_one_registry_of_stages() -> None:
    assert STAGE_DIRS == {name: s.folder for name, s in STAGES.items()}
    assert part_stages() == ["extract", "chunk", "generate", "preference"]
    for name, stage in STAGES.items():
        if stage.runner is None:
            continue
        params = inspect.signature(runner_of(name)).parameters
        assert "cfg" in params, name
        if stage.parts:  # what flows' part tasks and the driver's pass give such a stage
            assert {"part", "done_elsewhere"} <= set(params), name
        if stage.teacher:
            assert "stats_elsewhere" in params, name
