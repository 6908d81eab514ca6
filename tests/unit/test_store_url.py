"""The run store on an fsspec URL behaves as on a local folder (fsspec's in-memory filesystem here; the
S3 case, over HTTP, is tests/integration/test_store_s3.py)."""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from upath import UPath

from datapipe.config import PipelineConfig
from datapipe.errors import ConfigError, MissingDependencyError
from datapipe.fsio import as_path, is_local, read_table, write_table
from datapipe.records import Reject
from datapipe.runs import load_target, snapshot_config
from datapipe.store import LOCK_FILE, RunLockedError, RunStore, StageRecorder, run_lock


def _url() -> str:
    return f"memory://datapipe-{uuid.uuid4().hex[:8]}/runs/demo"


def _fill(store: RunStore) -> dict:
    table = pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    rejects = [Reject(stage="extract", record_id="c", reason="empty", detail="no text", source_path="/d/c.txt")]
    store.write_shard("extract", "k1", table, rejects)
    rec = StageRecorder(store, "extract", "h")
    rec.add("k1", ["/d/a.txt"], 3, 2, 1, 0.1, False)
    return rec.finish()


def _view(store: RunStore) -> dict:
    return {
        "keys": store.current_keys("extract"),
        "rows": read_table(store.shard_path("extract", "k1")).to_pylist(),
        "rejects": [(r.record_id, r.reason) for r in store.iter_rejects("extract")],
        "by_reason": dict(store.rejects_by_reason("extract")),
        "has": (store.has_shard("extract", "k1"), store.has_shard("extract", "nope")),
    }


def test_a_url_store_reads_back_what_a_local_store_does(tmp_path: Path) -> None:
    remote, here = RunStore(_url()), RunStore(tmp_path / "demo")
    assert not is_local(remote.root) and is_local(here.root)
    m_remote, m_here = _fill(remote), _fill(here)
    assert _view(remote) == _view(here)
    assert m_remote["counts"] == m_here["counts"] and m_remote["rejects_by_reason"] == {"empty": 1}
    assert remote.read_manifest("extract")["shards"] == here.read_manifest("extract")["shards"]
    # no temporary names on the object store: each object is written in one piece
    names = [p.name for p in remote.stage_dir("extract").iterdir()]
    assert sorted(names) == ["k1.parquet", "manifest.json"]


def test_write_table_on_a_url_is_readable_with_columns() -> None:
    path = as_path(_url()) / "t.parquet"
    write_table(path, pa.table({"a": [1, 2], "b": ["x", "y"]}))
    assert read_table(path, columns=["b"]).to_pylist() == [{"b": "x"}, {"b": "y"}]


def test_the_lock_of_a_url_store_refuses_a_second_holder_and_is_released() -> None:
    root = as_path(_url())
    with run_lock(root):
        holder = json.loads((root / LOCK_FILE).read_bytes())
        assert holder["host"] == socket.gethostname()
        with pytest.raises(RunLockedError, match="another datapipe process"):
            with run_lock(root):
                pass
    assert not (root / LOCK_FILE).exists()
    with run_lock(root):  # free again
        pass


def test_a_dead_holder_on_this_host_is_taken_over_one_elsewhere_is_named(tmp_path: Path) -> None:
    root = as_path(_url())
    root.mkdir(parents=True, exist_ok=True)
    dead = {"host": socket.gethostname(), "pid": 2**22 + 12345, "since": "yesterday", "token": "t"}
    (root / LOCK_FILE).write_bytes(json.dumps(dead).encode())
    with run_lock(root):
        assert json.loads((root / LOCK_FILE).read_bytes())["token"] != "t"
    other = {**dead, "host": "another-node"}
    (root / LOCK_FILE).write_bytes(json.dumps(other).encode())
    with pytest.raises(RunLockedError) as err:
        with run_lock(root):
            pass
    assert "another-node" in str(err.value) and f"delete {root / LOCK_FILE}" in str(err.value)


def test_config_with_a_store_url_keeps_it_and_refuses_credentials(tmp_path: Path) -> None:
    url = _url().rsplit("/", 1)[0]
    cfg = PipelineConfig(run_id="r1", store=url, sources=["docs"], base_dir=tmp_path)
    assert isinstance(cfg.run_dir, UPath) and str(cfg.run_dir) == f"{url}/r1" and not cfg.store_is_local
    snapshot_config(cfg)
    data = json.loads((cfg.run_dir / "config.json").read_text())
    assert data["store"] == url
    again = load_target(str(cfg.run_dir))  # a run folder named by its URL
    assert str(again.run_dir) == str(cfg.run_dir)
    with pytest.raises(ValueError, match="looks like a credential"):
        PipelineConfig(store="s3://b/runs", store_options={"secret": "x"}, sources=["d"])
    with pytest.raises(ValueError, match="client_kwargs.aws_secret_access_key"):
        options = {"client_kwargs": {"aws_secret_access_key": "x"}}
        PipelineConfig(store="s3://b/runs", store_options=options, sources=["d"])


def test_a_url_without_its_filesystem_package_says_what_to_install() -> None:
    with pytest.raises(MissingDependencyError, match="pip install gcsfs"):
        as_path("gs://bucket/runs")
    with pytest.raises((ConfigError, ValueError)):
        as_path("nosuchprotocol://x/y")
