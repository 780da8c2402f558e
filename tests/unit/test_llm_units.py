"""Pure units of agents.llm: SSE parsing, the breaker, tenant limits, tools, config, exports."""

from __future__ import annotations

import msgspec
import pytest

import agents.llm
from agentbus.errors import BudgetExceededError, CircuitOpenError, ConfigError, RateLimitedError, Reject
from agents.api import Context
from agents.llm import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    LimitsConfig,
    LLMConfig,
    LocalLimits,
    Toolbox,
    tool,
)
from agents.llm._sse import SSEDecoder
from agents.llm.chat import ChatChunk, CompletionBuilder
from agents.testing import bare_context


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# -- SSE ------------------------------------------------------------------------------------------

STREAM = b'data: {"a": 1}\r\n\r\n: a comment\n\ndata: line one\ndata: line two\n\nevent: x\ndata: [DONE]\n\n'
EXPECTED_EVENTS = [b'{"a": 1}', b"line one\nline two", b"[DONE]"]


def test_sse_decodes_whole_stream() -> None:
    assert SSEDecoder().feed(STREAM) == EXPECTED_EVENTS


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_sse_survives_any_chunk_boundary(cut: int) -> None:
    decoder = SSEDecoder()
    events = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) + decoder.close()
    assert events == EXPECTED_EVENTS


def test_sse_byte_by_byte_and_unterminated_tail() -> None:
    decoder = SSEDecoder()
    events = [e for i in range(len(STREAM)) for e in decoder.feed(STREAM[i : i + 1])]
    assert events == EXPECTED_EVENTS
    decoder.feed(b"data: tail")
    assert decoder.close() == [b"tail"]


def test_completion_builder_reassembles_parallel_tool_calls() -> None:
    chunks = [
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "two"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "one"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"arguments": {"y": 2}}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}}]},
        {
            "choices": [{"delta": {"content": "hm"}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3},
        },
    ]
    builder = CompletionBuilder()
    texts = [builder.add(msgspec.convert(c, ChatChunk)) for c in chunks]
    done = builder.build()
    assert texts[-1] == "hm"
    assert [(c.id, c.function.name, c.function.arguments) for c in done.tool_calls] == [
        ("a", "one", '{"x": 1}'),
        ("b", "two", '{"y":2}'),
    ]
    assert done.finish_reason == "tool_calls"
    assert done.usage.prompt_tokens == 3


# -- breaker --------------------------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_and_recovers_through_half_open() -> None:
    clock = Clock()
    breaker = CircuitBreaker("e", BreakerConfig(failure_threshold=3, open_s=10.0), clock=clock)
    for _ in range(2):
        breaker.failure(breaker.acquire())
    breaker.success(breaker.acquire())  # a success resets the count
    for _ in range(3):
        assert breaker.state is BreakerState.CLOSED
        breaker.failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened == 1
    clock.t += 4
    with pytest.raises(CircuitOpenError) as refused:
        breaker.acquire()
    assert refused.value.retry_after_s == pytest.approx(6.0)
    clock.t += 6
    assert breaker.state is BreakerState.HALF_OPEN  # type: ignore[comparison-overlap]  # the clock moved
    probe = breaker.acquire()
    assert probe is True
    with pytest.raises(CircuitOpenError):  # one probe at a time
        breaker.acquire()
    breaker.failure(probe)  # the probe failed: open again, for a full period
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened == 2
    clock.t += 10
    breaker.success(breaker.acquire())
    assert breaker.state is BreakerState.CLOSED
    assert breaker.acquire() is False


def test_breaker_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker("e", BreakerConfig(failure_threshold=1, open_s=1.0), clock=clock)
    breaker.failure(breaker.acquire())
    clock.t += 1
    breaker.cancelled(breaker.acquire())
    assert breaker.acquire() is True


# -- tenant limits --------------------------------------------------------------------------------


def test_budget_rejects_only_the_tenant_over_it_until_the_window_rolls() -> None:
    clock = Clock()
    limits = LocalLimits(
        LimitsConfig(token_budget=100, budget_window_s=60, tenant_budgets={"big": 1000}), clock=clock
    )
    limits.check("acme")
    limits.charge("acme", 120)
    with pytest.raises(BudgetExceededError) as over:
        limits.check("acme")
    assert "budget exceeded: tenant 'acme' used 120 of 100 tokens" in str(over.value)
    limits.check("globex")
    limits.charge("big", 500)
    limits.check("big")
    assert limits.refused == {("acme", "budget"): 1}
    clock.t += 60
    limits.check("acme")


def test_rate_limit_is_a_token_bucket_per_tenant() -> None:
    clock = Clock()
    limits = LocalLimits(LimitsConfig(requests_per_s=2.0, burst=2), clock=clock)
    limits.check("acme")
    limits.check("acme")
    with pytest.raises(RateLimitedError) as slow:
        limits.check("acme")
    assert slow.value.retry_after_s == pytest.approx(0.5)
    limits.check("globex")
    clock.t += 0.5
    limits.check("acme")


# -- tools ----------------------------------------------------------------------------------------


class Part(msgspec.Struct):
    name: str


class Order(msgspec.Struct, forbid_unknown_fields=True):
    """An order."""

    sku: str
    quantity: int
    parts: list[Part] = []


