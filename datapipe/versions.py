"""Published versions of a run's training data, and what changed between them.

A run ends by publishing. When the data it would export differs from the latest version,
it writes a new version, and earlier versions stay as they are:

```
runs/<run_id>/versions/
  v0001/chatml/train.parquet ...   one folder per version: the export(s), card, trainer snippets
  v0001/version.json               written last: a version folder without it is unfinished
  LATEST                           the latest version's name; `latest` links to its folder
  <key>.parquet, manifest.json     the publish stage's shards: each version's samples and sources
```

``version.json`` records the sources the version was built from (path -> sha256), so the
next run can tell added, changed and deleted documents, and which documents were added,
changed or deleted since the version before. A sample of the previous version that is
not in the new one is recorded in ``rejects/publish/`` with the reason (``source_deleted``,
``source_changed``, or ``not_regenerated`` when its document is unchanged but the
configuration, prompts or teacher changed); samples a stage dropped this run are already
in that stage's rejects.

Publishing is idempotent and crash-safe: the version's name is the next free number,
an unfinished folder of that name (a run killed while publishing) is removed and
written again, and a run whose export equals the latest version publishes nothing.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from upath import UPath

from datapipe import fsio
from datapipe.config import PipelineConfig
from datapipe.records import PublishedSample, Reject, Sample, content_id
from datapipe.store import STAGES, RunStore, StageRecorder, _atomic_write_bytes

VERSION_FILE = "version.json"
LATEST_FILE = "LATEST"
LATEST_LINK = "latest"
_NAME = re.compile(r"^v(\d{4,})$")
_EXPORT_KEYS_IGNORED = ("out", "push_to_hub", "hub_private")


@dataclass
class SourceDiff:
    """Sources of this run compared with those of the latest version (paths)."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "changed": self.changed,
            "deleted": self.deleted,
            "unchanged": len(self.unchanged),
        }


def versions_dir(store: RunStore) -> UPath:
    return store.stage_dir("publish")


def list_versions(store: RunStore) -> list[str]:
    """Names of the finished versions, oldest first."""
    root = versions_dir(store)
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if _NAME.match(p.name) and (p / VERSION_FILE).is_file()]
    return sorted(names, key=lambda n: int(n[1:]))


def read_version(store: RunStore, name: str) -> dict[str, Any]:
    return json.loads((versions_dir(store) / name / VERSION_FILE).read_text(encoding="utf-8"))


def latest_version(store: RunStore) -> dict[str, Any] | None:
    """The newest finished version's record (the LATEST pointer is derived from it, never trusted alone)."""
    names = list_versions(store)
    return read_version(store, names[-1]) if names else None


def current_sources(cfg: PipelineConfig, store: RunStore) -> dict[str, str]:
    """Every source this run's extract stage saw, path -> sha256 of its bytes (``rejected:<reason>`` for
    files extract rejected), plus the taxonomy leaves' qna.yaml files when QA data is generated."""
    out: dict[str, str] = {}
    if store.read_manifest("extract") is not None:
        for key in store.current_keys("extract"):
            table = fsio.read_table(store.shard_path("extract", key), columns=["source_path", "bytes_sha256"])
            for row in table.to_pylist():
                out[row["source_path"]] = row["bytes_sha256"]
            for r in store.read_shard_rejects("extract", key):
                if r.source_path and r.source_path not in out:
                    out[r.source_path] = f"rejected:{r.reason}"
    if "qa" in cfg.generate.kinds:
        from datapipe.extract import sha256_file
        from datapipe.stages.extract import load_leaves

        for leaf in load_leaves(cfg):
            out[str(leaf.path)] = sha256_file(leaf.path)
    return out


def diff_sources(previous: dict[str, str], current: dict[str, str]) -> SourceDiff:
    d = SourceDiff()
    for path in sorted(current):
        if path not in previous:
            d.added.append(path)
        elif previous[path] != current[path]:
            d.changed.append(path)
        else:
            d.unchanged.append(path)
    d.deleted = sorted(p for p in previous if p not in current)
    return d


