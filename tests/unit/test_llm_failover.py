"""ChatClient with fallback endpoints: two real scripted OpenAI-compatible servers (and a dead port)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agentbus.errors import CircuitOpenError, ConfigError, ModelUnavailableError
from agents.llm import (
    BreakerConfig,
    BreakerState,
    ChatClient,
    CircuitBreaker,
    LLMConfig,
    ModelEndpoint,
    RetryConfig,
)
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
        base: str, *fallbacks: str | ModelEndpoint, circuit: CircuitBreaker | None = None, **config: Any
    ) -> ChatClient:
        endpoints = tuple(fb if isinstance(fb, ModelEndpoint) else ModelEndpoint(fb) for fb in fallbacks)
        cfg = LLMConfig(base_url=base, fallbacks=endpoints, model="m", **{"retry": SLOW_BACKOFF, **config})
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
    with pytest.raises(ModelUnavailableError, match=r"fallback 1 failed: HTTP 503 \(attempt 4 of 4\)"):
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
    assert str(refused.value).startswith("circuit open for primary, fallback 1: next probe in ")
    for server in pair:  # named by place: a URL may be internal, or carry credentials
        assert str(server.port) not in str(refused.value)
    assert 0 < refused.value.retry_after_s <= 30.0
    assert [ep.breaker.state for ep in client.endpoints] == [BreakerState.OPEN] * 2
    assert [ep.outcomes.get("circuit_open") for ep in client.endpoints] == [1, 1]
    assert len(primary.requests) + len(fallback.requests) == 2  # the refusal sent nothing


async def test_a_fallback_asks_for_its_own_model_with_its_own_key(
    pair: tuple[s.ScriptedLLM, s.ScriptedLLM], make: Make
) -> None:
    primary, fallback = pair
    other = await s.ScriptedLLM().start()
    try:
        own = ModelEndpoint(fallback.url, model="reserve-8b", api_key="sk-fallback")
        client = make(primary.url, own, other.url, api_key="sk-primary")
        primary.script(s.status(503), s.status(503))
        fallback.script(s.text("from the reserve"), s.status(502))
        other.script(s.text("from the replica"))
        first = await asyncio.wait_for(client.chat(_request()), 2.0)
        assert (first.content, first.model) == ("from the reserve", "reserve-8b")
        second = await asyncio.wait_for(client.chat(_request()), 2.0)  # primary 503, reserve 502
        assert (second.content, second.model) == ("from the replica", "m")
        asked = [(r.body["model"], r.headers["authorization"]) for r in primary.requests]
        asked += [(r.body["model"], r.headers["authorization"]) for r in fallback.requests]
        asked += [(r.body["model"], r.headers["authorization"]) for r in other.requests]
        assert asked == [
            ("m", "Bearer sk-primary"),
            ("m", "Bearer sk-primary"),
            ("reserve-8b", "Bearer sk-fallback"),
            ("reserve-8b", "Bearer sk-fallback"),
            ("m", "Bearer sk-primary"),  # no model or key of its own: the primary's
        ]
        assert all(r.body["messages"] == [{"role": "user", "content": "hi"}] for r in fallback.requests)
    finally:
        await other.aclose()


def test_fallbacks_from_env(tmp_path: Any) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-secret\n")
    cfg = LLMConfig.from_env(
        {
            "AGENTBUS_LLM_BASE_URL": "http://a:8000/v1",
            "AGENTBUS_LLM_MODEL": "m",
            "AGENTBUS_LLM_API_KEY": "sk-a",
            "AGENTBUS_LLM_FALLBACK_URLS": " http://b:8000/v1, https://c.example/v1 , https://d.example/v1",
            "AGENTBUS_LLM_FALLBACK_2_MODEL": "gpt-4o-mini",
            "AGENTBUS_LLM_FALLBACK_2_API_KEY_FILE": str(key_file),
            "AGENTBUS_LLM_FALLBACK_3_API_KEY": "",  # explicitly none
        }
    )
    assert cfg.fallbacks == (
        ModelEndpoint("http://b:8000/v1"),
        ModelEndpoint("https://c.example/v1", model="gpt-4o-mini", api_key="sk-from-secret"),
        ModelEndpoint("https://d.example/v1", api_key=""),
    )
    endpoints = ChatClient(cfg).endpoints
    assert [(ep.url, ep.model) for ep in endpoints] == [
        ("http://a:8000/v1", None),
        ("http://b:8000/v1", None),
        ("https://c.example/v1", "gpt-4o-mini"),
        ("https://d.example/v1", None),
    ]
    auth = [ep.headers_json.partition("Authorization: ")[2] for ep in endpoints]
    assert auth == ["Bearer sk-a\r\n", "Bearer sk-a\r\n", "Bearer sk-from-secret\r\n", ""]
    assert "sk-from-secret" not in repr(cfg)


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"AGENTBUS_LLM_FALLBACK_URLS": "b:8000"}, "not an http"),
        ({"AGENTBUS_LLM_FALLBACK_URLS": "http://a/v1/"}, "repeats"),
        (
            {"AGENTBUS_LLM_FALLBACK_URLS": "http://b/v1", "AGENTBUS_LLM_FALLBACK_2_MODEL": "x"},
            "names 1 endpoint",
        ),
        (
            {"AGENTBUS_LLM_FALLBACK_URLS": "http://b/v1", "AGENTBUS_LLM_FALLBACK_0_MODEL": "x"},
            "counted from 1",
        ),
        ({"AGENTBUS_LLM_FALLBACK_URLS": "http://b/v1", "AGENTBUS_LLM_FALLBACK_1_MODLE": "x"}, "unknown"),
        ({"AGENTBUS_LLM_FALLBACK_URLS": "http://b/v1", "AGENTBUS_LLM_FALLBACK_1_MODEL": ""}, "empty model"),
        (
            {
                "AGENTBUS_LLM_FALLBACK_URLS": "http://b/v1",
                "AGENTBUS_LLM_FALLBACK_1_API_KEY_FILE": "/nonexistent",
            },
            "No such file",
        ),
    ],
)
def test_bad_fallback_settings_are_refused_with_the_variable_named(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        LLMConfig.from_env({"AGENTBUS_LLM_BASE_URL": "http://a/v1", "AGENTBUS_LLM_MODEL": "m", **env})
    with pytest.raises(ConfigError, match="needs AGENTBUS_LLM_BASE_URL"):
        LLMConfig(fallbacks=(ModelEndpoint("http://b/v1"),))