@tool
def place(ctx: Context, args: Order) -> dict[str, int]:
    """Place an order."""
    if args.quantity == 13:
        raise RuntimeError("unlucky")
    if args.quantity == 666:
        raise Reject("forbidden quantity")
    return {"placed": args.quantity}


@tool(name="slow_place", description="async variant")
async def slow(ctx: Context, args: Order) -> Order:
    return args


def test_tool_schema_comes_from_msgspec_and_is_an_object() -> None:
    spec = place.spec()
    assert spec.function.name == "place"
    assert spec.function.description == "Place an order."
    params = spec.function.parameters
    assert params["type"] == "object"
    assert params["required"] == ["sku", "quantity"]
    assert params["properties"]["quantity"] == {"type": "integer"}
    assert params["properties"]["parts"]["items"] == {"$ref": "#/$defs/Part"}
    assert "Part" in params["$defs"]


@pytest.mark.parametrize(
    ("name", "arguments", "error"),
    [
        (
            "place",
            '{"sku": "A", "quantity": "ten"}',
            "invalid arguments for place: Expected `int`, got `str`",
        ),
        ("place", '{"sku": "A", "quantity": 1, "x": 1}', "Object contains unknown field `x`"),
        ("place", '{"sku": "A", "quantity": ', "arguments of place are not valid JSON"),
        ("place", '{"sku": "A"}', "missing required field `quantity`"),
        ("place", '{"sku": "A", "quantity": 13}', "place failed: RuntimeError: unlucky"),
        ("drop_tables", "{}", "unknown tool 'drop_tables'; the tools are: place, slow_place"),
    ],
)
async def test_bad_calls_become_errors_for_the_model(name: str, arguments: str, error: str) -> None:
    outcome = await Toolbox([place, slow]).call(bare_context(), name, arguments)
    assert not outcome.ok
    assert error in outcome.error


async def test_good_calls_and_fates() -> None:
    box = Toolbox([place, slow])
    assert (await box.call(bare_context(), "place", '{"sku": "A", "quantity": 2}')).result == {"placed": 2}
    echoed = await box.call(
        bare_context(), "slow_place", '{"sku": "A", "quantity": 2, "parts": [{"name": "p"}]}'
    )
    assert echoed.result == {"sku": "A", "quantity": 2, "parts": [{"name": "p"}]}
    with pytest.raises(Reject):
        await box.call(bare_context(), "place", '{"sku": "A", "quantity": 666}')


def test_tool_needs_a_struct_argument() -> None:
    def bad(ctx: Context, args: dict) -> None:  # type: ignore[type-arg]
        pass

    with pytest.raises(ConfigError, match="msgspec Struct"):
        tool(bad)
    with pytest.raises(ConfigError, match="two tools"):
        Toolbox([place, place])


# -- config and exports ---------------------------------------------------------------------------


def test_config_from_env(tmp_path: pytest.TempPathFactory) -> None:
    assert LLMConfig.from_env({}).offline
    key = tmp_path / "key"  # type: ignore[operator]
    key.write_text("sk-secret\n")
    cfg = LLMConfig.from_env(
        {
            "AGENTBUS_LLM_BASE_URL": "http://127.0.0.1:1/v1",
            "AGENTBUS_LLM_MODEL": "m",
            "AGENTBUS_LLM_API_KEY_FILE": str(key),
            "AGENTBUS_LLM_TENANT_TOKEN_BUDGET": "5000",
            "AGENTBUS_LLM_STREAM": "0",
            "AGENTBUS_LLM_MAX_CONNECTIONS": "64",
        }
    )
    assert (cfg.offline, cfg.api_key, cfg.limits.token_budget, cfg.stream, cfg.max_connections) == (
        False,
        "sk-secret",
        5000,
        False,
        64,
    )
    assert LLMConfig.from_env({}).max_connections == 0  # no cap: one connection per call
    with pytest.raises(ConfigError, match="MAX_CONNECTIONS"):
        LLMConfig(max_connections=-1)
    with pytest.raises(ConfigError, match="AGENTBUS_LLM"):
        LLMConfig.from_env({"AGENTBUS_LLM_MAX_CONNECTIONS": "many"})
    assert "sk-secret" not in repr(cfg)
    with pytest.raises(ConfigError, match="model name"):
        LLMConfig(base_url="http://x/v1")
    with pytest.raises(ConfigError, match="http"):
        LLMConfig(base_url="ftp://x", model="m")


def test_public_surface() -> None:
    assert sorted(agents.llm.__all__) == [
        "Brain",
        "BreakerConfig",
        "BreakerState",
        "ChatClient",
        "CircuitBreaker",
        "LLMConfig",
        "LimitsConfig",
        "LocalLimits",
        "MCPServerConfig",
        "ModelBrain",
        "ModelEndpoint",
        "OfflineBrain",
        "Plan",
        "PlannedCall",
        "RetryConfig",
        "Run",
        "TaskAgent",
        "TaskIn",
        "TaskOut",
        "TenantLimits",
        "Tool",
        "ToolOutcome",
        "Toolbox",
        "agent_of",
        "planned_call",
        "task_agent",
        "tool",
    ]
    for name in agents.llm.__all__:
        assert getattr(agents.llm, name) is not None
