"""The run store: parquet shards, per-stage manifests and rejects under ``runs/<run_id>/``.

A shard is complete when its parquet file exists: files are written to a temporary
name and renamed, the rejects of a shard before the shard itself, so a run killed at
any point resumes by skipping completed shards and redoing only the one in flight.
A stage's current output is the list of shards named in its manifest, so shards
left over from earlier inputs are never read by mistake.

The run folder is a local path (the default) or an fsspec URL (``s3://bucket/runs/demo``): every read and
write goes through ``datapipe.fsio``, so a shard written by a Ray worker on another machine is the same
object the driver reads. On an object store a shard is one upload, complete or absent, as a renamed file is.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
from upath import UPath

from datapipe import fsio
from datapipe.errors import TerminalError
from datapipe.records import Record, Reject
from datapipe.stages import STAGES as _STAGE_REGISTRY

if TYPE_CHECKING:
    from datapipe.config import PipelineConfig

STAGE_DIRS = {s.name: s.folder for s in _STAGE_REGISTRY.values()}
"""Stage name -> its folder under the run folder, from the one registry of stages (:mod:`datapipe.stages`)."""
STAGES = list(STAGE_DIRS)

R = TypeVar("R", bound=Record)


def _atomic_write_bytes(path: Path | UPath, data: bytes) -> None:
    fsio.write_bytes(path, data, fsync=True)


def _atomic_write_table(path: Path | UPath, table: pa.Table) -> None:
    fsio.write_table(path, table, fsync=True)


def store_for(cfg: PipelineConfig) -> RunStore:
    """The run store of a pipeline config (its ``run_dir``)."""
    return RunStore(cfg.run_dir)


class RunStore:
    """One run's folder. Stages read and write through it, never through raw paths."""

    def __init__(self, run_dir: str | Path | UPath) -> None:
        self.root: UPath = fsio.as_path(run_dir)

    def stage_dir(self, stage: str) -> UPath:
        return self.root / STAGE_DIRS[stage]

    def shard_path(self, stage: str, key: str) -> UPath:
        return self.stage_dir(stage) / f"{key}.parquet"

    def rejects_path(self, stage: str, key: str) -> UPath:
        return self.root / "rejects" / stage / f"{key}.parquet"

    def pending_path(self, stage: str, key: str) -> UPath:
        return self.root / "pending" / stage / f"{key}.parquet"

    def has_shard(self, stage: str, key: str) -> bool:
        return self.shard_path(stage, key).is_file()

    def write_shard(self, stage: str, key: str, table: pa.Table, rejects: list[Reject]) -> None:
        """Persist one shard and its rejects; the shard file appearing marks it complete."""
        _atomic_write_table(self.rejects_path(stage, key), Reject.to_table(rejects))
        _atomic_write_table(self.shard_path(stage, key), table)

    def write_partial(self, stage: str, key: str, table: pa.Table, rejects: list[Reject], pending: list[Reject]) -> str:
        """Persist what a shard got before a retryable failure, under a key of its own (``partial-...``, named by
        its content): the shard's own key stays absent, so the next run computes it again; the records a retry
        can fix go to ``pending/`` instead of ``rejects/``. Returns the key written."""
        from datapipe.records import content_id

        ids = [table.column("id").to_pylist() if "id" in table.column_names else [], [r.record_id for r in rejects]]
        pkey = "partial-" + content_id(key, ids, sorted(r.record_id for r in pending), length=24)
        _atomic_write_table(self.pending_path(stage, pkey), Reject.to_table(pending))
        self.write_shard(stage, pkey, table, rejects)
        return pkey

    def read_pending(self, stage: str, key: str) -> list[Reject]:
        path = self.pending_path(stage, key)
        return Reject.from_table(fsio.read_table(path)) if path.is_file() else []

    def iter_pending(self, stage: str) -> Iterator[Reject]:
        """Records of the stage's current output that a retry can fix (none once every shard is complete)."""
        manifest = self.read_manifest(stage)
        for s in (manifest or {}).get("shards", []):
            if s.get("pending"):
                yield from self.read_pending(stage, s["key"])

    def read_shard(self, stage: str, key: str, record: type[R]) -> list[R]:
        return record.from_table(fsio.read_table(self.shard_path(stage, key)))

    def read_shard_rejects(self, stage: str, key: str) -> list[Reject]:
        path = self.rejects_path(stage, key)
        return Reject.from_table(fsio.read_table(path)) if path.is_file() else []

    def manifest_path(self, stage: str) -> UPath:
        return self.stage_dir(stage) / "manifest.json"

    def read_manifest(self, stage: str) -> dict[str, Any] | None:
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def write_manifest(self, stage: str, manifest: dict[str, Any]) -> None:
        _atomic_write_bytes(self.manifest_path(stage), json.dumps(manifest, indent=2, sort_keys=True).encode())

    def write_json(self, stage: str, name: str, obj: Any) -> None:
        """A side file of a stage (e.g. the last Argilla push), written atomically."""
        _atomic_write_bytes(self.stage_dir(stage) / name, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, stage: str, name: str) -> Any:
        path = self.stage_dir(stage) / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def current_keys(self, stage: str) -> list[str]:
        manifest = self.read_manifest(stage)
        if manifest is None:
            raise FileNotFoundError(
                f"stage '{stage}' has no output in {self.root}: run `datapipe {stage}` "
                f"(or `datapipe run`) for this run first"
            )
        return [s["key"] for s in manifest["shards"]]

    def iter_records(self, stage: str, record: type[R]) -> Iterator[R]:
        for key in self.current_keys(stage):
            yield from self.read_shard(stage, key, record)

    def iter_rejects(self, stage: str) -> Iterator[Reject]:
        manifest = self.read_manifest(stage)
        if manifest is None:
            return
        for s in manifest["shards"]:
            yield from self.read_shard_rejects(stage, s["key"])

    def rejects_by_reason(self, stage: str) -> Counter[str]:
        return Counter(_reason_code(r.reason) for r in self.iter_rejects(stage))


