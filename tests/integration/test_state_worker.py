"""Shared tenant state inside real workers (issue 3, the product part), over a real nats-server.

* handlers on two workers increment their tenant's counters through ``ctx.state``
  and every worker converges to the exact totals; a handler of tenant A sees none of
  B's state, cannot write agentbus's reserved counters and has no call naming a tenant;
* the usage counters (tasks completed and failed) and the live-agents set converge,
  and a drained worker's counts stay while its name leaves the set;
* two workers' LLM agents spend one cluster-wide token budget per tenant (a real
  scripted OpenAI-compatible server);
* with a real redis-server: a new worker starts from the snapshots of the ones
  before it, and a worker started while Redis is down serves tasks at once and
  merges the snapshots once Redis is back.

Workers run in this process (``Worker``), each with its own NATS connection and
gossip node, on the ``test`` gossip preset.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from conftest import RedisServer, async_wait_until
from helpers_a import consumer_totals, poll
from nats.aio.client import Client

from agentbus.errors import Reject
from agents.api import AgentSpec, Context, agent
from agents.builtin.assistant import order_rules, order_tools
from agents.builtin.orders import Inventory
from agents.config import WorkerConfig
from agents.llm import LimitsConfig, LLMConfig, OfflineBrain, TaskOut, agent_of, task_agent
from agents.llm import testing as s
from agents.llm.shared_limits import SharedLimits
from agents.registry import Registry
from agents.worker import Worker
from bus.publisher import Publisher
from state.store import Store

pytestmark = pytest.mark.integration


class Bump(msgspec.Struct):
    name: str
    by: int = 1
    fail: bool = False


class Seen(msgspec.Struct):
    tenant: str
    value: int
    names: dict[str, str]
    snapshot: dict[str, Any]


@agent(kind="bump", input=Bump, output=Seen, max_inflight=4)
async def bump(ctx: Context, task: Bump) -> Seen:
    if task.fail:
        raise Reject("asked to fail")
    store = ctx.state
    store.counter(task.name).increment(task.by)
    await asyncio.sleep(0)  # let the other worker take tasks too
    return Seen(ctx.tenant, store.counter(task.name).value, store.names(), store.snapshot())


class Forge(msgspec.Struct):
    name: str


@agent(kind="forge", input=Forge, output=Seen)
async def forge(ctx: Context, task: Forge) -> Seen:
    ctx.state.counter(task.name).increment(10**6)  # a reserved name: ValueError, then a retry
    return Seen(ctx.tenant, 0, {}, {})


Start = Callable[..., Any]


@pytest.fixture
async def start(nats_url: str, nc: Client) -> AsyncIterator[Start]:
    """``await start("w1", specs, **config)``: a running in-process worker, drained after the test."""
    workers: list[Worker] = []

    async def run(name: str, specs: list[AgentSpec[Any, Any]], **changes: Any) -> Worker:
        config = WorkerConfig(
            nats_url=nats_url,
            worker_id=name,
            http_port=-1,
            gossip_preset="test",
            retry_base_s=0.05,
            retry_max_s=0.2,
            max_deliver=2,
            **changes,
        )
        worker = Worker(config, Registry(specs))
        await worker.start()
        workers.append(worker)
        return worker

    yield run
    for worker in workers:
        await worker.stop()


def values(workers: list[Worker], tenant: str, name: str) -> set[int]:
    return {w.state.replica.store(tenant).counter(name).value for w in workers}


async def test_handlers_on_two_workers_share_their_tenants_counters(start: Start, nc: Client) -> None:
    workers = [await start("w1", [bump, forge]), await start("w2", [bump, forge])]
    pub = Publisher(nc)
    # a tenant's consumer exists once it has tasks (docs/fairness.md): one task each first, then
    # both workers find both tenants (a standing pull request each), so both take part
    warm = [
        pub.call("acme", "bump", {"name": "hits", "by": 1}, timeout_s=20),
        pub.call("globex", "bump", {"name": "secret", "by": 1000}, timeout_s=20),
    ]
    assert all(r.ok for r in await asyncio.gather(*warm))
    await poll(lambda: _waiting(nc, "bump", 4), what="both workers' pull requests for both tenants")
    acme = [
        pub.call("acme", "bump", {"name": "hits", "by": 1}, timeout_s=20, output_type=Seen) for _ in range(59)
    ]
    globex = [pub.call("globex", "bump", {"name": "secret", "by": 1000}, timeout_s=20) for _ in range(4)]
    results = await asyncio.gather(*acme, *globex)
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert {r.worker for r in results} == {"w1", "w2"}  # both did some of the work
    await async_wait_until(lambda: values(workers, "acme", "hits") == {60}, 10, "acme's totals everywhere")
    await async_wait_until(lambda: values(workers, "globex", "secret") == {5000}, 10, "globex's totals")

    # tenant A's handlers see only A: the store is A's, B's names do not exist in it
    seen = await pub.call("acme", "bump", {"name": "secret", "by": 1}, timeout_s=20, output_type=Seen)
    assert seen.ok
    assert seen.output is not None
    assert seen.output.tenant == "acme"
    assert seen.output.value == 1  # acme's own "secret", not globex's 5000
    assert {n for n in seen.output.snapshot if not n.startswith("~")} == {"hits", "secret"}
    for w in workers:
        assert "hits" not in w.state.replica.store("globex").names()
    # ... and cannot name another tenant: neither the context nor the store takes one
    for obj in (Context, Store):
        for name, member in inspect.getmembers(obj):
            if not name.startswith("_") and callable(member):
                assert "tenant" not in inspect.signature(member).parameters, f"{obj.__name__}.{name}"
    # ... nor forge agentbus's own counters
    forged = await pub.call("acme", "forge", {"name": "~tasks_completed"}, timeout_s=20)
    assert not forged.ok
    assert forged.error is not None
    assert "reserved for agentbus" in forged.error


async def _waiting(nc: Client, kind: str, n: int) -> bool:
    return (await consumer_totals(nc, kind)).num_waiting >= n


async def test_usage_counters_and_live_agents_converge_and_survive_a_drain(start: Start, nc: Client) -> None:
    w1, w2 = await start("w1", [bump]), await start("w2", [bump])
    workers = [w1, w2]
    await async_wait_until(
        lambda: all(w.state.replica.live_agents.members() == {"w1", "w2"} for w in workers), 10, "live agents"
    )
    pub = Publisher(nc)
    done = await asyncio.gather(
        *(pub.call("acme", "bump", {"name": "n"}, timeout_s=20) for _ in range(30)),
        *(pub.call("acme", "bump", {"name": "n", "fail": True}, timeout_s=20) for _ in range(2)),
        *(pub.call("initech", "bump", {"name": "n"}, timeout_s=20) for _ in range(7)),
    )
    assert sum(r.ok for r in done) == 37
    want = {
        "acme": {"tasks_completed": 30, "tasks_failed": 2, "llm_tokens": 0},
        "initech": {"tasks_completed": 7, "tasks_failed": 0, "llm_tokens": 0},
    }

    def usage(w: Worker) -> dict[str, dict[str, int]]:
        return {t: w.state.replica.usage(t) for t in w.state.replica.tenants()}

    await async_wait_until(lambda: all(usage(w) == want for w in workers), 10, "usage on every worker")
    report = w1.state.report()
    assert report.live_agents == ["w1", "w2"]
    assert report.tenants["acme"].tasks_failed == 2

    await w2.stop()  # drain: its counts stay (handed to w1), its name leaves the set
    await async_wait_until(lambda: w1.state.replica.live_agents.members() == {"w1"}, 10, "w2 gone")
    assert usage(w1) == want

    # a worker that dies without a goodbye: in the set until pruned, out of the status once dead
    w3 = await start("w3", [bump])
    await async_wait_until(lambda: w1.state.live_agents() == ["w1", "w3"], 10, "w3 live")
    assert w3.state.gossip is not None
    await w3.state.gossip.stop(leave=False)  # silent, as after kill -9
    await async_wait_until(lambda: w1.state.live_agents() == ["w1"], 20, "w3 declared dead")
    assert w1.state.replica.live_agents.members() == {"w1", "w3"}


async def test_two_workers_spend_one_llm_token_budget_per_tenant(start: Start, nc: Client) -> None:
    llm = await s.ScriptedLLM().start()
    try:
        answer = s.text("done", usage=(10, 5))  # 15 tokens a call
        llm.default = lambda body: answer
        config = LLMConfig(
            base_url=llm.url, model="scripted", stream=False, limits=LimitsConfig(tenant_budgets={"acme": 20})
        )

        def assistant(kind: str) -> AgentSpec[Any, Any]:
            tools = order_tools(Inventory())
            return task_agent(kind=kind, tools=tools, offline=OfflineBrain(order_rules), config=config)

        a, b = assistant("assist-a"), assistant("assist-b")
        w1, w2 = await start("w1", [a]), await start("w2", [b])  # each kind on its own worker
        pub = Publisher(nc)

        async def ask(kind: str, tenant: str = "acme") -> Any:
            return await pub.call(tenant, kind, {"request": "hi"}, timeout_s=20, output_type=TaskOut)

        assert (await ask("assist-a")).ok  # 15 of 20
        assert (await ask("assist-a")).ok  # 30: over from now on, cluster-wide
        assert isinstance(agent_of(a).limits, SharedLimits)
        budget_b = agent_of(b)
        budget_b.setup()
        assert isinstance(budget_b.limits, SharedLimits)
        acme_b = budget_b.limits.budget("acme")
        assert acme_b is not None
        await async_wait_until(lambda: acme_b.spent == 30, 10, "w2 seeing w1's spending")
        refused = await ask("assist-b")  # w2 never spent a token itself
        assert not refused.ok
        assert refused.error is not None
        assert refused.error.startswith("rejected: budget exceeded: tenant 'acme' used 30 of 20 tokens")
        assert (await ask("assist-b", tenant="globex")).ok  # other tenants go on
        await async_wait_until(
            lambda: {w.state.replica.usage("acme")["llm_tokens"] for w in (w1, w2)} == {30},
            10,
            "the token usage counter on both workers",
        )
    finally:
        await llm.aclose()


async def test_a_new_worker_starts_from_redis_and_one_started_while_redis_is_down_catches_up(
    start: Start, nc: Client, redis_server: RedisServer
) -> None:
    pub = Publisher(nc)
    first = await start("first", [bump], redis_url=redis_server.url)
    for _ in range(5):
        assert (await pub.call("acme", "bump", {"name": "hits", "by": 2}, timeout_s=20)).ok
    await first.stop()  # flushes its snapshot; no worker is left to gossip with

    second = await start("second", [bump], redis_url=redis_server.url)
    assert second.state.loaded
    assert second.state.replica.store("acme").counter("hits").value == 10  # from Redis, at start
    assert second.state.replica.usage("acme")["tasks_completed"] == 5
    await second.stop()

    redis_server.kill()
    third = await start("third", [bump], redis_url=redis_server.url)  # Redis down: serves anyway
    assert not third.state.loaded
    done = await pub.call("acme", "bump", {"name": "hits", "by": 1}, timeout_s=20, output_type=Seen)
    assert done.ok
    assert done.output is not None
    assert done.output.value == 1  # only its own count so far
    redis_server.start()
    await async_wait_until(lambda: third.state.loaded, 30, "the background load once Redis is back")
    assert third.state.replica.store("acme").counter("hits").value == 11
    assert third.state.replica.usage("acme")["tasks_completed"] == 6


async def test_docs_example_runs(start: Start, nc: Client) -> None:
    import re
    from pathlib import Path

    from conftest import ROOT

    doc = (Path(ROOT) / "docs" / "state.md").read_text()
    source = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "ctx.state" in b)
    namespace: dict[str, Any] = {"__name__": "state_docs_example"}
    exec(compile(source, "docs/state.md", "exec"), namespace)
    await start("w1", [namespace["visit"]])
    pub = Publisher(nc)
    for user in ("ann", "bob", "ann"):
        result = await pub.call("acme", "visit", {"page": "home", "user": user}, timeout_s=20)
        assert result.ok, result.error
    assert result.output == {"views": 3, "visitors": 2}


async def test_state_metrics_show_peers_gossip_and_redis(
    start: Start, nc: Client, redis_server: RedisServer
) -> None:
    """``agentbus_state_*`` as a scrape reads them, through a peer joining, leaving and Redis dying."""
    a = await start("a", [bump], redis_url=redis_server.url)
    b = await start("b", [bump], redis_url=redis_server.url)

    def sample(worker: Worker, name: str, **labels: str) -> float | None:
        return worker.metrics.get_sample_value(name, labels)

    def peers(worker: Worker, state: str) -> float | None:
        return sample(worker, "agentbus_state_gossip_peers", state=state)

    await async_wait_until(lambda: peers(a, "alive") == 1 == peers(b, "alive"), 30, "each sees the other")
    pub = Publisher(nc)
    for _ in range(4):
        assert (await pub.call("acme", "bump", {"name": "hits"}, timeout_s=20)).ok
    await async_wait_until(
        lambda: values([a, b], "acme", "hits") == {4}, 30, "both replicas counting the same 4 hits"
    )
    for worker in (a, b):
        assert sample(worker, "agentbus_state_tenants") == 1
        assert sample(worker, "agentbus_state_live_agents") == 2
        assert (sample(worker, "agentbus_state_gossip_packets_total", direction="sent") or 0) > 0
        assert (sample(worker, "agentbus_state_gossip_packets_total", direction="received") or 0) > 0
        assert (sample(worker, "agentbus_state_gossip_merges_total", kind="delta") or 0) > 0
        assert sample(worker, "agentbus_state_gossip_errors_total", reason="merge_error") == 0
        assert sample(worker, "agentbus_state_redis_loaded") == 1
        assert sample(worker, "agentbus_state_redis_write_ok") == 1

    await b.stop()  # leaves gossip on its way out
    await async_wait_until(lambda: peers(a, "left") == 1 and peers(a, "alive") == 0, 30, "b has left")
    assert sample(a, "agentbus_state_live_agents") == 1

    redis_server.kill()
    assert (await pub.call("acme", "bump", {"name": "hits"}, timeout_s=20)).ok  # a change to write
    await async_wait_until(lambda: sample(a, "agentbus_state_redis_write_ok") == 0, 30, "a failed write")
    redis_server.start()
    await async_wait_until(lambda: sample(a, "agentbus_state_redis_write_ok") == 1, 30, "writes again")
