"""ChatClient with fallback endpoints: two real scripted OpenAI-compatible servers (and a dead port)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentbus.errors import CircuitOpenError, ConfigError, ModelUnavailableError
from agents.llm import BreakerConfig, BreakerState, ChatClient, CircuitBreaker, LLMConfig, RetryConfig
from agents.llm.chat import ChatRequest, Message
from bus.embedded import free_port
from loadtest import llm_server as s

SLOW_BACKOFF = RetryConfig(attempts=4, base_s=5.0, max_s=8.0)  # a backoff would take >= 2.5 s


@pytest.fixture
async def pair() -> AsyncIterator[tuple[s.ScriptedLLM, s.ScriptedLLM]]:
    primary, fallback = await s.ScriptedLLM().start(), await s.ScriptedLLM().start()
    try:
        yield primary, fallback
    finally:
        await primary.aclose()
        await fallback.aclose()


def _request() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", "hi")])


Make = Callable[..., ChatClient]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """``make(base, *fallbacks, circuit=None, **config)``: a client, closed after the test."""
    made: list[ChatClient] = []

    def client(
        base: str, *fallbacks: str, circuit: CircuitBreaker | None = None, **config: Any
    ) -> ChatClient:
        cfg = LLMConfig(
            base_url=base, fallback_urls=fallbacks, model="m", **{"retry": SLOW_BACKOFF, **config}
        )
        made.append(ChatClient(cfg, breaker=circuit))
        return made[-1]

    yield client
    for c in made:
        await c.aclose()


async def test_a_failed_attempt_fails_over_at_once(
    pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make
) -> None:
    primary, fallback = pair
    client = make(primary.url, fallback.url)
    primary.script(s.status(503))
    fallback.script(s.text("from the fallback"))
    answer = await asyncio.wait_for(client.chat(_request()), 2.0)  # no backoff in between
    assert answer.content == "from the fallback"
    assert [len(primary.requests), len(fallback.requests)] == [1, 1]
    assert [ep.outcomes for ep in client.endpoints] == [{"http_503": 1}, {"ok": 1}]
    primary.script(s.text("primary again"))
    assert (await client.chat(_request())).content == "primary again"  # still the first choice


async def test_a_stream_fails_over_before_its_first_token(
    pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make
) -> None:
    primary, fallback = pair
    client = make(primary.url, fallback.url)
    primary.script(s.status(502))
    fallback.script(s.stream_text(["from ", "the ", "fallback"]))
    tokens: list[str] = []

    async def sink(text: str) -> None:
        tokens.append(text)

    request = ChatRequest(model="m", messages=[Message("user", "hi")], stream=True)
    answer = await asyncio.wait_for(client.chat(request, on_token=sink), 2.0)
    assert answer.content == "from the fallback"
    assert tokens == ["from ", "the ", "fallback"]  # once each: nothing came from the primary
    assert fallback.requests[0].headers["accept"] == "text/event-stream"


async def test_a_refused_connection_fails_over(pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make) -> None:
    _, fallback = pair
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = make(dead, fallback.url)
    fallback.script(s.text("up"))
    assert (await asyncio.wait_for(client.chat(_request()), 2.0)).content == "up"
    assert client.endpoints[0].outcomes == {"connection": 1}


async def test_an_open_breaker_routes_every_call_to_the_fallback_until_its_probe(
    pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make
) -> None:
    primary, fallback = pair
    t = [0.0]
    breaker = CircuitBreaker(primary.url, BreakerConfig(failure_threshold=2, open_s=5.0), clock=lambda: t[0])
    client = make(primary.url, fallback.url, circuit=breaker)
    primary.default = lambda body: s.status(500)
    fallback.default = lambda body: s.text("fallback")
    for _ in range(2):  # each call: the primary fails, the fallback answers
        assert (await client.chat(_request())).content == "fallback"
    assert breaker.state is BreakerState.OPEN
    seen = len(primary.requests)
    for _ in range(5):
        assert (await client.chat(_request())).content == "fallback"
    assert len(primary.requests) == seen  # open: the primary is left alone
    primary.default = lambda body: s.text("primary")
    t[0] = 5.0  # half-open: the next call probes the primary, which has recovered
    assert (await client.chat(_request())).content == "primary"
    assert breaker.state is BreakerState.CLOSED  # type: ignore[comparison-overlap]  # it recovered
    assert client.endpoints[1].outcomes == {"ok": 7}


async def test_every_endpoint_failing_backs_off_between_rounds_then_gives_up(
    pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make
) -> None:
    primary, fallback = pair
    client = make(primary.url, fallback.url, retry=RetryConfig(attempts=4, base_s=0.2, max_s=1.0))
    primary.default = fallback.default = lambda body: s.status(503)
    with pytest.raises(ModelUnavailableError, match="4 attempt"):
        await client.chat(_request())
    times = sorted([(r.at, "p") for r in primary.requests] + [(r.at, "f") for r in fallback.requests])
    assert [who for _, who in times] == ["p", "f", "p", "f"]  # in order, round after round
    assert times[2][0] - times[1][0] >= 0.09  # a backoff (at least base_s / 2) between rounds


async def test_all_breakers_open_refuses_with_the_soonest_probe(
    pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make
) -> None:
    primary, fallback = pair
    client = make(
        primary.url,
        fallback.url,
        retry=RetryConfig(attempts=2, base_s=0.01, max_s=0.05),
        breaker=BreakerConfig(failure_threshold=1, open_s=30.0),
    )
    primary.default = fallback.default = lambda body: s.status(502)
    with pytest.raises(ModelUnavailableError):
        await client.chat(_request())  # opens both breakers
    with pytest.raises(CircuitOpenError) as refused:
        await client.chat(_request())
    for server in pair:
        assert server.url.rstrip("/") in str(refused.value)
    assert 0 < refused.value.retry_after_s <= 30.0
    assert [ep.breaker.state for ep in client.endpoints] == [BreakerState.OPEN] * 2
    assert [ep.outcomes.get("circuit_open") for ep in client.endpoints] == [1, 1]
    assert len(primary.requests) + len(fallback.requests) == 2  # the refusal sent nothing


def test_fallback_urls_from_env() -> None:
    cfg = LLMConfig.from_env(
        {
            "AGENTBUS_LLM_BASE_URL": "http://a:8000/v1",
            "AGENTBUS_LLM_MODEL": "m",
            "AGENTBUS_LLM_FALLBACK_URLS": " http://b:8000/v1, https://c.example/v1 ,",
        }
    )
    assert cfg.fallback_urls == ("http://b:8000/v1", "https://c.example/v1")
    assert [ep.url for ep in ChatClient(cfg).endpoints] == [
        "http://a:8000/v1",
        "http://b:8000/v1",
        "https://c.example/v1",
    ]
    with pytest.raises(ConfigError, match="not an http"):
        LLMConfig(base_url="http://a/v1", model="m", fallback_urls=("b:8000",))
    with pytest.raises(ConfigError, match="repeats"):
        LLMConfig(base_url="http://a/v1", model="m", fallback_urls=("http://a/v1/",))
    with pytest.raises(ConfigError, match="needs AGENTBUS_LLM_BASE_URL"):
        LLMConfig(fallback_urls=("http://b/v1",))
