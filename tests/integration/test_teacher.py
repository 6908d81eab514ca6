"""The teacher against a real llama.cpp server (OpenAI-compatible) on 127.0.0.1, and in-process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from datapipe.config import GenerationParams, TeacherConfig
from datapipe.errors import TeacherError
from datapipe.teacher import Teacher
from tests.conftest import LlamaServer, free_port
from tests.integration.faultproxy import FaultProxy

MESSAGES = [{"role": "user", "content": "Name one colour of the rainbow."}]
PARAMS = GenerationParams(max_new_tokens=16, temperature=0.0, seed=3)

pytestmark = pytest.mark.integration


def _complete(teacher: Teacher, messages: list[dict[str, str]] = MESSAGES) -> object:
    async def go() -> object:
        async with teacher.session():
            return await teacher.complete(messages, PARAMS)

    return asyncio.run(go())


def _openai(base_url: str, **kw: object) -> TeacherConfig:
    return TeacherConfig(backend="openai", model="smollm2", base_url=base_url, **kw)  # type: ignore[arg-type]


def test_openai_backend_counts_tokens_and_caches(llama_server: LlamaServer, tmp_path: Path) -> None:
    teacher = Teacher(_openai(llama_server.base_url), tmp_path / "cache.sqlite")
    before = llama_server.chat_requests()
    first = _complete(teacher)
    assert first.text.strip() and first.input_tokens > 0 and first.output_tokens > 0 and not first.cached
    assert llama_server.chat_requests() == before + 1
    again = Teacher(_openai(llama_server.base_url), tmp_path / "cache.sqlite")  # a new process would do this
    second = _complete(again)
    assert second.cached and second.text == first.text
    assert llama_server.chat_requests() == before + 1
    assert again.stats.calls == 0 and again.stats.cache_hits == 1


def test_embedded_llamacpp_backend(tmp_path: Path) -> None:
    teacher = Teacher(TeacherConfig(), tmp_path / "cache.sqlite")
    out = _complete(teacher)
    assert out.text.strip() and out.output_tokens > 0
    assert teacher.identity["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_retries_honour_retry_after(llama_server: LlamaServer) -> None:
    with FaultProxy(
        llama_server.base_url.removesuffix("/v1"), free_port(), ["429", "429", "503"], retry_after=1.0
    ) as proxy:
        teacher = Teacher(_openai(proxy.base_url, cache=False, backoff_base_s=0.05))
        out = _complete(teacher)
    assert out.text.strip()
    assert [f for _, f in proxy.arrivals] == ["429", "429", "503", "ok"]
    gaps = [b[0] - a[0] for a, b in zip(proxy.arrivals, proxy.arrivals[1:], strict=False)]
    assert gaps[0] >= 0.95 and gaps[1] >= 0.95  # waited as Retry-After said
    assert gaps[2] < 0.95  # no Retry-After on the 503: short exponential backoff
    assert teacher.stats.retries == 3 and teacher.stats.faults == {"HTTP 429": 2, "HTTP 503": 1}
    assert teacher.stats.retry_after_waits == [1.0, 1.0]


def test_retries_exhausted_is_a_teacher_error(llama_server: LlamaServer) -> None:
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), ["500"] * 3) as proxy:
        teacher = Teacher(_openai(proxy.base_url, cache=False, max_retries=2, backoff_base_s=0.01))
        with pytest.raises(TeacherError) as info:
            _complete(teacher)
    assert info.value.transient and info.value.attempts == 3
    assert proxy.forwarded == 0


def test_refused_key_is_terminal_and_never_printed(llama_server: LlamaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-live-DO-NOT-PRINT-42"
    monkeypatch.setenv("TEACHER_KEY", secret)
    with FaultProxy(llama_server.base_url.removesuffix("/v1"), free_port(), ["401"]) as proxy:
        teacher = Teacher(_openai(proxy.base_url, cache=False, api_key_env="TEACHER_KEY"))
        with pytest.raises(TeacherError) as info:
            _complete(teacher)
    assert not info.value.transient and len(proxy.arrivals) == 1
    assert "401" in str(info.value) and "TEACHER_KEY" in str(info.value)
    assert secret not in str(info.value) and secret not in repr(info.value)


def test_concurrency_is_bounded(llama_server: LlamaServer) -> None:
    teacher = Teacher(_openai(llama_server.base_url, cache=False, max_concurrency=2))
    in_flight = 0
    peak = 0
    original = teacher.backend.agenerate

    async def spy(messages: list[dict[str, str]], params: GenerationParams) -> tuple[str, int, int]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await original(messages, params)
        finally:
            in_flight -= 1

    teacher.backend.agenerate = spy  # type: ignore[method-assign]

    async def go() -> None:
        async with teacher.session():
            await asyncio.gather(
                *(teacher.complete([{"role": "user", "content": f"Count to {i}."}], PARAMS) for i in range(6))
            )

    asyncio.run(go())
    assert peak == 2 and teacher.stats.calls == 6


@pytest.mark.parametrize("routing", ["least_busy", "round_robin"])
def test_several_endpoints_each_within_its_own_limit(llama_server: LlamaServer, routing: str) -> None:
    """Two endpoints (two proxies in front of the real server) that answer 429 beyond 1 and 2 requests in
    flight: datapipe spreads 12 requests over both and never exceeds either limit."""
    upstream = llama_server.base_url.removesuffix("/v1")
    with (
        FaultProxy(upstream, free_port(), max_in_flight=1) as a,
        FaultProxy(upstream, free_port(), max_in_flight=2) as b,
    ):
        cfg = TeacherConfig(
            backend="openai",
            model="smollm2",
            endpoints=[{"base_url": a.base_url, "max_concurrency": 1}, {"base_url": b.base_url, "max_concurrency": 2}],
            routing=routing,
            cache=False,
        )
        assert cfg.max_concurrency == 3
        teacher = Teacher(cfg, None)
        prompts = [[{"role": "user", "content": f"Name a colour, number {i}."}] for i in range(12)]

        async def go() -> list[object]:
            async with teacher.session():
                return await asyncio.gather(*(teacher.complete(p, PARAMS) for p in prompts))

        results = asyncio.run(go())
    assert len(results) == 12
    assert a.counts().get("limit", 0) == 0 and b.counts().get("limit", 0) == 0  # no 429: limits respected
    assert a.peak_in_flight == 1 and b.peak_in_flight == 2
    assert a.forwarded + b.forwarded == 12 and a.forwarded >= 2 and b.forwarded >= 2
    stats = teacher.stats.as_dict()["endpoints"]
    assert {k: v["requests"] for k, v in stats.items()} == {a.base_url: a.forwarded, b.base_url: b.forwarded}
