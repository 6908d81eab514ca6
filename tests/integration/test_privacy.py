"""Private data through the real pipeline: a Faker corpus (English and German) with planted PII, the real
llama.cpp server as the teacher, and the fault proxy in front of it recording every request body as it
arrived (``record_bodies``), so the test reads exactly what the server was sent.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from datapipe.cli import app
from tests.conftest import FAST_GENERATE, TINY_TEACHER_FILTER, LlamaServer, free_port, write_config
from tests.integration.faultproxy import FaultProxy
from tests.pii_corpus import make_corpus

pytestmark = pytest.mark.integration
runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _sent_text(bodies: list[bytes]) -> str:
    """Every message content the server received, one text."""
    out = []
    for b in bodies:
        for m in json.loads(b)["messages"]:
            out.append(m["content"])
    return "\n".join(out)


def _parquet_text(folder: Path) -> str:
    return "\n".join(
        json.dumps(pq.read_table(p).to_pylist(), ensure_ascii=False) for p in sorted(folder.glob("*.parquet"))
    )


def test_pseudonymised_run_sends_and_exports_no_planted_pii(tmp_path: Path, llama_server: LlamaServer) -> None:
    corpus = make_corpus(tmp_path / "docs", n_en=3, n_de=3)
    upstream = llama_server.base_url.removesuffix("/v1")
    with FaultProxy(upstream, free_port(), record_bodies=True) as proxy:
        config = write_config(
            tmp_path / "pipeline.yaml",
            run_id="pii",
            store="runs",
            sources=["docs"],
            teacher={"backend": "openai", "model": "smollm2", "base_url": proxy.base_url, "max_concurrency": 2},
            generate=FAST_GENERATE,
            # the content checks are off as for every run on the tiny teacher (this test is about what is sent)
            filter={**TINY_TEACHER_FILTER, "grounding": {"enabled": False}, "near_dedup": {"enabled": False}},
            privacy={"mode": "pseudonymize"},
        )
        out = _invoke("run", str(config))
    run_dir = tmp_path / "runs" / "pii"
    assert proxy.bodies, "the teacher received no request"
    sent = _sent_text(proxy.bodies)

    for kind in ("email", "phone", "iban", "card"):
        leaked = sorted(v for v in corpus.planted[kind] if v in sent)
        assert not leaked, f"planted {kind} values reached the teacher: {leaked}"
    names = corpus.planted["name"]
    leaked_names = sorted(n for n in names if n in sent)
    assert len(leaked_names) <= 0.05 * len(names), f"{len(leaked_names)}/{len(names)} names sent: {leaked_names}"
    assert "[PERSON_" in sent and "[EMAIL_ADDRESS_" in sent  # pseudonyms, not deletions

    gen = json.loads((run_dir / "samples" / "manifest.json").read_text())
    assert gen["privacy"]["detections"]["EMAIL_ADDRESS"] >= len(corpus.planted["email"])
    assert "privacy pseudonymize, detections" in out

    # the mapping is in the run store only, owner-only, and nowhere in manifests or exports
    mappings = list((run_dir / "privacy").glob("mapping-*.json"))
    assert mappings and all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in mappings)
    mapping = {k: v for p in mappings for k, v in json.loads(p.read_text()).items()}
    assert {v["value"] for v in mapping.values()} >= corpus.planted["email"]
    every_manifest = "\n".join(p.read_text() for p in run_dir.rglob("manifest.json"))
    export_dir = run_dir / "exports" / "chatml"
    exported = _parquet_text(export_dir)
    assert exported
    for kind in ("email", "phone", "iban", "card", "name"):
        for v in corpus.planted[kind]:
            assert v not in exported, f"planted {kind} {v!r} in the export"
            assert v not in every_manifest, f"planted {kind} {v!r} in a manifest"

    # --reidentify. The 135M model seldom repeats a placeholder, so the teacher's replies are scripted through
    # the proxy as a capable teacher would write them: a question and an answer that use the pseudonyms it saw
    person = next(t for t in mapping if t.startswith("[PERSON_") and t in sent)
    email = next(t for t in mapping if t.startswith("[EMAIL_ADDRESS_") and t in sent)
    script = [f"content:What does {person} do in the team?", f"content:{person} handles escalations; write to {email}."]
    with FaultProxy(upstream, free_port(), script, record_bodies=True) as scripted:
        cfg = yaml.safe_load(config.read_text())
        cfg["teacher"]["base_url"] = scripted.base_url
        cfg["generate"] = {**FAST_GENERATE, "max_chunks": 1, "question_params": {"max_new_tokens": 41, "seed": 2}}
        config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        for stage in ("generate", "filter"):
            _invoke(stage, str(config))
        _invoke("export", str(run_dir), "--reidentify")
    assert len(scripted.bodies) == 2
    exported = _parquet_text(export_dir)
    restored = _parquet_text(run_dir / "exports" / "chatml-reidentified")
    assert person in exported and email in exported
    for token in (person, email):
        assert token not in restored and mapping[token]["value"] in restored
        assert mapping[token]["value"] not in exported
    assert stat.S_IMODE(os.stat(run_dir / "exports" / "chatml-reidentified").st_mode) == 0o700


def _non_loopback_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        ip = s.getsockname()[0]
    assert not ip.startswith("127."), "this machine has no non-loopback IPv4 address to test routing with"
    return ip


def test_confidential_source_refused_for_non_local_teacher_before_any_request(
    tmp_path: Path, llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "key-for-a-non-loopback-address")  # the llama.cpp server ignores it
    make_corpus(tmp_path / "docs", n_en=1, n_de=1)
    upstream = llama_server.base_url.removesuffix("/v1")
    with FaultProxy(upstream, free_port(), record_bodies=True, host=_non_loopback_ip()) as proxy:
        config = write_config(
            tmp_path / "pipeline.yaml",
            run_id="conf",
            store="runs",
            sources=[{"path": "docs/de-*.md", "sensitivity": "confidential"}, "docs/en-*.md"],
            teacher={"backend": "openai", "model": "smollm2", "base_url": proxy.base_url},
            generate=FAST_GENERATE,
        )
        result = runner.invoke(app, ["run", str(config)])
        assert result.exit_code != 0
        assert "docs/de-*.md" in result.output and proxy.base_url in result.output
        assert not proxy.bodies and not proxy.requests  # refused before any request

        # the same server listed as local: the run goes through it
        local = write_config(
            tmp_path / "local.yaml",
            run_id="conf",
            store="runs",
            sources=[{"path": "docs/de-*.md", "sensitivity": "confidential"}, "docs/en-*.md"],
            teacher={"backend": "openai", "model": "smollm2", "base_url": proxy.base_url},
            generate={**FAST_GENERATE, "max_chunks": 1},
            filter={"grounding": {"enabled": False}, "languages": []},
            privacy={"local_endpoints": [proxy.base_url]},
        )
        _invoke("generate", str(local))
        assert proxy.bodies
