"""The shard loop every stage runs on, written once.

A stage plans :class:`ShardJob`\\ s (a shard key named by its content, the inputs, the records in, and a
``compute`` that returns the shard's records and rejects); :class:`ShardLoop` does the rest the same way
for every stage: the Ray part a job belongs to (``in_part``) and the shards a part skips, reuse of a shard
already written (``store.has_shard``), rejects written before the shards (``rejects_before``), writing
a computed shard complete or partial with its retryable records pending (:func:`write_output`), the
``StageRecorder`` manifest (with ``done_elsewhere``: shards a Ray part computed, recorded by the driver's
pass with the part's seconds), and progress. Plain Python, no Prefect: ``flows/`` wraps the stages as tasks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from datapipe.records import Record, Reject
from datapipe.store import RunStore, StageRecorder


class Progress(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def done(self, stage: str) -> None: ...


class NullProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def done(self, stage: str) -> None:
        pass


Part = tuple[int, int] | None
"""``(i, n)``: run only the i-th of n shares of a stage's shards (a worker's share, e.g. a Ray task), or None."""


def local_map(fn: Any, items: list[Any]) -> list[Any]:
    return [fn(x) for x in items]


def in_part(key: str, part: Part) -> bool:
    """Whether the shard ``key`` belongs to ``part``: a stable hash of the key, modulo the number of parts."""
    return part is None or int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % part[1] == part[0]


def write_output(store: RunStore, stage: str, key: str, table: Any, rejects: list[Reject]) -> tuple[str, int, int]:
    """Write a computed shard: complete under ``key`` when every record has an outcome, else a partial shard
    whose retryable records are pending (see :mod:`datapipe.reasons`). Returns (key written, rejects, pending)."""
    from datapipe.reasons import split_pending

    final, pending = split_pending(rejects)
    if not pending:
        store.write_shard(stage, key, table, final)
        return key, len(final), 0
    return store.write_partial(stage, key, table, final, pending), len(final), len(pending)


@dataclass
class ShardJob:
    """One shard of a stage. ``compute()`` (a plain function, or a coroutine function for :meth:`ShardLoop.arun`)
    returns ``(records, rejects)``, or ``(records, rejects, seconds_elsewhere)`` when the work ran in another
    process (a pool worker): the shard's clock then restarts after ``compute`` and adds those seconds.
    ``n_in``: records in, or a function that reads them (called once, also for a reused shard).
    ``units``: progress units of the shard (default ``n_in``). ``part_key``: the string that decides the
    shard's Ray part (default ``key``). ``seconds_before``: time already spent on it (e.g. hashing its source).
    ``have``: whether the shard exists, when the stage already asked. ``meta``: the stage's own (its recorder's)."""

    key: str
    inputs: list[str]
    n_in: int | Callable[[], int]
    compute: Callable[[], Any]
    units: int | None = None
    part_key: str | None = None
    seconds_before: float = 0.0
    have: bool | None = None
    meta: Any = None


@dataclass
class Outcome:
    """What became of a job: the key written (``partial-...`` when records are pending), its records (read back
    when reused), rejects and pending counts, seconds, and whether the shard was there already."""

    job: ShardJob
    written: str
    records: list[Any]
    n_in: int
    n_rej: int
    n_pending: int
    seconds: float
    have: bool


class ShardLoop:
    """Runs a stage's jobs: reuse, Ray part, write, manifest, progress (see the module docstring).

    ``compute_advances``: the jobs' ``compute`` advance the progress themselves (per record); else the loop
    advances a shard's ``units`` once it is done. ``on_record(outcome, reused)`` replaces the default manifest
    line (``rec.add``) where a stage records more (extract: duplicates of a source, noise removed)."""

    def __init__(
        self,
        store: RunStore,
        stage: str,
        rec: StageRecorder,
        record_type: type[Record],
        progress: Progress,
        *,
        part: Part = None,
        done_elsewhere: dict[str, float] | None = None,
        compute_advances: bool = False,
        on_record: Callable[[Outcome, bool], None] | None = None,
    ) -> None:
        self.store = store
        self.stage = stage
        self.rec = rec
        self.record_type = record_type
        self.progress = progress
        self.part = part
        self.done_elsewhere = done_elsewhere or {}
        self.compute_advances = compute_advances
        self.on_record = on_record
        self.computed: dict[str, float] = {}  # shard key -> seconds, of shards computed (complete) here

    def _have(self, job: ShardJob) -> bool:
        if job.have is None:
            job.have = self.store.has_shard(self.stage, job.key)
        return job.have

    def select(self, jobs: list[ShardJob]) -> list[ShardJob]:
        """The jobs this process runs: all, or (a Ray part) those of its share not written yet."""
        if self.part is None:
            return jobs
        return [j for j in jobs if in_part(j.part_key or j.key, self.part) and not self._have(j)]

    def rejects_before(self, key: str, inputs: list[str], rejects: list[Reject], *, rewrite: bool = False) -> None:
        """A shard of rejects only, for records dropped before any shard is computed (e.g. sources that cannot
        be read, prompts over a cap); written when absent (``rewrite``: always) and recorded. Not in a Ray
        part: the driver's pass writes it. Progress is the stage's (some count these records, some do not)."""
        if not rejects or self.part is not None:
            return
        if rewrite or not self.store.has_shard(self.stage, key):
            self.store.write_shard(self.stage, key, self.record_type.to_table([]), rejects)
        self.rec.add(key, inputs, len(rejects), 0, len(rejects), 0.0, False)

    def _begin(self, job: ShardJob) -> tuple[float, int, bool]:
        t0 = time.perf_counter()
        n_in = job.n_in() if callable(job.n_in) else job.n_in
        return t0, n_in, self.store.has_shard(self.stage, job.key) if job.have is None else job.have

    def _reused(self, job: ShardJob, t0: float, n_in: int) -> Outcome:
        records = self.store.read_shard(self.stage, job.key, self.record_type)
        n_rej = len(self.store.read_shard_rejects(self.stage, job.key))
        self.progress.advance(self.stage, n_in if job.units is None else job.units)
        return Outcome(job, job.key, records, n_in, n_rej, 0, self._seconds(job, t0), True)

    def _written(self, job: ShardJob, t0: float, n_in: int, out: tuple[Any, ...]) -> Outcome:
        records, rejects = out[0], out[1]
        if len(out) > 2:  # computed in another process: this shard's own clock starts now
            t0 = time.perf_counter() - out[2]
        written, n_rej, n_pending = write_output(
            self.store, self.stage, job.key, self.record_type.to_table(records), rejects
        )
        if not self.compute_advances:
            self.progress.advance(self.stage, n_in if job.units is None else job.units)
        return Outcome(job, written, records, n_in, n_rej, n_pending, self._seconds(job, t0), False)

    def _seconds(self, job: ShardJob, t0: float) -> float:
        return job.seconds_before + time.perf_counter() - t0

    def _record(self, o: Outcome) -> None:
        if not o.have and not o.n_pending:  # a partial shard is not done: the driver's pass asks again
            self.computed[o.job.key] = o.seconds
        if self.part is not None:  # a worker's share: the driver's pass records it
            return
        reused = o.have and o.job.key not in self.done_elsewhere
        o.seconds = self.done_elsewhere.get(o.job.key, o.seconds)
        if self.on_record is not None:
            self.on_record(o, reused)
        else:
            self.rec.add(o.written, o.job.inputs, o.n_in, len(o.records), o.n_rej, o.seconds, reused, o.n_pending)

    def run(self, jobs: list[ShardJob]) -> None:
        """Run the jobs one after another (``compute`` a plain function), recording each as it ends."""
        for job in self.select(jobs):
            t0, n_in, have = self._begin(job)
            self._record(self._reused(job, t0, n_in) if have else self._written(job, t0, n_in, job.compute()))

    async def arun(self, jobs: list[ShardJob], concurrency: int = 1) -> None:
        """Run the jobs (``compute`` a coroutine function), up to ``concurrency`` at once; recorded in job order."""
        jobs = self.select(jobs)
        limit = asyncio.Semaphore(concurrency)
        outcomes: dict[int, Outcome] = {}

        async def one(i: int, job: ShardJob) -> None:
            async with limit:
                t0, n_in, have = self._begin(job)
                outcomes[i] = self._reused(job, t0, n_in) if have else self._written(job, t0, n_in, await job.compute())

        await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs)))
        for i in range(len(jobs)):
            self._record(outcomes[i])

    def finish(self) -> dict[str, Any]:
        """The stage's manifest (written), or in a Ray part ``{"computed": {shard key: seconds}}`` for the
        driver's pass, which then finds those shards complete (``done_elsewhere``)."""
        if self.part is not None:
            return {"computed": dict(self.computed)}
        self.progress.done(self.stage)
        return self.rec.finish()
