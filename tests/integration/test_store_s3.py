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


def test_sources_in_a_bucket_extract_like_local_files(tmp_path: Path, s3_server: S3Server) -> None:
    """``sources`` may be URLs: a prefix (recursive, dot-names skipped) and a glob. Objects are fetched to a
    temporary file and extracted as the same files on disk are; records and rejects name the URL."""
    from datapipe.records import Document
    from datapipe.runs import load_target
    from tests.conftest import REPO, write_config

    docs = REPO / "examples" / "docs"
    names = sorted(p.name for p in docs.iterdir() if p.is_file())
    fs = s3_server.fs()
    prefix = f"{s3_server.bucket}/sources"
    for name in names:
        fs.put_file(str(docs / name), f"{prefix}/docs/{name}")
    fs.pipe(f"{prefix}/docs/notes.xyz", b"not a document format")
    fs.pipe(f"{prefix}/docs/.hidden.txt", b"a hidden file is skipped, like on disk")
    fs.pipe(f"{prefix}/big/large.txt", b"word " * 400_000)  # 2 MB, over extract.max_text_mb below
    fs.pipe(f"{prefix}/big/.draft.txt", b"a hidden file matched by a glob is skipped too, like on disk")
    options = {"endpoint_url": s3_server.endpoint_url}
    extract_cfg = {"max_text_mb": 1}
    local = write_config(tmp_path / "local.yaml", run_id="l", store="runs", sources=[str(docs)], extract=extract_cfg)
    remote = write_config(
        tmp_path / "remote.yaml",
        run_id="r",
        store="runs",
        store_options=options,
        sources=[f"s3://{prefix}/docs/", f"s3://{prefix}/big/*.txt"],
        extract=extract_cfg,
    )
    for cfg in (local, remote):
        result = CliRunner().invoke(app, ["extract", str(cfg)])
        assert result.exit_code == 0, result.output

    def docs_of(cfg: Path) -> list[tuple[str, str, str]]:
        store = RunStore(load_target(str(cfg)).run_dir)
        return sorted((d.id, Path(d.source_path).name, d.text) for d in store.iter_records("extract", Document))

    assert docs_of(local) and docs_of(remote) == docs_of(local)
    store = RunStore(load_target(str(remote)).run_dir)
    assert all(d.source_path.startswith(f"s3://{prefix}/docs/") for d in store.iter_records("extract", Document))
    rejects = {r.record_id: r.reason for r in store.iter_rejects("extract")}
    assert rejects == {
        f"s3://{prefix}/docs/notes.xyz": "unsupported_format",
        f"s3://{prefix}/big/large.txt": "too_large",
    }

    # unchanged objects are not fetched again: the second run reuses every shard
    result = CliRunner().invoke(app, ["extract", str(remote)])
    assert result.exit_code == 0, result.output
    manifest = store.read_manifest("extract")
    assert manifest is not None
    redone = [sh["key"] for sh in manifest["shards"] if not sh["reused"]]
    assert len(redone) == 1 and redone[0].startswith("sources-")  # only the listing's own rejects, as on disk

    missing = write_config(
        tmp_path / "missing.yaml", run_id="m", store="runs", store_options=options, sources=[f"s3://{prefix}/nothing/"]
    )
    result = CliRunner().invoke(app, ["extract", str(missing)])
    assert result.exit_code == 2 and "matches no object" in result.output
