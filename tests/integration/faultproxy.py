"""A reverse proxy for OpenAI-compatible servers that injects faults from a script.

It sits between datapipe and a real llama.cpp server on 127.0.0.1: each incoming chat
request takes the next fault from the script ("429", "500", "503", "401", "ok", or
"content:<text>" for a well-formed completion whose content is <text>); once
the script is used up every request is forwarded unchanged.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class FaultProxy:
    def __init__(self, upstream: str, port: int, script: list[str], retry_after: float = 1.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.script = deque(script)
        self.retry_after = retry_after
        self.arrivals: list[tuple[float, str]] = []
        self.forwarded = 0
        app = Starlette(routes=[Route("/v1/{path:path}", self.handle, methods=["GET", "POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def handle(self, request: Request) -> Response:
        fault = self.script.popleft() if self.script else "ok"
        self.arrivals.append((time.monotonic(), fault))
        if fault == "429":
            return JSONResponse(
                {"error": {"message": "rate limited"}}, status_code=429, headers={"Retry-After": str(self.retry_after)}
            )
        if fault.startswith("content:"):
            text = fault.removeprefix("content:")
            return JSONResponse(
                {
                    "id": "injected",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "injected",
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                }
            )
        if fault in ("500", "502", "503", "401"):
            return JSONResponse({"error": {"message": f"injected {fault}"}}, status_code=int(fault))
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with httpx.AsyncClient(timeout=120) as client:
            upstream = await client.request(
                request.method, f"{self.upstream}/v1/{request.path_params['path']}", content=body, headers=headers
            )
        self.forwarded += 1
        return Response(
            upstream.content, status_code=upstream.status_code, media_type=upstream.headers.get("content-type")
        )

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("fault proxy did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def run_sync(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
