"""Incremental refresh: a second `datapipe run` over an unchanged corpus, as a fraction of the first.

What is measured: the wall time of the real command `datapipe run pipeline.yaml` (a fresh
process each time, as a scheduler starts it) over a copy of the shared corpus with the
embedded teacher (SmolLM2-135M via llama.cpp, in-process): first over an empty run store,
then again with nothing changed. The teacher calls of each run come from the run's own
record (``last_run.json``: calls that reached the model; cache hits are not calls) and the
generate manifest. Target: the re-run makes zero teacher calls and takes at most 10 % of
the first run.

The runs talk to a `prefect server start` on 127.0.0.1 that the script starts (as served
deployments do); `--ephemeral` instead lets each run start Prefect's temporary local
server itself, which adds its start-up (several seconds) to every run.

Run from the project root:
    .venv/bin/python bench/bench_refresh.py [--max-chunks N] [--ephemeral]
Last line:  RESULT bench_refresh ratio=<rerun/first> rerun_calls=<n> ...

``--edits``: the edit series instead (see bench/refresh_edits.py): in each of several documents of
the shared corpus and long documents joined from them, one sentence inserted, deleted and changed at
the start, middle and end; per edit the teacher requests re-sent vs the ideal (the requests of the
chunks whose text changed) and the samples the new version replaced. Target: re-sent <= 1.5 x ideal
on average, and no edit replacing more than 3 chunks' samples.
    .venv/bin/python bench/bench_refresh.py --edits [--docs N] [--long N]
Last line:  RESULT bench_refresh_edits sent/ideal=<mean ratio> max_replaced_chunks=<n> ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadcheck import report_load  # noqa: E402

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_prefect_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server did not start in 120 s")


def timed_run(cfg: Path, env: dict[str, str]) -> tuple[float, dict[str, object]]:
    t0 = time.perf_counter()
    out = subprocess.run([str(BIN / "datapipe"), "run", str(cfg)], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"datapipe run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    run_dir = cfg.parent / "runs" / "bench"
    last = json.loads((run_dir / "last_run.json").read_text())
    gen = json.loads((run_dir / "samples" / "manifest.json").read_text())
    return seconds, {
        "calls": last["teacher"]["calls"],
        "generate_calls": gen["teacher"]["calls"],
        "cache_hits": gen["teacher"]["cache_hits"],
        "version": last["version"],
        "new_version": last["new_version"],
        "shards": gen["counts"]["shards"],
        "reused": gen["counts"]["shards_reused"],
        "flow_seconds": last["seconds"],
    }


EDIT_DOCS = (
    "norwich-city.txt",
    "example-10k-1p.html",
    "layout-parser-paper-fast.pdf",
    "handbook-1p.docx",
    "ideas-page.html",
)


def edits_main(n_docs: int, n_long: int) -> None:
    """The edit series: per document nine one-sentence edits, each refreshed from the same baseline run."""
    from refresh_edits import StubTeacher, corpus_paragraphs, edit_series, memoize_embeddings

    load_start = os.getloadavg()[0]
    memoize_embeddings()
    corpus = ROOT.parent / "shared" / "corpus" / "docs"
    docs = {Path(n).stem: corpus_paragraphs(corpus / n) for n in EDIT_DOCS[:n_docs]}
    everything = [p for paras in docs.values() for p in paras]
    for i in range(n_long):  # long documents: all of the above joined, in a different order each
        k = len(everything) * i // max(1, n_long)
        docs[f"long-{i + 1}"] = everything[k:] + everything[:k]
    work = Path(tempfile.mkdtemp(prefix="bench-refresh-edits-"))
    results = []
    t0 = time.perf_counter()
    print(f"{'document':<28} {'edit':<15} {'chunks':>6} {'sent':>5} {'ideal':>5} {'replaced':>8} {'of chunks':>9}")
    try:
        with StubTeacher() as teacher:
            for name, paragraphs in docs.items():
                for r in edit_series(name, paragraphs, work, teacher):
                    results.append(r)
                    print(f"{r.doc:<28} {r.op + ' ' + r.where:<15} {r.chunks:>6} {r.sent:>5} {r.ideal:>5} "
                          f"{r.replaced:>8} {r.replaced_chunks:>9}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [r.sent / r.ideal for r in results]
    mean_ratio = sum(ratios) / len(ratios)
    worst = max(results, key=lambda r: r.replaced_chunks)
    print(f"{len(results)} edits in {len(docs)} documents ({time.perf_counter() - t0:.0f} s); "
          f"re-sent {sum(r.sent for r in results)} requests, ideal {sum(r.ideal for r in results)}; "
          f"worst: {worst.doc} {worst.op} {worst.where}: samples of {worst.replaced_chunks} chunks")  # fmt: skip
    report_load(load_start, 1.5)
    print(
        f"RESULT bench_refresh_edits sent/ideal={mean_ratio:.2f} max_sent/ideal={max(ratios):.2f} "
        f"max_replaced_chunks={worst.replaced_chunks} edits={len(results)} "
        "target: sent/ideal<=1.5 max_replaced_chunks<=3"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-chunks", type=int, default=30, help="chunks sent to the teacher in the first run")
    ap.add_argument("--ephemeral", action="store_true", help="no Prefect server: each run starts its own")
    ap.add_argument("--edits", action="store_true", help="the edit series (one-sentence edits) instead")
    ap.add_argument("--docs", type=int, default=len(EDIT_DOCS), help="--edits: corpus documents edited")
    ap.add_argument("--long", type=int, default=2, help="--edits: long documents (the corpus ones joined) edited")
    args = ap.parse_args()
    if args.edits:
        edits_main(args.docs, args.long)
        return
    load_start = os.getloadavg()[0]
    corpus = ROOT.parent / "shared" / "corpus" / "docs"
    if not corpus.is_dir():
        corpus = ROOT / "examples" / "docs"
    tmp = Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    shutil.copytree(corpus, tmp / "docs")
    cfg = tmp / "pipeline.yaml"
    cfg.write_text(
        "run_id: bench\nstore: runs\nsources: [docs]\nteacher: {backend: llamacpp}\n"
        f"generate: {{questions_per_chunk: 1, max_chunks: {args.max_chunks}}}\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home")}
    (tmp / "prefect-home").mkdir()
    server = None
    if not args.ephemeral:
        server, url = start_prefect_server(tmp / "prefect-home")
        env["PREFECT_API_URL"] = url
    try:
        first_s, first = timed_run(cfg, env)
        print(f"first run:  {first_s:7.1f} s  teacher calls {first['calls']}  generate shards {first['shards']}  "
              f"-> {first['version']}")  # fmt: skip
        rerun_s, rerun = timed_run(cfg, env)
        print(f"re-run:     {rerun_s:7.1f} s  teacher calls {rerun['calls']}  cache hits {rerun['cache_hits']}  "
              f"shards reused {rerun['reused']}/{rerun['shards']}  new version: {rerun['new_version']}")  # fmt: skip
        print(
            f"flow time inside the process: first {first['flow_seconds']:.1f} s, re-run {rerun['flow_seconds']:.1f} s"
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    ratio = rerun_s / first_s
    mode = "ephemeral" if args.ephemeral else "server"
    print(
        f"corpus: {corpus} ({len(list((tmp / 'docs').iterdir()))} files), max_chunks {args.max_chunks}, prefect {mode}"
    )
    report_load(load_start, 1.5)
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"RESULT bench_refresh ratio={ratio:.3f} first_s={first_s:.1f} rerun_s={rerun_s:.1f} "
        f"first_calls={first['calls']} rerun_calls={rerun['calls']} prefect={mode} target_ratio<=0.10"
    )


if __name__ == "__main__":
    main()
