"""ChatClient against the scripted OpenAI-compatible server: JSON, SSE, retries, breaker."""

from __future__ import annotations

import pytest

from agentbus.errors import CircuitOpenError, ModelHTTPError, ModelUnavailableError
from agents.llm import BreakerConfig, BreakerState, ChatClient, CircuitBreaker, LLMConfig, RetryConfig
from agents.llm import testing as s
from agents.llm.chat import ChatRequest, Message

FAST = RetryConfig(attempts=4, base_s=0.05, max_s=2.0)


def _client(server: s.ScriptedLLM, **changes: object) -> ChatClient:
    cfg = LLMConfig(base_url=server.url, model="m", api_key="sk-test", retry=FAST)
    return ChatClient(cfg.with_(**changes))


def _request(stream: bool = False) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", "hi")], stream=stream)


async def test_json_and_sse_answers(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    llm.script(
        s.text("plain"),
        s.stream_text(["str", "eam", "ed"], usage=(7, 3)),
        s.stream_tool_calls([("one", {"a": 1}), ("two", '{"b": "x"}')]),
    )
    tokens: list[str] = []

    async def sink(text: str) -> None:
        tokens.append(text)

    try:
        assert (await client.chat(_request())).content == "plain"
        streamed = await client.chat(_request(stream=True), on_token=sink)
        assert streamed.content == "streamed"
        assert tokens == ["str", "eam", "ed"]
        assert (streamed.usage.prompt_tokens, streamed.usage.completion_tokens) == (7, 3)
        calls = (await client.chat(_request(stream=True), on_token=sink)).tool_calls
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            ("one", '{"a": 1}'),
            ("two", '{"b": "x"}'),
        ]
        assert llm.requests[0].headers["authorization"] == "Bearer sk-test"
        assert llm.requests[1].body["stream"] is True
        assert llm.requests[1].headers["accept"] == "text/event-stream"
    finally:
        await client.aclose()


