"""The LLM task agent over a real nats-server and a real (scripted) OpenAI-compatible HTTP server.

Must-shows of issue 7: (1) plan -> tools -> answer with an audit trail, scripted model and
offline brain; (2) streaming in order, answer = the tokens; (3) bad model output recovered
within the bound, else a clear dead letter; (4) 429/5xx retries and the circuit breaker;
(5) a tenant over budget is rejected while others continue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import generate_latest

from agents.api import AgentSpec
from agents.builtin.assistant import order_rules, order_tools
from agents.builtin.orders import Inventory
from agents.config import WorkerConfig
from agents.llm import (
    BreakerConfig,
    BreakerState,
    LimitsConfig,
    LLMConfig,
    ModelEndpoint,
    OfflineBrain,
    RetryConfig,
    TaskOut,
    agent_of,
    task_agent,
)
from agents.llm import testing as s
from agents.registry import Registry
from agents.worker import Worker
from bus.embedded import free_port
from bus.messages import (
    DeadLetter,
    DecisionEvent,
    DoneEvent,
    Result,
    StepEvent,
    TokenEvent,
    stream_event_decoder,
)
from bus.publisher import Publisher
from bus.topology import DLQ_STREAM

pytestmark = pytest.mark.integration

CHECK = ("check_inventory", {"sku": "PROD-003", "quantity": 2})


def assistant(config: LLMConfig) -> AgentSpec[Any, Any]:
    return task_agent(
        kind="assistant", tools=order_tools(Inventory()), offline=OfflineBrain(order_rules), config=config
    )


def model(server: s.ScriptedLLM, **changes: Any) -> LLMConfig:
    return LLMConfig(base_url=server.url, model="scripted", **{"stream": False, **changes})


class Running:
    def __init__(self, worker: Worker, nc: Client, spec: AgentSpec[Any, Any]) -> None:
        self.worker = worker
        self.nc = nc
        self.pub = Publisher(nc)
        self.spec = spec

    async def call(
        self, request: str, *, tenant: str = "acme", task_id: str | None = None, stream: bool = False
    ) -> Result[Any]:
        return await self.pub.call(
            tenant,
            "assistant",
            {"request": request},
            timeout_s=30,
            task_id=task_id,
            output_type=TaskOut,
            stream=stream,
        )

    def metrics(self) -> str:
        return generate_latest(self.worker.metrics).decode()


@pytest.fixture
async def run(nats_url: str, nc: Client) -> AsyncIterator[Callable[[AgentSpec[Any, Any]], Any]]:
    started: list[Running] = []

    async def start(spec: AgentSpec[Any, Any]) -> Running:
        cfg = WorkerConfig(nats_url=nats_url, http_port=-1, retry_base_s=0.05, retry_max_s=0.2)
        worker = Worker(cfg, Registry([spec]))
        await worker.start()
        started.append(Running(worker, nc, spec))
        return started[-1]

    yield start
    for r in started:
        await r.worker.stop()
        await agent_of(r.spec).aclose()


async def dead_letters(nc: Client) -> list[DeadLetter]:
    js = nc.jetstream()
    state = (await js.stream_info(DLQ_STREAM)).state
    out = []
    for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
        data = (await js.get_msg(DLQ_STREAM, seq)).data
        assert data is not None
        out.append(msgspec.json.decode(data, type=DeadLetter))
    return out


async def until(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- 1. plan -> tools -> answer ---------------------------------------------------------------


async def test_scripted_model_plans_calls_tools_and_answers(llm: s.ScriptedLLM, run: Any) -> None:
    r = await run(assistant(model(llm)))
    llm.script(s.tool_calls([CHECK]), s.text("Yes: 5 units of PROD-003, enough for 2."))
    result = await r.call("do we have 2 of PROD-003?")
    assert result.ok, result.error
    out: TaskOut = result.output
    assert out.answer == "Yes: 5 units of PROD-003, enough for 2."
    assert (out.brain, out.turns, out.tokens) == ("model:scripted", 2, 30)
    decision, step, final = out.audit
    assert isinstance(decision, DecisionEvent)
    assert (decision.tools, decision.final) == (["check_inventory"], False)
    assert isinstance(step, StepEvent)
    assert (step.tool, step.ok, step.result) == ("check_inventory", True, {"available": 5, "enough": True})
    assert step.arguments == '{"sku": "PROD-003", "quantity": 2}'
    assert isinstance(final, DecisionEvent)
    assert (final.final, final.text) == (True, out.answer)
    # the model got the tool's result back as a tool message, with its schema as a tool before
    first, second = (req.body for req in llm.requests)
    assert first["tools"][0]["function"]["parameters"]["required"] == ["sku", "quantity"]
    assert second["messages"][-1] == {
        "role": "tool",
        "content": '{"available":5,"enough":true}',
        "tool_call_id": "call_0",
    }
    assert "acme" in second["messages"][0]["content"]


async def test_offline_brain_runs_the_same_loop(run: Any) -> None:
    r = await run(assistant(LLMConfig()))
    placed = await r.call("customer U7 buys 2 of PROD-003")
    assert placed.ok, placed.error
    out: TaskOut = placed.output
    assert out.answer == "Order acme-00000001 created: 2 x PROD-003 for customer U7; 3 left in stock."
    assert out.brain == "offline"
    assert [(e.tool, e.ok) for e in out.audit if isinstance(e, StepEvent)] == [
        ("check_inventory", True),
        ("create_order", True),
    ]
    assert [e.tools for e in out.audit if isinstance(e, DecisionEvent)] == [
        ["check_inventory"],
        ["create_order"],
        [],
    ]
    short = await r.call("customer U8 buys 4 of PROD-003")
    assert short.output.answer == "Not enough stock: PROD-003 has 3, the order needs 4."
    nonsense = await r.call("sing me a song")
    assert not nonsense.ok
    assert nonsense.error is not None
    assert nonsense.error.startswith("rejected: offline brain: cannot plan request 'sing me a song'")


# -- 2. streaming ------------------------------------------------------------------------------


async def collect(nc: Client, tenant: str, task_id: str) -> tuple[list[Any], asyncio.Event]:
    events: list[Any] = []
    done = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        event = stream_event_decoder.decode(msg.data)
        events.append(event)
        if isinstance(event, DoneEvent):
            done.set()

    await nc.subscribe(f"results.{tenant}.{task_id}.stream", cb=on_event)
    await nc.flush()
    return events, done


@pytest.mark.parametrize("brain", ["model", "offline"])
async def test_stream_events_arrive_in_order_and_make_the_answer(
    brain: str, llm: s.ScriptedLLM, run: Any, nc: Client
) -> None:
    config = model(llm, stream=True) if brain == "model" else LLMConfig()
    r = await run(assistant(config))
    llm.script(  # parallel tool calls, streamed with interleaved argument pieces, then a streamed answer
        s.stream_tool_calls([CHECK, ("check_inventory", {"sku": "PROD-001", "quantity": 1})]),
        s.stream_text(["Both ", "are ", "in ", "stock", "."], event_delay_s=0.01),
    )
    events, done = await collect(nc, "acme", "streamed-1")
    result = await r.call("customer U1 buys 2 of PROD-003", task_id="streamed-1", stream=True)
    await asyncio.wait_for(done.wait(), 10)
    assert result.ok, result.error
    out: TaskOut = result.output
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].ok
    last_turn = out.turns - 1
    tokens = [e.text for e in events if isinstance(e, TokenEvent) and e.turn == last_turn]
    assert len(tokens) > 1
    assert "".join(tokens) == out.answer
    assert [e for e in events if isinstance(e, DecisionEvent | StepEvent)] == out.audit
    if brain == "model":
        assert out.answer == "Both are in stock."
        steps = [e for e in out.audit if isinstance(e, StepEvent)]
        assert [(st.step, st.result["available"]) for st in steps] == [(0, 5), (1, 1_000_000)]


@pytest.mark.parametrize("brain", ["model", "offline"])
async def test_a_task_nobody_follows_streams_nothing_and_keeps_its_audit(
    brain: str, llm: s.ScriptedLLM, run: Any, nc: Client
) -> None:
    config = model(llm, stream=True) if brain == "model" else LLMConfig()
    r = await run(assistant(config))
    llm.script(
        s.tool_calls([CHECK]),
        s.text("5 in stock."),
        s.stream_tool_calls([CHECK]),
        s.stream_text(["5 in ", "stock."]),
    )
    events, _ = await collect(nc, "acme", "unfollowed-1")
    result = await r.call("customer U1 buys 2 of PROD-003", task_id="unfollowed-1")
    followed = await r.call("customer U1 buys 2 of PROD-003", task_id="followed-1", stream=True)
    assert result.ok, result.error
    assert followed.ok, followed.error
    await nc.flush()  # an event sent before the result would have arrived by now
    assert events == []
    out: TaskOut = result.output
    assert [type(e) for e in out.audit][-1] is DecisionEvent
    assert any(isinstance(e, StepEvent) for e in out.audit)
    if brain == "model":  # SSE only for the task someone follows
        assert [q.body.get("stream", False) for q in llm.requests] == [False, False, True, True]


# -- 3. a model that misbehaves ----------------------------------------------------------------


async def test_bad_tool_calls_go_back_to_the_model_until_it_gets_them_right(
    llm: s.ScriptedLLM, run: Any
) -> None:
    r = await run(assistant(model(llm, max_tool_errors=3)))
    llm.script(
        s.tool_calls([("check_inventory", '{"sku": "PROD-003", "quantity": ')]),  # malformed JSON
        s.tool_calls([("delete_all_orders", "{}")]),  # an invented tool
        s.tool_calls([("check_inventory", {"sku": "PROD-003", "quantity": "two"})]),  # a wrong type
        s.tool_calls([CHECK]),
        s.text("5 in stock."),
    )
    result = await r.call("stock of PROD-003?")
    assert result.ok, result.error
    steps = [e for e in result.output.audit if isinstance(e, StepEvent)]
    assert [st.ok for st in steps] == [False, False, False, True]
    errors = [m["content"] for m in llm.requests[-1].body["messages"] if m["role"] == "tool"]
    assert errors[0].startswith("error: arguments of check_inventory are not valid JSON")
    assert (
        errors[1] == "error: unknown tool 'delete_all_orders'; the tools are: check_inventory, create_order"
    )
    assert errors[2].startswith("error: invalid arguments for check_inventory: Expected `int`, got `str`")
    assert errors[3] == '{"available":5,"enough":true}'


@pytest.mark.parametrize(
    ("default", "changes", "detail"),
    [
        (
            s.tool_calls([("check_inventory", "{not json")]),
            {"max_tool_errors": 2},
            "model output unusable: 3 unusable model outputs (max_tool_errors 2); last: arguments of "
            "check_inventory are not valid JSON",
        ),
        (s.tool_calls([CHECK]), {"max_turns": 3}, "model output unusable: no answer within max_turns=3"),
        (s.text(""), {"max_tool_errors": 1}, "the model returned neither tool calls nor an answer"),
        (
            s.status(401, body="invalid api key"),
            {},
            "model endpoint primary answered 401: the request was refused",
        ),
    ],
)
async def test_a_model_that_never_gets_it_right_ends_in_the_dlq(
    default: s.Reply, changes: dict[str, Any], detail: str, llm: s.ScriptedLLM, run: Any, nc: Client
) -> None:
    llm.default = lambda body: default
    r = await run(assistant(model(llm, **changes)))
    failed = await r.call("stock of PROD-003?", task_id="hopeless")
    assert not failed.ok
    assert failed.error is not None
    assert failed.error.startswith("rejected: ")
    assert detail in failed.error
    (letter,) = await dead_letters(nc)
    assert (letter.reason, letter.task_id, letter.attempts) == ("rejected", "hopeless", 1)
    assert detail in letter.detail
    llm.default = None
    llm.script(s.text("still here"))  # the agent did not crash: the next task is served
    assert (await r.call("hello")).output.answer == "still here"


# -- 4. 429, 5xx and the circuit breaker ---------------------------------------------------------


async def test_429_retry_after_is_honoured_inside_the_task(llm: s.ScriptedLLM, run: Any) -> None:
    r = await run(assistant(model(llm)))
    llm.script(s.status(429, retry_after="1"), s.text("after the wait"))
    result = await r.call("anything")
    assert result.ok, result.error
    assert result.attempts == 1
    assert llm.requests[1].at - llm.requests[0].at >= 1.0


def breaker_state(metrics: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith("agentbus_llm_breaker_state{"):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_breaker_opens_on_a_5xx_burst_parks_tasks_and_closes_after_recovery(
    llm: s.ScriptedLLM, run: Any
) -> None:
    down = True
    healthy = s.text("recovered")
    llm.default = lambda body: s.status(503) if down else healthy
    config = model(
        llm,
        retry=RetryConfig(attempts=2, base_s=0.02, max_s=0.1),
        breaker=BreakerConfig(failure_threshold=3, open_s=1.0),
    )
    r = await run(assistant(config))
    breaker = None
    calls = [asyncio.ensure_future(r.call(f"task {i}", tenant="acme")) for i in range(5)]
    await until(lambda: agent_of(r.spec).client is not None, "the client")
    client = agent_of(r.spec).client
    assert client is not None
    breaker = client.endpoints[0].breaker
    await until(lambda: breaker.state is BreakerState.OPEN, "the breaker to open")
    assert breaker_state(r.metrics()) == 2.0
    opened_at, seen = time.monotonic(), len(llm.requests)
    await asyncio.sleep(1.5)  # an outage longer than open_s: only probes may get through
    probes = len(llm.requests) - seen
    assert probes <= 2, f"{probes} requests reached a down endpoint in {time.monotonic() - opened_at:.1f}s"
    down = False
    results = await asyncio.gather(*calls)
    assert all(res.ok for res in results), [res.error for res in results]
    assert max(res.attempts for res in results) >= 2  # parked: nakked and redelivered, not failed
    assert breaker.state is BreakerState.CLOSED
    assert breaker_state(r.metrics()) == 0.0
    metrics = r.metrics()
    assert 'outcome="circuit_open"' in metrics
    assert 'agentbus_llm_breaker_opened_total{endpoint="' in metrics


async def test_a_down_endpoint_fails_over_to_the_fallback_and_both_are_exported(
    llm: s.ScriptedLLM, run: Any
) -> None:
    fallback = await s.ScriptedLLM().start()
    try:
        llm.default = lambda body: s.status(503)
        fallback.script(s.tool_calls([CHECK]), s.text("Yes, from the fallback."))
        reserve = ModelEndpoint(fallback.url, model="reserve-8b", api_key="sk-reserve")
        config = model(llm, fallbacks=(reserve,), breaker=BreakerConfig(failure_threshold=2, open_s=60.0))
        r = await run(assistant(config))
        result = await r.call("do we have 2 of PROD-003?")
        assert result.ok, result.error
        assert (result.attempts, result.output.answer) == (1, "Yes, from the fallback.")
        assert (len(llm.requests), len(fallback.requests)) == (2, 2)  # each call: 503, then the fallback
        assert {(q.body["model"], q.headers.get("authorization")) for q in fallback.requests} == {
            ("reserve-8b", "Bearer sk-reserve")
        }
        decisions = [e for e in result.output.audit if isinstance(e, DecisionEvent)]
        assert [d.brain for d in decisions] == ["model:reserve-8b"] * 2  # who decided, in the audit
        assert result.output.brain == "model:scripted"  # the agent's configured brain
        states = {
            line.split('endpoint="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in r.metrics().splitlines()
            if line.startswith("agentbus_llm_breaker_state{")
        }
        assert states == {llm.url.rstrip("/"): 2.0, fallback.url.rstrip("/"): 0.0}  # open, closed
    finally:
        await fallback.aclose()


# -- 5. budgets ----------------------------------------------------------------------------------


async def test_a_tenant_over_budget_is_rejected_while_others_continue(
    llm: s.ScriptedLLM, run: Any, nc: Client
) -> None:
    answer = s.text("done", usage=(10, 5))
    llm.default = lambda body: answer
    r = await run(assistant(model(llm, limits=LimitsConfig(tenant_budgets={"acme": 20}))))
    assert (await r.call("one", tenant="acme")).ok  # 15 tokens
    assert (await r.call("two", tenant="acme")).ok  # 30: over from now on
    over = await r.call("three", tenant="acme", task_id="over-budget")
    assert not over.ok
    assert over.error is not None
    assert over.error.startswith("rejected: budget exceeded: tenant 'acme' used 30 of 20 tokens")
    others = await asyncio.gather(*(r.call(f"t{i}", tenant="globex") for i in range(4)))
    assert all(o.ok for o in others)
    (letter,) = await dead_letters(nc)
    assert (letter.reason, letter.tenant, letter.task_id) == ("rejected", "acme", "over-budget")
    assert 'agentbus_llm_limited_total{kind="assistant",limit="budget",tenant="acme"} 1.0' in r.metrics()


# -- 6. what tenants see of a failing endpoint -------------------------------------------------

MARKER = "SECRET-BODY-123"
PASSWORD = "s3cr3t-PASS"


def secret_url(port: int, prefix: str = "/v1") -> str:
    """An endpoint URL as an operator may configure it: internal, with credentials and a key."""
    return f"http://opsuser:{PASSWORD}@127.0.0.1:{port}{prefix}?key=QKEY-777"


def leaks(*texts: str) -> list[str]:
    secrets = ("opsuser", PASSWORD, "QKEY-777", MARKER, "sk-LIVE-KEY", "127.0.0.1", "10.0.0.7")
    return [secret for secret in secrets for text in texts if secret in text]


async def test_a_refused_request_reaches_the_tenant_without_url_key_or_body(
    llm: s.ScriptedLLM, run: Any, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    config = LLMConfig(base_url=secret_url(llm.port), model="scripted", api_key="sk-LIVE-KEY", stream=True)
    r = await run(assistant(config))
    body = f'{{"error": "{MARKER}: key sk-LIVE-KEY for http://10.0.0.7:8000 rejected"}}'
    llm.script(s.status(401, body=body))
    events, done = await collect(nc, "acme", "refused-1")
    failed = await r.call("stock of PROD-003?", task_id="refused-1", stream=True)
    await asyncio.wait_for(done.wait(), 10)
    (letter,) = await dead_letters(nc)
    assert failed.error == (
        "rejected: model endpoint primary answered 401: the request was refused (the endpoint's"
        " answer is in the worker's log)"
    )
    assert letter.detail == failed.error.removeprefix("rejected: ")
    assert isinstance(events[-1], DoneEvent)
    assert events[-1].error == letter.detail
    seen = [msgspec.json.encode(x).decode() for x in (failed, letter, *events)]
    assert leaks(*seen) == []
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "agentbus.llm"]
    assert any("HTTP 401" in line and MARKER in line for line in logged)  # the operator's view
    assert PASSWORD not in caplog.text


async def test_an_unavailable_endpoint_dead_letters_without_url_address_or_body(
    llm: s.ScriptedLLM, run: Any, nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()  # the fallback: nothing listens, the connection is refused
    config = LLMConfig(
        base_url=secret_url(llm.port),
        fallbacks=(ModelEndpoint(secret_url(dead)),),
        model="scripted",
        stream=True,
        retry=RetryConfig(attempts=3, base_s=0.01, max_s=0.05),
        breaker=BreakerConfig(failure_threshold=1000),
    )
    r = await run(assistant(config))
    llm.default = lambda body: s.status(503, body=f"{MARKER}: upstream 10.0.0.7:8000 is down")
    events, _ = await collect(nc, "acme", "down-1")
    failed = await r.call("stock of PROD-003?", task_id="down-1", stream=True)
    (letter,) = await dead_letters(nc)
    assert (letter.reason, letter.attempts) == ("max_deliveries", 5)  # retried, as before
    assert letter.detail == (
        "failed on all 5 deliveries; last: model endpoint primary failed: HTTP 503 (attempt 3 of 3)"
    )
    assert failed.error == f"max_deliveries: {letter.detail}"
    await nc.flush()
    errors = [e.error for e in events if isinstance(e, DoneEvent)]
    assert errors == ["model endpoint primary failed: HTTP 503 (attempt 3 of 3)"] * 5
    seen = [msgspec.json.encode(x).decode() for x in (failed, letter, *events)]
    assert leaks(*seen) == []
    logged = "\n".join(rec.getMessage() for rec in caplog.records if rec.name == "agentbus.llm")
    assert logged.count("http_503") == 5  # each delivery's last failure, with the body
    assert MARKER in logged
    assert PASSWORD not in caplog.text


# -- the documented example ----------------------------------------------------------------------


async def test_docs_example_runs(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import re
    from pathlib import Path

    from conftest import ROOT

    doc = (Path(ROOT) / "docs" / "llm.md").read_text()
    source = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "task_agent(" in b)
    namespace: dict[str, Any] = {"__name__": "llm_docs_example"}
    exec(compile(source, "docs/llm.md", "exec"), namespace)
    spec = namespace["support"]
    for var in ("AGENTBUS_LLM_BASE_URL", "AGENTBUS_LLM_MODEL"):  # it reads them: offline here
        monkeypatch.delenv(var, raising=False)
    r = await run(spec)
    result = await r.pub.call("acme", "support", {"request": "how is my ticket?"}, timeout_s=30)
    assert result.ok, result.error
    assert result.output["answer"] == "Ticket T-1 is open."
