"""The instruction pipeline through a misbehaving teacher: the fault proxy in front of a real llama.cpp server.

At a 30 % fault rate (429 with Retry-After, 5xx, hangs past the client timeout, resets, truncated,
cut and non-JSON bodies, garbage completions) `datapipe run` must finish with every chunk
accounted for, no duplicate samples, Retry-After respected, the faults in the summary and the
API key nowhere in what the run wrote or logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from datapipe.cli import app
from datapipe.config import GenerationParams, TeacherConfig
from datapipe.records import Chunk, Sample
from datapipe.store import RunStore
from datapipe.teacher import Teacher
from tests.conftest import FAST_GENERATE, TINY_TEACHER_FILTER, LlamaServer, free_port, write_config
from tests.integration.faultproxy import RANDOM_FAULTS, FaultProxy

pytestmark = pytest.mark.integration
CLIENT_FAULTS = {"429": "HTTP 429", "500": "HTTP 500", "502": "HTTP 502", "503": "HTTP 503"}


def texts_holding(root: Path, needle: str) -> list[str]:
    """Files under ``root`` whose content holds ``needle``: parquet and SQLite are read back, not grepped,
    since their compression could hide a string from a byte search."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            text = json.dumps(pq.read_table(path).to_pylist(), default=str)
        elif data.startswith(b"SQLite format 3"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                text = "\n".join(db.iterdump())
        else:
            text = data.decode("utf-8", errors="replace")
        if needle in text or needle.encode() in data:
            hits.append(str(path))
    return hits


@pytest.fixture(scope="module")
def faulty_run(
    tmp_path_factory: pytest.TempPathFactory, corpus_docs: Path, llama_server: LlamaServer
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("faults")
    docs = tmp / "docs"
    docs.mkdir()
    for name in ["ideas-page.html", "handbook-1p.docx"]:
        shutil.copy(corpus_docs / name, docs / name)
    secret = "sk-fault-test-" + secrets.token_hex(16)
    upstream = llama_server.base_url.removesuffix("/v1")
    # the first request is a 429, so every run sees at least one Retry-After; then 30 % random faults
    proxy = FaultProxy(upstream, free_port(), ["429"], retry_after=1.0, fault_rate=0.3, seed=4, hang_s=12)
    cfg = write_config(
        tmp / "pipeline.yaml",
        run_id="faulty",
        store="runs",
        sources=["docs"],
        teacher={
            "backend": "openai",
            "model": "smollm2",
            "base_url": proxy.base_url,
            "api_key_env": "DATAPIPE_FAULT_TEST_KEY",
            "max_concurrency": 3,
            "timeout_s": 10,
            "max_retries": 6,
            "backoff_base_s": 0.1,
            "backoff_max_s": 1.0,
        },
        generate={**FAST_GENERATE, "max_chunks": 6},
        filter={"grounding": {"enabled": False}, **TINY_TEACHER_FILTER},
    )
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(level=logging.DEBUG)
    # the HTTP and SDK loggers at DEBUG, kept to themselves (Prefect's handlers would print them);
    # Prefect's and the root logger's records as they are configured
    verbose = [logging.getLogger(n) for n in ("openai", "httpx", "httpcore", "distilabel", "datapipe")]
    saved = [(lg.level, lg.propagate) for lg in verbose]
    for lg in verbose:
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    loggers = [*verbose, logging.getLogger(), logging.getLogger("prefect")]
    for lg in loggers:
        lg.addHandler(handler)
    os.environ["DATAPIPE_FAULT_TEST_KEY"] = secret
    try:
        with proxy:
            result = CliRunner().invoke(app, ["run", str(cfg)], catch_exceptions=False)
    finally:
        del os.environ["DATAPIPE_FAULT_TEST_KEY"]
        for lg in loggers:
            lg.removeHandler(handler)
        for lg, (level, propagate) in zip(verbose, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate
    return {
        "result": result,
        "proxy": proxy,
        "store": RunStore(tmp / "runs" / "faulty"),
        "tmp": tmp,
        "secret": secret,
        "logs": records,
    }


def test_run_completes_with_every_chunk_accounted_for(faulty_run: dict[str, Any]) -> None:
    result, store = faulty_run["result"], faulty_run["store"]
    assert result.exit_code == 0, result.output
    proxy: FaultProxy = faulty_run["proxy"]
    injected = {f for _, f in proxy.arrivals} - {"ok"}
    assert len(injected) >= 5, f"too few kinds of fault were injected to mean anything: {proxy.counts()}"
    chunks = {c.id for c in store.iter_records("chunk", Chunk)}
    samples = list(store.iter_records("generate", Sample))
    rejects = list(store.iter_rejects("generate"))
    assert chunks and samples
    covered = {s.provenance.chunk_id for s in samples}
    for r in rejects:
        assert r.reason and r.detail, r
        covered.add(r.record_id if r.record_id in chunks else json.loads(r.payload)["chunk_id"])
    assert covered == chunks
    ids = [s.id for s in samples]
    assert len(ids) == len(set(ids)), "duplicate sample ids"
    pairs = [(s.provenance.chunk_id, s.instruction) for s in samples]
    assert len(pairs) == len(set(pairs)), "the same question of the same chunk was answered twice"
    kept = list(store.iter_records("filter", Sample))
    assert len(kept) + len(list(store.iter_rejects("filter"))) == len(samples)


def test_retries_respected_retry_after(faulty_run: dict[str, Any]) -> None:
    proxy: FaultProxy = faulty_run["proxy"]
    n_429 = proxy.counts()["429"]
    assert n_429 >= 1
    assert proxy.retry_after_violations() == []
    teacher = faulty_run["store"].read_manifest("generate")["teacher"]
    assert teacher["retry_after_count"] == n_429 and teacher["retry_after_max_s"] == 1.0


def test_summary_reports_retries_and_faults(faulty_run: dict[str, Any]) -> None:
    proxy: FaultProxy = faulty_run["proxy"]
    seen = proxy.counts()
    teacher = faulty_run["store"].read_manifest("generate")["teacher"]
    faults = teacher["faults"]
    for kind, client_kind in CLIENT_FAULTS.items():
        assert faults.get(client_kind, 0) == seen[kind], (kind, faults, seen)
    assert faults.get("timeout", 0) >= seen["hang"]
    transport = seen["reset"] + seen["cut"]
    assert sum(n for k, n in faults.items() if k.startswith("connection error")) >= transport
    assert (
        sum(n for k, n in faults.items() if k.startswith("malformed response")) >= seen["truncated"] + seen["non_json"]
    )
    errors = sum(seen[k] for k in RANDOM_FAULTS if k != "garbage")
    assert teacher["retries"] + teacher["failures"] == sum(faults.values()) >= errors
    assert teacher["concurrency"]["start"] == 3
    out = faulty_run["result"].output
    assert f"HTTP 429: {seen['429']}" in out and "Retry-After honoured" in out
    row = next(line for line in out.splitlines() if line.startswith("│ generate") and line.count("│") == 9)
    assert row.split("│")[-3].strip() == str(teacher["retries"])  # the teacher table's retries column


def test_api_key_never_leaks(faulty_run: dict[str, Any]) -> None:
    secret = faulty_run["secret"]
    proxy: FaultProxy = faulty_run["proxy"]
    assert all(a.authorization == f"Bearer {secret}" for a in proxy.requests), "the key was not sent: test is moot"
    assert texts_holding(faulty_run["tmp"], secret) == []
    prefect_home = Path(os.environ["PREFECT_HOME"])
    assert texts_holding(prefect_home, secret) == []
    assert secret not in faulty_run["result"].output
    logs = faulty_run["logs"]
    assert logs, "no log records were captured: test is moot"
    assert not [line for line in logs if secret in line]


def test_adaptive_concurrency_follows_a_rate_limit(llama_server: LlamaServer) -> None:
    """Against a server that takes 2 requests at a time, AIMD sends far fewer requests into 429s than a fixed 6."""
    upstream = llama_server.base_url.removesuffix("/v1")
    params = GenerationParams(max_new_tokens=6, temperature=0.0, seed=1)
    prompts = [[{"role": "user", "content": f"Give one word for the number {i}."}] for i in range(18)]
    seen: dict[bool, tuple[int, dict[str, Any]]] = {}
    for adaptive in (True, False):
        with FaultProxy(upstream, free_port(), retry_after=0.3, max_in_flight=2) as proxy:
            cfg = TeacherConfig(
                backend="openai",
                model="smollm2",
                base_url=proxy.base_url,
                cache=False,
                max_concurrency=6,
                max_retries=20,
                adaptive_concurrency=adaptive,
            )
            teacher = Teacher(cfg)

            async def go(teacher: Teacher = teacher) -> None:
                async with teacher.session():
                    await asyncio.gather(*(teacher.complete(m, params) for m in prompts))

            asyncio.run(go())
        assert teacher.stats.failures == 0 and proxy.forwarded == len(prompts)
        assert proxy.retry_after_violations() == []
        seen[adaptive] = (proxy.counts()["limit"], teacher.stats.concurrency)
    (limited_aimd, conc), (limited_fixed, fixed) = seen[True], seen[False]
    assert conc["decreases"] >= 1 and conc["min"] <= 2 and conc["max"] == 6
    assert fixed["decreases"] == 0 and fixed["final"] == 6
    assert limited_aimd < limited_fixed, (limited_aimd, limited_fixed)