class RunLockedError(TerminalError):
    """Another process is running a pipeline on the same run folder."""


LOCK_FILE = ".lock"


@contextmanager
def run_lock(run_dir: str | Path | UPath) -> Iterator[None]:
    """Hold the run folder for one process at a time (an advisory lock the OS drops when the holder dies,
    SIGKILL included), then clear temporary files that killed writers left behind.

    A run store on a URL is locked by a ``.lock`` object created only if absent (see ``_object_lock``)."""
    root = fsio.as_path(run_dir)
    if not fsio.is_local(root):
        with _object_lock(root):
            yield
        return
    root.mkdir(parents=True, exist_ok=True)
    fh = open(fsio.local(root / LOCK_FILE), "a+")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise RunLockedError(
                f"another datapipe process is working on {root} ({holder}); wait for it to finish "
                f"(a killed process releases the lock by itself)"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        _remove_stale_tmp(fsio.local(root))
        yield
    finally:
        fh.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _object_lock(root: UPath) -> Iterator[None]:
    """The lock of a run store on an object store: a ``.lock`` object naming its holder (host, pid, token).

    It is created with an exclusive create where the filesystem has one (s3fs: a conditional PUT), so two
    drivers cannot both take it. An object store cannot drop the lock when its holder dies: a lock left by a
    dead process on this same host is taken over; one from another host must be removed by hand (the message
    says which object), after checking that nothing runs there.
    """
    path = root / LOCK_FILE
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    token = f"{me['host']}:{me['pid']}:{time.time_ns()}"
    body = json.dumps({**me, "token": token}).encode()
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            with path.fs.open(path.path, "xb") as fh:
                fh.write(body)
            break
        except FileExistsError:
            try:
                holder = json.loads(path.read_bytes())
            except (OSError, ValueError):
                holder = {}
            if holder.get("host") == me["host"] and not _pid_alive(int(holder.get("pid", 0) or 0)):
                path.fs.rm(path.path)  # its holder died on this machine: take it over
                continue
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
            raise RunLockedError(
                f"another datapipe process is working on {root} ({who}); wait for it to finish. If that process "
                f"is gone, delete {path} by hand (an object store cannot release a dead process's lock)"
            ) from None
    else:
        raise RunLockedError(f"could not take the lock {path}: it keeps reappearing; another process is starting")
    try:
        yield
    finally:
        try:
            if json.loads(path.read_bytes()).get("token") == token:
                path.fs.rm(path.path)
        except (OSError, ValueError):
            pass


def _remove_stale_tmp(root: Path) -> None:
    """Atomic writes go through ``.<name>.<pid>.tmp``; one left over belongs to a writer that died."""
    for dirpath, dirs, files in os.walk(root):
        links = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        for name in files + links:
            if name.startswith(".") and name.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(dirpath, name))
                except OSError:
                    pass


def _reason_code(reason: str) -> str:
    """``duplicate_of:<id>`` counts as ``duplicate_of`` in summaries (:func:`datapipe.reasons.reason_key`)."""
    from datapipe.reasons import reason_key

    return reason_key(reason)


class StageRecorder:
    """Collects a stage's per-shard figures and writes its manifest."""

    def __init__(self, store: RunStore, stage: str, config_hash: str) -> None:
        self.store = store
        self.stage = stage
        self.config_hash = config_hash
        self.started = time.time()
        self.shards: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}

    def add(
        self,
        key: str,
        inputs: list[str],
        n_in: int,
        n_out: int,
        n_rejects: int,
        seconds: float,
        reused: bool,
        pending: int = 0,
    ) -> None:
        """One shard's figures; ``pending``: records a retry can fix (the shard is then a partial one)."""
        self.shards.append(
            {
                "key": key,
                "inputs": inputs,
                "in": n_in,
                "out": n_out,
                "rejects": n_rejects,
                "seconds": round(seconds, 4),
                "reused": reused,
                **({"pending": pending} if pending else {}),
            }
        )

    def finish(self) -> dict[str, Any]:
        reasons: Counter[str] = Counter()
        pending: Counter[str] = Counter()
        for s in self.shards:
            for r in self.store.read_shard_rejects(self.stage, s["key"]):
                reasons[_reason_code(r.reason)] += 1
            if s.get("pending"):
                pending.update(_reason_code(r.reason) for r in self.store.read_pending(self.stage, s["key"]))
        manifest = {
            "stage": self.stage,
            "config_hash": self.config_hash,
            "started": self.started,
            "seconds": round(time.time() - self.started, 3),
            "counts": {
                "in": sum(s["in"] for s in self.shards),
                "out": sum(s["out"] for s in self.shards),
                "rejected": sum(s["rejects"] for s in self.shards),
                "shards": len(self.shards),
                "shards_reused": sum(1 for s in self.shards if s["reused"]),
                "pending": sum(s.get("pending", 0) for s in self.shards),
            },
            "rejects_by_reason": dict(sorted(reasons.items())),
            **({"pending_by_reason": dict(sorted(pending.items()))} if pending else {}),
            "shards": self.shards,
            **self.extra,
        }
        self.store.write_manifest(self.stage, manifest)
        return manifest
