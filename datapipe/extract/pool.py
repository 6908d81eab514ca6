"""Extraction on every local core: files go to a pool of processes, results come back in source order.

Parsing is CPU-bound Python (pdfminer, lxml, spaCy's sentence splitter inside unstructured), so threads
would share one core; processes do not. Workers are forked from a fork server that imported the
extractor once (``forkserver``), so a worker starts in a fraction of a second and never inherits the
threads of the calling process (Prefect's, Ray's). Files are handed to the workers largest first (the
longest-processing-time-first rule: a large file started last would leave the other workers idle while
it runs alone), but only a bounded window of them is submitted and not yet collected, so finished
documents do not pile up in memory; the file the caller waits for is always submitted.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from types import TracebackType
from typing import Any

from datapipe.config import ExtractConfig
from datapipe.errors import MissingDependencyError
from datapipe.records import Document, Reject

AHEAD_PER_WORKER = 4


def _init_worker() -> None:
    from datapipe.extract import _ensure_offline_spacy

    try:
        _ensure_offline_spacy()
    except MissingDependencyError:
        pass  # reported by the first file, with its install line


def extract_timed(
    src: Any, cfg: ExtractConfig, digest: str | None
) -> tuple[Document | Reject | tuple[str, str], float]:
    """One file extracted in a worker, with the seconds it took. A missing dependency comes back as
    ``("missing", message)`` (its exception does not survive pickling) and is raised again by the caller."""
    from datapipe.extract import extract_file

    t0 = time.perf_counter()
    try:
        out: Document | Reject | tuple[str, str] = extract_file(src, cfg, digest)
    except MissingDependencyError as exc:
        out = ("missing", str(exc))
    return out, time.perf_counter() - t0


class _Missing(MissingDependencyError):
    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)
        self.install = message.rsplit("Install it with: ", 1)[-1]


def _size(src: Any) -> int:
    """The file's size in bytes, the cost estimate for scheduling (0 when it cannot be read here)."""
    try:
        return os.stat(src.path).st_size
    except (OSError, TypeError, AttributeError):
        return 0


class ExtractPool:
    """Extract ``pending`` (source, known digest) pairs, in processes when ``workers`` > 1 and there is more
    than one file; :meth:`result` hands them back one by one in the same order. With one worker (or one
    file) it extracts in the calling process, on demand."""

    def __init__(self, cfg: ExtractConfig, pending: list[tuple[Any, str | None]], workers: int) -> None:
        self.cfg = cfg
        self.pending = list(pending)
        self.workers = max(1, min(workers, len(pending)))
        self.parallel = self.workers > 1
        self.next = 0  # the position (in ``pending``) the caller collects next
        # positions to submit, largest file first; sorted() is stable, so equal sizes keep source order
        self.order: deque[int] = deque(
            sorted(range(len(self.pending)), key=lambda i: -_size(self.pending[i][0])) if self.parallel else []
        )
        self.submitted: dict[int, Future[Any]] = {}  # submitted and not yet collected
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> ExtractPool:
        if self.parallel:
            ctx = mp.get_context("forkserver") if "forkserver" in mp.get_all_start_methods() else mp.get_context()
            if ctx.get_start_method() == "forkserver":
                ctx.set_forkserver_preload(["datapipe.extract._warm"])
            self.executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker)
            self._fill()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pos: int) -> None:
        assert self.executor is not None
        src, digest = self.pending[pos]
        self.submitted[pos] = self.executor.submit(extract_timed, src, self.cfg, digest)

    def _fill(self) -> None:
        while self.order and len(self.submitted) < self.workers * AHEAD_PER_WORKER:
            pos = self.order.popleft()
            if pos >= self.next and pos not in self.submitted:
                self._submit(pos)

    def result(self, src: Any) -> tuple[Document | Reject, float]:
        """The next source's document or reject (``src`` must be that source) and its extraction seconds."""
        pos = self.next
        want, digest = self.pending[pos]
        assert want == src, f"extract results out of order: {want} before {src}"
        self.next += 1
        if self.executor is None:
            out, seconds = extract_timed(src, self.cfg, digest)
        else:
            if pos not in self.submitted:  # a small file the window has not reached: the caller needs it now
                self._submit(pos)
            out, seconds = self.submitted.pop(pos).result()
            self._fill()
        if isinstance(out, tuple):
            raise _Missing(out[1])
        return out, seconds
