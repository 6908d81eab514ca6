"""scripts/argilla/stack.py as a user runs it: started as a process, stopped by a signal or by its parent dying.

Real processes throughout: the script starts Debian's redis-server, osmem-server and argilla-server; the
test finds them as the script's children in /proc and checks that none is left after the stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration
STACK = REPO / "scripts" / "argilla" / "stack.py"


def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent has not reaped it yet


def _start(cmd: list[str], workdir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        cmd + ["--port", "0", "--workdir", str(workdir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    return proc


def _wait_ready(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Argilla http://127.0.0.1:"):
            return line
    proc.kill()
    pytest.fail("stack.py did not report a running server:\n" + "".join(lines)[-3000:])


def _wait_gone(pids: set[int], timeout: float = 30) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return set()
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "?"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_process(sig: signal.Signals, tmp_path: Path) -> None:
    proc = _start([sys.executable, str(STACK)], tmp_path / "stack")
    _wait_ready(proc)
    servers = _children(proc.pid)
    names = {_cmdline(p) for p in servers}
    assert len(servers) == 3, f"expected redis, osmem and argilla under stack.py, found {names}"
    assert any("redis-server" in n for n in names) and any("app.py" in n for n in names), names
    proc.send_signal(sig)
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    left = _wait_gone(servers)
    assert not left, f"left running after {sig.name}: {[_cmdline(p) for p in left]}"


def test_the_stack_stops_when_its_parent_dies(tmp_path: Path) -> None:
    """A parent (here a shell) starts stack.py and is then killed with SIGKILL: stack.py notices and stops all."""
    shell = subprocess.Popen(
        ["bash", "-c", f"{sys.executable} {STACK} --port 0 --workdir {tmp_path / 'stack'} & wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _wait_ready(shell)
    (stack_pid,) = _children(shell.pid)
    servers = _children(stack_pid)
    assert len(servers) == 3, [_cmdline(p) for p in servers]
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    try:
        left = _wait_gone({stack_pid, *servers})
        assert not left, f"left running after the parent died: {[_cmdline(p) for p in left]}"
    finally:
        for pid in (stack_pid, *servers):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_killing_the_script_outright_still_stops_the_servers(tmp_path: Path) -> None:
    """SIGKILL gives stack.py no chance to clean up; each server was started to get SIGTERM when it dies."""
    proc = _start([sys.executable, str(STACK)], tmp_path / "stack")
    _wait_ready(proc)
    servers = _children(proc.pid)
    assert len(servers) == 3
    proc.kill()
    proc.wait()
    try:
        left = _wait_gone(servers)
        assert not left, f"left running after SIGKILL: {[_cmdline(p) for p in left]}"
    finally:
        for pid in servers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
