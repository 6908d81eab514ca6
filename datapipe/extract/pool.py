"""Extraction on every local core: files go to a pool of processes, results come back in source order.

Parsing is CPU-bound Python (pdfminer, lxml, spaCy's sentence splitter inside unstructured), so threads
would share one core; processes do not. Workers are forked from a fork server that imported the
extractor once (``forkserver``), so a worker starts in a fraction of a second and never inherits the
threads of the calling process (Prefect's, Ray's). Only a bounded window of files is in flight ahead
of the one the caller waits for, so finished documents do not pile up in memory behind a slow file.
"""

from __future__ import annotations

import multiprocessing as mp
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


class ExtractPool:
    """Extract ``pending`` (source, known digest) pairs, in processes when ``workers`` > 1 and there is more
    than one file; :meth:`result` hands them back one by one in the same order. With one worker (or one
    file) it extracts in the calling process, on demand."""

    def __init__(self, cfg: ExtractConfig, pending: list[tuple[Any, str | None]], workers: int) -> None:
        self.cfg = cfg
        self.pending = deque(pending)
        self.workers = max(1, min(workers, len(pending)))
        self.parallel = self.workers > 1
        self.in_flight: deque[tuple[Any, Future[Any]]] = deque()
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

    def _fill(self) -> None:
        assert self.executor is not None
        while self.pending and len(self.in_flight) < self.workers * AHEAD_PER_WORKER:
            src, digest = self.pending.popleft()
            self.in_flight.append((src, self.executor.submit(extract_timed, src, self.cfg, digest)))

    def result(self, src: Any) -> tuple[Document | Reject, float]:
        """The next source's document or reject (``src`` must be that source) and its extraction seconds."""
        if self.executor is None:
            want, digest = self.pending.popleft()
            assert want == src, f"extract results out of order: {want} before {src}"
            out, seconds = extract_timed(src, self.cfg, digest)
        else:
            want, fut = self.in_flight.popleft()
            assert want == src, f"extract results out of order: {want} before {src}"
            out, seconds = fut.result()
            self._fill()
        if isinstance(out, tuple):
            raise _Missing(out[1])
        return out, seconds
