"""Starts a real Argilla 2.8.0 server on 127.0.0.1 for tests and local trials (standard library only).

Three processes: Debian's ``redis-server``, ``osmem-server`` (an in-memory OpenSearch emulator from PyPI,
the stand-in for OpenSearch, which cannot be installed here) and argilla-server itself (scripts/argilla/app.py,
run in its own virtual environment .venv-argilla because it pins an old typer/click). The database is SQLite.
The default owner is created with argilla-server's own CLI: user ``argilla``, API key ``argilla.apikey``.

    python scripts/argilla/stack.py            # serves http://127.0.0.1:6900 until Ctrl-C
    python scripts/argilla/stack.py --port 0   # any free port

It stops all three processes on Ctrl-C (SIGINT), on SIGTERM (``kill``, a service manager, a container
stop) and when the process that started it dies; on Linux each server is also told to exit if this script
itself is killed outright (SIGKILL), so no redis-server or Argilla app is left behind.

Set up .venv-argilla and redis-server first: bash scripts/argilla/setup.sh (scripts/setup.sh does it).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("DATAPIPE_ARGILLA_VENV", ROOT / ".venv-argilla"))
API_KEY = "argilla.apikey"
USERNAME = "argilla"
PASSWORD = "datapipe-owner"


_PR_SET_PDEATHSIG = 1
try:  # looked up once here: the child between fork and exec should not load libraries
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _PRCTL = None


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (prctl PR_SET_PDEATHSIG); a no-op
    elsewhere. Used in each server's child process and in main(), so a killed parent leaves nothing behind."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ArgillaStack:
    """A running Argilla stack. ``url``/``api_key`` are what datapipe's curate config needs."""

    workdir: Path
    url: str = ""
    api_key: str = API_KEY
    username: str = USERNAME
    password: str = PASSWORD
    search_url: str = ""
    redis_url: str = ""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            cmd,
            stdout=kw.pop("stdout", out),
            stderr=out,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
            **kw,
        )
        self.procs[name] = proc
        return proc

    def start(self, port: int = 0, startup_timeout: float = 120.0) -> ArgillaStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        python = VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{python} is missing: run `bash scripts/argilla/setup.sh` first")
        redis_bin = shutil.which("redis-server")
        if not redis_bin:
            raise RuntimeError(
                "redis-server is missing: run `bash scripts/argilla/setup.sh` (apt-get install redis-server)"
            )
        osmem_bin = (
            VENV
            / "lib"
            / next(p.name for p in (VENV / "lib").iterdir())
            / "site-packages/osmem_server/bin/osmem-server"
        )

        redis_port = free_port()
        self._spawn(
            "redis",
            [
                redis_bin,
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
        )
        self.redis_url = f"redis://127.0.0.1:{redis_port}/0"

        osmem = self._spawn(
            "osmem",
            [str(osmem_bin), "--addr", f"127.0.0.1:{free_port()}", "--no-ja"],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        ready: dict = {}

        def read_ready() -> None:
            assert osmem.stdout is not None
            for line in osmem.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and "url" in msg:
                    ready.update(msg)
                    break
            for _ in osmem.stdout:  # keep draining so the emulator never blocks on a full pipe
                pass

        threading.Thread(target=read_ready, daemon=True).start()
        deadline = time.monotonic() + 30
        while not ready and time.monotonic() < deadline and osmem.poll() is None:
            time.sleep(0.05)
        if not ready:
            self.stop()
            raise RuntimeError(f"osmem-server did not start: {self.log('osmem')[-2000:]}")
        self.search_url = ready["url"]

        env = {
            **os.environ,
            "ARGILLA_HOME_PATH": str(self.workdir / "home"),
            "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{self.workdir / 'argilla.db'}",
            "ARGILLA_REDIS_URL": self.redis_url,
            "ARGILLA_SEARCH_ENGINE": "opensearch",
            "ARGILLA_ELASTICSEARCH": self.search_url,
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        for args in (
            ["database", "migrate"],
            ["database", "users", "create_default", "--api-key", self.api_key, "--password", self.password],
        ):
            done = subprocess.run([str(python), "-m", "argilla_server", *args], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                self.stop()
                raise RuntimeError(f"argilla_server {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")

        port = port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        server = self._spawn(
            "argilla", [str(python), str(ROOT / "scripts/argilla/app.py"), "--port", str(port)], env=env
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                self.stop()
                raise RuntimeError(f"argilla-server exited ({server.returncode}):\n{self.log('argilla')[-4000:]}")
            try:
                req = urllib.request.Request(f"{self.url}/api/v1/me", headers={"X-Argilla-Api-Key": self.api_key})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"argilla-server not ready after {startup_timeout:.0f} s:\n{self.log('argilla')[-4000:]}")

    def stop(self) -> None:
        for name in ("argilla", "osmem", "redis"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> ArgillaStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM/SIGHUP handler, so the stack unwinds as on Ctrl-C."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=6900, help="argilla port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--workdir", type=Path, help="keep the database and logs here (default: a temp folder)")
    args = parser.parse_args()
    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="datapipe-argilla-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stack = ArgillaStack(workdir)
    stopping = threading.Event()
    try:
        stack.start(port=args.port)
        # once running, a signal only sets a flag: an exception raised between the bytecodes of Popen.poll() can
        # leave the Popen's wait lock taken, and stop()'s wait() then blocks for ever (seen once under load)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: stopping.set())
        print(f"Argilla {stack.url}  (user {stack.username} / {stack.password}, API key {stack.api_key})", flush=True)
        print(f"logs and database in {workdir}; Ctrl-C or SIGTERM stops", flush=True)
        while not stopping.is_set() and all(p.poll() is None for p in stack.procs.values()) and os.getppid() == parent:
            stopping.wait(1)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the cleanup
            signal.signal(sig, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    main()