def export_inputs(cfg: PipelineConfig, store: RunStore, fmt: str) -> list[Any]:
    """What an export of ``fmt`` is a function of: its input shards, the export settings and the
    reviewers' decisions of the last `datapipe curate pull` (so new decisions publish a new version)."""
    from datapipe.curate import curation_key

    settings = {k: v for k, v in cfg.export.model_dump(mode="json").items() if k not in _EXPORT_KEYS_IGNORED}
    stage = "preference" if fmt == "dpo" else "filter"
    keys = store.current_keys(stage) if store.read_manifest(stage) is not None else []
    return [fmt, keys, settings | {"format": fmt}, curation_key(store)]


def content_key(cfg: PipelineConfig, store: RunStore, formats: list[str]) -> str:
    return content_id([export_inputs(cfg, store, f) for f in formats], length=32)


def _members(samples: list[Sample]) -> list[PublishedSample]:
    return [
        PublishedSample(
            id=s.id,
            kind=s.kind,
            source_path=s.provenance.source_path,
            document_id=s.provenance.document_id,
            chunk_id=s.provenance.chunk_id,
        )
        for s in samples
    ]


def _rejected_ids(store: RunStore) -> set[str]:
    """Record ids some stage of this run rejected (their leaving is already recorded)."""
    ids: set[str] = set()
    for stage in STAGES:
        if stage != "publish":
            ids.update(r.record_id for r in store.iter_rejects(stage))
    return ids


def removed_samples(
    store: RunStore,
    previous: dict[str, Any],
    current_ids: set[str],
    sources: dict[str, str],
) -> list[Reject]:
    """Rejects for the samples of the ``previous`` version that are not in the new one and no stage rejected."""
    if not store.has_shard("publish", previous["membership"]):  # its record was deleted by hand: nothing to compare
        return []
    prev_members = store.read_shard("publish", previous["membership"], PublishedSample)
    gone = [m for m in prev_members if m.id not in current_ids]
    if not gone:
        return []
    explained = _rejected_ids(store)
    waiting = {r.record_id for stage in STAGES if stage != "publish" for r in store.iter_pending(stage)}
    full: dict[str, Sample] = {}
    for key in previous.get("inputs", []):
        if store.has_shard("filter", key):
            full.update((s.id, s) for s in store.read_shard("filter", key, Sample))
    prev_sources: dict[str, str] = previous.get("sources", {})
    name = previous["version"]
    rejects = []
    for m in gone:
        if m.id in explained or m.chunk_id in explained:
            continue
        path = m.source_path
        if m.id in waiting or m.chunk_id in waiting:
            reason = "pending"
            detail = "its teacher request failed in a way a retry can fix (allow_partial); the next run asks again"
        elif path not in sources:
            reason, detail = "source_deleted", f"{path} is no longer among the sources (the sample was in {name})"
        elif prev_sources.get(path) not in (None, sources[path]):
            reason = "source_changed"
            detail = f"{path} changed since {name} (sha256 {prev_sources[path][:12]} -> {sources[path][:12]})"
        else:
            reason = "not_regenerated"
            detail = f"{path} is unchanged since {name}, but the configuration, prompts or teacher changed"
        sample = full.get(m.id)
        payload = sample.model_dump_json() if sample else m.model_dump_json()
        rejects.append(
            Reject(stage="publish", record_id=m.id, reason=reason, detail=detail, source_path=path, payload=payload)
        )
    return rejects


