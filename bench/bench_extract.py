"""Extraction throughput: datapipe's ``extract_file`` vs ``unstructured`` alone.

What is measured: pages per second over the shared test documents
(``shared/corpus/docs``, or ``examples/docs`` when that folder is missing), first
through ``datapipe.extract.extract_file`` (hashing, the encrypted-PDF check, text
decoding, ``unstructured`` partitioning and joining elements into a ``Document``),
then through ``unstructured.partition.auto.partition(filename=...)`` alone, as a
user would call it (``strategy="fast"``, ``languages=["eng"]`` for PDFs).

Both sides run in the same process on the same files and are credited with the
same page count: datapipe's ``n_pages`` per file (1 when it has none). Files
datapipe rejects count as 0 pages on both sides but are still processed by both.
After one untimed warm-up of each side (model and parser loading), several rounds
run within a time budget. In each round the two sides take turns file by file,
and which side goes first flips every file and every round, so a burst of other
work on a 2-core machine slows both sides alike. The headline figures are totals
over all rounds. Best-of-rounds figures, the median of the per-round ratios and
a per-file breakdown are printed as well.

Then, on the same files (each listed ``--copies`` times so every worker has work): pages per second
extracting them in one process, one file after another, vs through ``datapipe.extract.pool.ExtractPool``
with ``--workers`` processes (default: the machine's cores), as ``datapipe run`` extracts a local run.
The pool's time includes starting its workers (as a run pays it); the fork server that imports the
extractor once is started before the timed rounds. The two sides alternate round by round, and the load
average is printed with every figure: on a shared machine the parallel figure is only as good as the
cores other work left free, so a CPU control follows (the same pure-Python loops in one process vs in a
pool of ``--workers``): the ceiling any pool could reach at that moment.

Run from the project root:  .venv/bin/python bench/bench_extract.py [--rounds N] [--budget-s S]
    [--workers W] [--copies C] [--parallel-rounds R] [--skip-parallel]
Last lines:  RESULT bench_extract ratio=<datapipe/unstructured> ...
             RESULT bench_extract_parallel speedup=<pool/one process> workers=W ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SCARF_NO_ANALYTICS", "true")

T_START = time.perf_counter()
LOAD_WARN = 1.5  # this script alone keeps about one core busy
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadcheck import load_at_start, report_load  # noqa: E402


def docs_dir() -> Path:
    shared = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "docs"
    return shared if shared.is_dir() else ROOT / "examples" / "docs"


def list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=150.0,
        help="start no round that would end later than this many seconds after the script started "
        "(the first round always runs)",
    )
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="pool size (default: cores)")
    ap.add_argument("--copies", type=int, default=3, help="each file listed this many times for the pool part")
    ap.add_argument("--parallel-rounds", type=int, default=2)
    ap.add_argument("--skip-parallel", action="store_true", help="only the datapipe vs unstructured part")
    args = ap.parse_args()

    from unstructured.partition.auto import partition

    from datapipe.config import ExtractConfig
    from datapipe.extract import SourceFile, _ensure_offline_spacy, extract_file
    from datapipe.records import Document, Reject

    _ensure_offline_spacy()
    cfg = ExtractConfig()
    load_start = load_at_start()
    folder = docs_dir()
    files = list_files(folder)
    print(f"documents: {folder} ({len(files)} files)")

    def datapipe_one(p: Path) -> Document | Reject:
        return extract_file(SourceFile(p), cfg)

    def unstructured_one(p: Path) -> list[Any]:
        if p.suffix.lower() == ".pdf":
            return list(partition(filename=str(p), strategy=cfg.pdf_strategy, languages=["eng"]))
        return list(partition(filename=str(p)))

    def run_datapipe() -> list[Document | Reject]:
        return [datapipe_one(p) for p in files]

    def run_unstructured() -> list[list[Any]]:
        return [unstructured_one(p) for p in files]

    t0 = time.perf_counter()
    warm_dp = run_datapipe()
    t_warm_dp = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm_un = run_unstructured()
    t_warm_un = time.perf_counter() - t0
    print(f"warm-up: datapipe {t_warm_dp:.2f}s, unstructured {t_warm_un:.2f}s (untimed)")

    pages = 0
    for p, out, els in zip(files, warm_dp, warm_un, strict=True):
        if isinstance(out, Document):
            n = out.n_pages or 1
            pages += n
            print(f"  {p.name:32s} pages={n:3d} chars={len(out.text):7d} elements={len(els)}")
        else:
            print(f"  {p.name:32s} REJECT {out.reason}: {out.detail}  elements={len(els)}")
    print(f"pages per pass: {pages}")

    per_file: dict[str, dict[str, float]] = {"datapipe": {}, "unstructured": {}}
    t_dp: list[float] = []
    t_un: list[float] = []
    for r in range(args.rounds):
        if r and time.perf_counter() - T_START + (sum(t_dp) + sum(t_un)) / r > args.budget_s:
            print(f"time budget of {args.budget_s:.0f}s would be exceeded: stopping after {r} round(s)")
            break
        times = {"datapipe": 0.0, "unstructured": 0.0}
        for k, p in enumerate(files):
            order = ["datapipe", "unstructured"] if (r + k) % 2 == 0 else ["unstructured", "datapipe"]
            for name in order:
                t0 = time.perf_counter()
                if name == "datapipe":
                    datapipe_one(p)
                else:
                    unstructured_one(p)
                dt = time.perf_counter() - t0
                times[name] += dt
                per_file[name][p.name] = per_file[name].get(p.name, 0.0) + dt
        t_dp.append(times["datapipe"])
        t_un.append(times["unstructured"])
        print(
            f"round {r + 1}: datapipe {times['datapipe']:.2f}s ({pages / times['datapipe']:.2f} pages/s), "
            f"unstructured {times['unstructured']:.2f}s ({pages / times['unstructured']:.2f} pages/s)"
        )

    n = len(t_dp)
    print("per file, seconds per pass (mean over rounds):")
    for p in files:
        d, u = per_file["datapipe"][p.name] / n, per_file["unstructured"][p.name] / n
        print(f"  {p.name:32s} datapipe {d:6.3f}  unstructured {u:6.3f}  datapipe/unstructured time {d / u:5.2f}")
    dp_best, un_best = pages / min(t_dp), pages / min(t_un)
    dp_mean, un_mean = pages * n / sum(t_dp), pages * n / sum(t_un)
    median_ratio = statistics.median(u / d for d, u in zip(t_dp, t_un, strict=True))
    print(
        f"datapipe:     best {dp_best:.2f} pages/s, mean {dp_mean:.2f} pages/s ({pages * n} pages in {sum(t_dp):.2f}s)"
    )
    print(
        f"unstructured: best {un_best:.2f} pages/s, mean {un_mean:.2f} pages/s ({pages * n} pages in {sum(t_un):.2f}s)"
    )
    print(
        f"ratio datapipe/unstructured: best-of {dp_best / un_best:.2f}, mean {dp_mean / un_mean:.2f}, "
        f"median of rounds {median_ratio:.2f}"
    )
    load_end = report_load(load_start, LOAD_WARN)
    print(
        f"RESULT bench_extract ratio={dp_mean / un_mean:.2f} datapipe_pages_per_s={dp_mean:.2f} "
        f"unstructured_pages_per_s={un_mean:.2f} best_ratio={dp_best / un_best:.2f} median_ratio={median_ratio:.2f} "
        f"files={len(files)} pages={pages} rounds={n} load={load_start:.2f}/{load_end:.2f}"
    )
    if not args.skip_parallel:
        parallel(files, cfg, pages, args.workers, args.copies, args.parallel_rounds)
    return 0


def parallel(files: list[Path], cfg: Any, pages: int, workers: int, copies: int, rounds: int) -> None:
    """Pages/s through a process pool of ``workers`` vs one process, on the same list of files."""
    from datapipe.extract import SourceFile, extract_file
    from datapipe.extract.pool import ExtractPool

    listed = [SourceFile(p) for p in files] * copies
    total_pages = pages * copies
    load0 = load_at_start()

    def one_process() -> float:
        t0 = time.perf_counter()
        for src in listed:
            extract_file(src, cfg)
        return time.perf_counter() - t0

    def pool() -> float:
        t0 = time.perf_counter()
        with ExtractPool(cfg, [(src, None) for src in listed], workers) as ex:
            for src in listed:
                ex.result(src)
        return time.perf_counter() - t0

    warm = pool()  # starts the fork server (imports the extractor once); later pools fork from it
    print(f"pool warm-up (fork server start and one pass): {warm:.2f}s, untimed")
    t_one: list[float] = []
    t_pool: list[float] = []
    for r in range(rounds):
        for name in ["one", "pool"] if r % 2 == 0 else ["pool", "one"]:
            dt = one_process() if name == "one" else pool()
            (t_one if name == "one" else t_pool).append(dt)
            load = os.getloadavg()[0]
            label = "one process" if name == "one" else f"pool of {workers}"
            print(
                f"round {r + 1}: {label:12s} {dt:6.2f}s  {total_pages / dt:6.2f} pages/s  "
                f"(1-minute load average now {load:.2f} on {os.cpu_count()} cores)"
            )
    one_rate = total_pages * len(t_one) / sum(t_one)
    pool_rate = total_pages * len(t_pool) / sum(t_pool)
    control = cpu_control(workers)
    load1 = report_load(load0, LOAD_WARN + workers)
    print(
        f"RESULT bench_extract_parallel speedup={pool_rate / one_rate:.2f} workers={workers} "
        f"one_process_pages_per_s={one_rate:.2f} pool_pages_per_s={pool_rate:.2f} files={len(listed)} "
        f"pages={total_pages} rounds={rounds} cpu_control_speedup={control:.2f} load={load0:.2f}/{load1:.2f}"
    )


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i * i
    return x


def cpu_control(workers: int, n: int = 8_000_000) -> float:
    """What parallelism the machine gives right now: the same pure-Python loops, ``workers`` of them,
    one after another in this process vs at once in a pool of ``workers`` processes. On an idle machine
    this is close to ``workers``; on a shared one (other users' load, Linux autogroup scheduling, which
    shares one CPU weight among a session's processes) it can be near 1, and no pool can beat it."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    for _ in range(workers):
        _spin(n)
    serial = time.perf_counter() - t0
    with ProcessPoolExecutor(workers) as ex:
        list(ex.map(_spin, [1] * workers))  # start the workers before the clock
        t0 = time.perf_counter()
        list(ex.map(_spin, [n] * workers))
        par = time.perf_counter() - t0
    print(
        f"CPU control: {workers} pure-Python loops in one process {serial:.2f}s, in {workers} processes "
        f"{par:.2f}s, speed-up {serial / par:.2f} (1-minute load average now {os.getloadavg()[0]:.2f})"
    )
    return serial / par


if __name__ == "__main__":
    sys.exit(main())
