"""A whole run with its run store on ``s3://`` (an S3 API on 127.0.0.1, see the ``s3_server`` fixture for
what is a stand-in) gives what the same run gives in a local folder: samples, rejects, the export, the
published version and the report all live in the bucket, and the lock works across processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.fsio import read_table
from datapipe.records import Sample
from datapipe.store import LOCK_FILE, RunStore
from tests.conftest import S3Server
from tests.integration.smallrun import make_small_run

pytestmark = pytest.mark.integration


def _view(store: RunStore) -> dict:
    return {
        "kept": sorted((s.id, s.instruction, s.response) for s in store.iter_records("filter", Sample)),
        "rejects": sorted(
            (r.stage, r.record_id, r.reason)
            for st in ("extract", "chunk", "generate", "filter", "export")
            for r in store.iter_rejects(st)
        ),
        "export": sorted(
            json.dumps(r, sort_keys=True)
            for r in read_table(store.root / "exports" / "chatml" / "train.parquet").to_pylist()
        ),
    }


def test_a_run_on_s3_matches_the_local_run(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> None:
    local = RunStore(make_small_run(tmp_path_factory, "s3-local"))
    url = f"s3://{s3_server.bucket}/runs"
    remote = RunStore(make_small_run(tmp_path_factory, "s3-remote", url, endpoint_url=s3_server.endpoint_url))
    assert str(remote.root) == f"{url}/small"
    a, b = _view(local), _view(remote)
    assert a["kept"], "the local run kept nothing: the comparison would be empty"
    assert a == b

    fs = s3_server.fs()
    names = fs.find(f"{s3_server.bucket}/runs/small")
    assert not [n for n in names if n.endswith(".tmp")], "temporary objects left in the bucket"
    assert f"{s3_server.bucket}/runs/small/samples/manifest.json" in names
    assert f"{s3_server.bucket}/runs/small/config.json" in names
    # the published version lives in the bucket too (an object store has no symlink: LATEST is the pointer)
    assert fs.cat(f"{s3_server.bucket}/runs/small/versions/LATEST").decode().strip() == "v0001"
    version = json.loads(fs.cat(f"{s3_server.bucket}/runs/small/versions/v0001/version.json"))
    assert version["samples"]["total"] == len(b["kept"])
    assert not fs.exists(f"{s3_server.bucket}/runs/small/{LOCK_FILE}")  # released after the run


def test_report_and_lock_on_s3(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> None:
    run = make_small_run(
        tmp_path_factory, "s3-lock", f"s3://{s3_server.bucket}/lockruns", endpoint_url=s3_server.endpoint_url
    )
    config = str(Path(tmp_path_factory.getbasetemp()) / "s3-lock0" / "pipeline.yaml")
    assert Path(config).is_file()
    fs = s3_server.fs()
    key = f"{s3_server.bucket}/lockruns/small"

    result = CliRunner().invoke(app, ["report", config])
    assert result.exit_code == 0, result.output
    html = fs.cat(f"{key}/report.html").decode()
    assert "datapipe report" in html and str(run) in html

    # a driver on another machine holds the run: a second one is refused, told who and what to delete
    fs.pipe(f"{key}/{LOCK_FILE}", json.dumps({"host": "node-7", "pid": 4242, "since": "now", "token": "x"}).encode())
    result = CliRunner().invoke(app, ["extract", config])
    assert result.exit_code == 2, result.output
    assert "node-7" in result.output and LOCK_FILE in result.output
    fs.rm(f"{key}/{LOCK_FILE}")
    result = CliRunner().invoke(app, ["extract", config])
    assert result.exit_code == 0, result.output