def _point_latest(store: RunStore, name: str) -> None:
    root = versions_dir(store)
    _atomic_write_bytes(root / LATEST_FILE, (name + "\n").encode())
    if not fsio.is_local(root):  # an object store has no symlinks: LATEST is the pointer
        return
    link = fsio.local(root / LATEST_LINK)
    tmp = fsio.local(root / f".{LATEST_LINK}.{os.getpid()}.tmp")
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(name, tmp, target_is_directory=True)
        os.replace(tmp, link)
    except OSError:  # a filesystem without symlinks: LATEST is the pointer
        pass


def run_publish(cfg: PipelineConfig, formats: list[str], progress: Any = None) -> dict[str, Any]:
    """Publish the run's export as a new version when it differs from the latest one."""
    from datapipe.pending import pending_counts
    from datapipe.stages import runner_of
    from datapipe.store import store_for

    t0 = time.perf_counter()
    store = store_for(cfg)
    key = content_key(cfg, store, formats)
    latest = latest_version(store)
    samples = list(store.iter_records("filter", Sample))
    members = _members(samples)
    sources = current_sources(cfg, store)
    diff = diff_sources(latest["sources"] if latest else {}, sources)
    rec = StageRecorder(store, "publish", key[:16])
    pending = pending_counts(store)  # only with allow_partial: otherwise such a run does not reach publish
    if pending:
        rec.extra["pending"] = pending
    if progress is not None:
        progress.start("publish", 1)
    if latest is not None and latest["content_key"] == key:
        _point_latest(store, latest["version"])
        n_removed = len(store.read_shard_rejects("publish", latest["membership"]))
        rec.add(latest["membership"], [latest["version"]], len(members), len(members), n_removed, 0.0, True)
        rec.extra.update(version=latest["version"], new_version=False, path=latest["path"], documents=diff.as_dict())
        if progress is not None:
            progress.done("publish")
        return rec.finish()

    names = list_versions(store)
    name = f"v{(int(names[-1][1:]) if names else 0) + 1:04d}"
    target = versions_dir(store) / name
    if target.exists():  # left by a run killed while publishing: unfinished, never pointed at
        fsio.remove_tree(target)
    export_manifest = store.read_manifest("export")
    exports: dict[str, Any] = {}
    try:
        for fmt in formats:
            m = runner_of("export")(cfg, fmt, out=str(target / fmt))
            exports[fmt] = {"path": m["path"], "files": m["files"], "rows": m["counts"]["out"], "splits": m["splits"]}
    finally:  # the export stage's own manifest describes the run's working export, not the version's copy
        if export_manifest is not None:
            store.write_manifest("export", export_manifest)
    current_ids = {m.id for m in members}
    removed = removed_samples(store, latest, current_ids, sources) if latest else []
    membership = content_id(latest["version"] if latest else None, key, length=24)
    store.write_shard("publish", membership, PublishedSample.to_table(members), removed)
    prev_ids: set[str] = set()
    if latest and store.has_shard("publish", latest["membership"]):
        prev_ids = {m.id for m in store.read_shard("publish", latest["membership"], PublishedSample)}
    by_reason: dict[str, int] = {}
    for r in removed:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
    version = {
        "version": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "content_key": key,
        "previous": latest["version"] if latest else None,
        "path": exports[formats[0]]["path"],
        "formats": exports,
        "membership": membership,
        "inputs": store.current_keys("filter"),
        "sources": sources,
        "documents": diff.as_dict(),
        **({"pending": pending} if pending else {}),
        "samples": {
            "total": len(members),
            "added": len(current_ids - prev_ids),
            "removed": len(prev_ids - current_ids),
            "removed_recorded": by_reason,
        },
    }
    _atomic_write_bytes(target / VERSION_FILE, json.dumps(version, indent=2, sort_keys=True).encode())
    _point_latest(store, name)
    rec.add(membership, [name], len(members), len(members), len(removed), time.perf_counter() - t0, False)
    rec.extra.update(
        version=name, new_version=True, path=version["path"], documents=diff.as_dict(), samples=version["samples"]
    )
    if progress is not None:
        progress.done("publish")
    return rec.finish()