async def test_429_retry_after_is_honoured(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    llm.script(s.status(429, retry_after="0.6"), s.status(503, retry_after="0"), s.text("ok"))
    try:
        assert (await client.chat(_request())).content == "ok"
        first, second, _ = (r.at for r in llm.requests)
        assert second - first >= 0.6  # the server's delay, not our shorter backoff
        assert client.endpoints[0].outcomes == {"http_429": 1, "http_503": 1, "ok": 1}
    finally:
        await client.aclose()


async def test_5xx_burst_backs_off_then_gives_up(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    llm.script(*[s.status(500) for _ in range(3)], s.text("ok"))
    llm.script(*[s.status(502) for _ in range(4)])
    try:
        assert (await client.chat(_request())).content == "ok"
        gaps = [b.at - a.at for a, b in zip(llm.requests, llm.requests[1:], strict=False)]
        assert all(g >= 0.025 for g in gaps)  # at least half of each (doubling) backoff
        with pytest.raises(ModelUnavailableError, match=r"HTTP 502 \(attempt 4 of 4\)"):
            await client.chat(_request())
        assert len(llm.requests) == 8
    finally:
        await client.aclose()


async def test_long_retry_after_is_not_slept_through(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    llm.script(s.status(429, retry_after="30"))
    try:
        with pytest.raises(ModelUnavailableError) as busy:
            await client.chat(_request())
        assert busy.value.retry_after_s == 30.0  # the task is nakked with it instead
        assert len(llm.requests) == 1
    finally:
        await client.aclose()


async def test_a_huge_retry_after_from_the_endpoint_parks_the_task_for_the_bound_only(
    llm: s.ScriptedLLM,
) -> None:
    cfg = LLMConfig(base_url=llm.url, model="m", retry=RetryConfig(attempts=3, base_s=0.01, max_s=0.05))
    client = ChatClient(cfg)
    llm.script(
        s.status(429, retry_after="garbage"),  # ignored: the client's own backoff, then again
        s.status(503, retry_after="1000000000000"),  # 10^12 s: cut to the bound, not slept through
        s.status(429, retry_after="Fri, 31 Dec 9999 23:59:59 GMT"),
    )
    try:
        with pytest.raises(ModelUnavailableError) as busy:
            await client.chat(_request())
        assert busy.value.retry_after_s == 60.0  # the task is nakked for a minute, not for good
        assert str(busy.value) == "model endpoint primary failed: HTTP 503, retry after 60s (attempt 2 of 3)"
        with pytest.raises(ModelUnavailableError) as busy:
            await client.chat(_request())
        assert busy.value.retry_after_s == 60.0
    finally:
        await client.aclose()


async def test_client_errors_are_not_retried(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    llm.script(s.status(400, body='{"error": "bad tools"}'))
    try:
        with pytest.raises(ModelHTTPError) as refused:
            await client.chat(_request())
        assert refused.value.status == 400
        assert "bad tools" not in str(refused.value)  # what tenants read: the body only in the log
        assert "bad tools" in refused.value.detail
        assert len(llm.requests) == 1
        assert client.endpoints[0].breaker.state is BreakerState.CLOSED
    finally:
        await client.aclose()


async def test_malformed_body_is_retried(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    llm.script(s.malformed(), s.text("fine"))
    try:
        assert (await client.chat(_request())).content == "fine"
        assert client.endpoints[0].outcomes == {"bad_body": 1, "ok": 1}
    finally:
        await client.aclose()


async def test_broken_stream_after_tokens_is_not_repeated(llm: s.ScriptedLLM) -> None:
    client = _client(llm)
    broken = s.stream_text(["a", "b", "c"])
    assert broken.events is not None
    broken.events = broken.events[:3]  # role, "a", "b": then the connection drops
    broken.hang_up = True
    llm.script(broken, s.text("never asked"))
    tokens: list[str] = []

    async def sink(text: str) -> None:
        tokens.append(text)

    try:
        with pytest.raises(ModelUnavailableError, match="connection"):
            await client.chat(_request(stream=True), on_token=sink)
        assert tokens == ["a", "b"]
        assert len(llm.requests) == 1  # a retry in place would have sent "a", "b" twice
    finally:
        await client.aclose()


async def test_deadline_bounds_the_call(llm: s.ScriptedLLM) -> None:
    import asyncio

    client = _client(llm)
    llm.script(s.text("late", delay_s=3.0))
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ModelUnavailableError, match="timeout"):
            await client.chat(_request(), deadline=started + 0.3)
        assert loop.time() - started < 2.5
    finally:
        await client.aclose()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_breaker_stops_calls_then_probes_and_closes(llm: s.ScriptedLLM) -> None:
    clock = Clock()
    cfg = LLMConfig(base_url=llm.url, model="m", retry=RetryConfig(attempts=1))
    breaker = CircuitBreaker(llm.url, BreakerConfig(failure_threshold=3, open_s=5.0), clock=clock)
    client = ChatClient(cfg, breaker=breaker)
    llm.script(*[s.status(500) for _ in range(3)], s.text("recovered"))
    try:
        for _ in range(3):
            with pytest.raises(ModelUnavailableError):
                await client.chat(_request())
        assert breaker.state is BreakerState.OPEN
        for _ in range(5):  # fail fast: nothing reaches the endpoint
            with pytest.raises(CircuitOpenError) as refused:
                await client.chat(_request())
        assert refused.value.retry_after_s == pytest.approx(5.0)
        assert len(llm.requests) == 3
        clock.t = 5.0
        assert (await client.chat(_request())).content == "recovered"
        assert breaker.state is BreakerState.CLOSED  # type: ignore[comparison-overlap]  # it recovered
        assert client.endpoints[0].outcomes == {"http_500": 3, "circuit_open": 5, "ok": 1}
    finally:
        await client.aclose()
