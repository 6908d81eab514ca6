"""A fault-injecting reverse proxy for OpenAI-compatible servers (a test fixture).

It sits between datapipe and a real llama.cpp server on 127.0.0.1. It speaks HTTP/1.1 itself
on asyncio streams, so it can misbehave the way real servers and networks do, down to the
socket: reset a connection, cut a body short, hang. Each ``POST`` takes its fault from, in order:

1. ``script``: the next entry, while any are left (scripted tests);
2. ``max_in_flight``: a 429 (fault ``limit``) when that many requests are already being
   served, as a concurrency-limited API does (``None``: no limit; settable while running);
3. ``fault_rate``: with this probability, a fault from ``faults``, dealt from a shuffled deck
   (reshuffled when used up), so that a short run still sees every kind; seeded: the same
   seed gives the same sequence of draws, whatever the order requests arrive in;

and otherwise the request is forwarded unchanged. With ``refuse_after=N`` the proxy goes down after N
requests: the next one is reset (fault ``down``), the listening socket closes, and every later connection
is refused, as when a server stops mid-run. Faults:

``429``        429 with ``Retry-After: <retry_after>`` and a JSON error body
``500`` ``503`` ``401``  a JSON error body with that status
``502``        an HTML error page, as a gateway sends it
``hang``       no answer for ``hang_s`` seconds (past the client's timeout), then the connection closes
``reset``      the connection is reset (TCP RST) without an answer
``truncated``  200 with the upstream's real answer cut in half: a complete HTTP message, broken JSON
``cut``        200 whose headers promise the full body; half of it is sent, then the connection closes
``non_json``   200 with ``Content-Type: text/html`` and an HTML page instead of a completion
``garbage``    a well-formed completion whose content is useless for the task (empty, noise,
               words without a question, ...)
``content:<text>``  (scripts only) a well-formed completion whose content is ``<text>``
``ok``         forwarded unchanged

Every request is recorded in ``arrivals`` (time, fault) and ``requests`` (time, fault, body
hash, ``Authorization`` header), so tests can check what reached the server and when; with
``record_bodies=True`` also the bodies themselves (``bodies``), to check what text reached it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import httpx

RANDOM_FAULTS = ("429", "500", "502", "503", "hang", "reset", "truncated", "cut", "non_json", "garbage")
GARBAGE = (
    "",
    "}{][ ,,, ]]",
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor",
    "\u00ff\u00fe\u0000\u0001 \ufffd\ufffd",
    '{"questions": null}',
    "asdf qwerty zxcv asdf qwerty zxcv asdf qwerty zxcv",
)
_REASONS = {200: "OK", 401: "Unauthorized", 429: "Too Many Requests", 500: "Internal Server Error"}
_REASONS |= {502: "Bad Gateway", 503: "Service Unavailable", 400: "Bad Request", 404: "Not Found"}


@dataclass(frozen=True)
class Arrival:
    t: float
    fault: str
    body_sha: str
    authorization: str


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        port: int,
        script: list[str] | None = None,
        retry_after: float = 1.0,
        *,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = RANDOM_FAULTS,
        seed: int = 0,
        hang_s: float = 10.0,
        max_in_flight: int | None = None,
        refuse_after: int | None = None,
        record_bodies: bool = False,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.script = deque(script or [])
        self.retry_after = retry_after
        self.fault_rate = fault_rate
        self.faults = faults
        self.rng = random.Random(seed)
        self._deck: list[str] = []
        self.hang_s = hang_s
        self.max_in_flight = max_in_flight
        self.refuse_after = refuse_after
        self._server: asyncio.Server | None = None
        self.arrivals: list[tuple[float, str]] = []
        self.requests: list[Arrival] = []
        self.record_bodies = record_bodies
        self.host = host
        self.bodies: list[bytes] = []  # with record_bodies: every POST body, byte for byte, as it arrived
        self.forwarded = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def counts(self) -> Counter[str]:
        return Counter(f for _, f in self.arrivals)

    def retry_after_violations(self) -> list[tuple[float, float]]:
        """(gap, retry_after) for each 429 whose same request came back sooner than Retry-After said."""
        out = []
        for i, a in enumerate(self.requests):
            if a.fault not in ("429", "limit"):
                continue
            later = next((b for b in self.requests[i + 1 :] if b.body_sha == a.body_sha), None)
            if later is not None and later.t - a.t < self.retry_after - 0.05:
                out.append((round(later.t - a.t, 3), self.retry_after))
        return out

    def _choose(self) -> str:
        if self.script:
            return self.script.popleft()
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            return "limit"
        if self.fault_rate and self.rng.random() < self.fault_rate:
            if not self._deck:
                self._deck = list(self.faults)
                self.rng.shuffle(self._deck)
            return self._deck.pop()
        return "ok"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._client = httpx.AsyncClient(timeout=300)
        server = self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._client.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass  # the client went away, or the proxy is stopping
        finally:
            self._conns.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request on a kept-alive connection; False when the connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method != "POST":
            status, ctype, data = await self._forward(method, target, headers, body)
            await self._send(writer, status, data, ctype)
            return True
        down = self.refuse_after is not None and len(self.arrivals) >= self.refuse_after
        fault = "down" if down else self._choose()
        now = time.monotonic()
        self.arrivals.append((now, fault))
        self.requests.append(Arrival(now, fault, hashlib.sha256(body).hexdigest(), headers.get("authorization", "")))
        if self.record_bodies:
            self.bodies.append(body)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._fault(fault, writer, method, target, headers, body)
        finally:
            self.in_flight -= 1

    async def _fault(
        self, fault: str, writer: asyncio.StreamWriter, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> bool:
        if fault == "down":  # stop listening (later connections are refused) and drop this one
            if self._server is not None and self._server.is_serving():
                self._server.close()
            writer.transport.abort()
            return False
        if fault in ("429", "limit"):
            msg = {"error": {"message": "rate limited", "type": "rate_limit_exceeded"}}
            await self._send(writer, 429, json.dumps(msg).encode(), extra={"Retry-After": f"{self.retry_after:g}"})
            return True
        if fault in ("500", "503", "401"):
            msg = {"error": {"message": f"injected {fault}"}}
            await self._send(writer, int(fault), json.dumps(msg).encode())
            return True
        if fault == "502":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            await self._send(writer, 502, page, "text/html")
            return True
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
            writer.close()
            return False
        if fault == "reset":
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if fault == "non_json":
            page = b"<!doctype html><html><body><p>Please enable JavaScript to continue.</p></body></html>"
            await self._send(writer, 200, page, "text/html; charset=utf-8")
            return True
        if fault == "garbage" or fault.startswith("content:"):
            text = fault.removeprefix("content:") if fault != "garbage" else self.rng.choice(GARBAGE)
            await self._send(writer, 200, json.dumps(_completion(text)).encode())
            return True
        status, ctype, data = await self._forward(method, target, headers, body)
        if fault == "truncated":
            await self._send(writer, status, data[: len(data) // 2], ctype)
            return True
        if fault == "cut":
            head = f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
            head += f"Content-Length: {len(data)}\r\n\r\n"
            writer.write(head.encode() + data[: len(data) // 2])
            await writer.drain()
            writer.close()
            return False
        self.forwarded += 1
        await self._send(writer, status, data, ctype)
        return True

    async def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        skip = ("host", "content-length", "connection", "accept-encoding", "transfer-encoding")
        fwd = {k: v for k, v in headers.items() if k not in skip}
        resp = await self._client.request(method, f"{self.upstream}{target}", content=body, headers=fwd)
        return resp.status_code, resp.headers.get("content-type", "application/json"), resp.content

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        data: bytes,
        ctype: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
        head += f"Content-Length: {len(data)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"fault proxy did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=15)


def _completion(text: str) -> dict[str, object]:
    return {
        "id": "injected",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "injected",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
