"""``agents.testing``: an agent's handler in-process, with a real Context, the worker's fates and no
server; the README's agent example is tested with it as printed."""

from __future__ import annotations

import asyncio
import re
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agents import Context, Reject, Retry, Services, agent, current_tenant
from agents.testing import AgentTester, PublishedTask
from bus.messages import DlqReason

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


async def test_the_readme_agent_example_passes_its_readme_test() -> None:
    blocks = _readme_blocks()
    agent_source = next(b for b in blocks if "@agent(" in b)
    test_source = next(b for b in blocks if "AgentTester(" in b)
    module = types.ModuleType("readme_example")
    exec(compile(agent_source, str(README), "exec"), module.__dict__)
    exec(compile(test_source, str(README), "exec"), module.__dict__)
    await module.test_answer()


class Item(msgspec.Struct):
    name: str
    n: int = 1


class Counted(msgspec.Struct):
    tenant: str
    total: int


@agent(kind="count", input=Item, output=Counted, timeout_s=0.2)
async def count(ctx: Context, task: Item) -> Counted:
    if task.name == "slow":
        await asyncio.sleep(10)
    if task.name == "boom":
        raise RuntimeError("downstream broke")
    counter = ctx.state.counter(task.name)
    counter.increment(task.n)
    await ctx.stream({"seen": task.name, "tenant": current_tenant()})
    if task.n > 1:
        await ctx.publish("audit", {"name": task.name}, task_id=f"{ctx.task_id}-audit")
    return Counted(tenant=ctx.tenant, total=counter.value)


async def test_state_is_per_tenant_and_the_scope_is_the_tasks_tenant() -> None:
    async with AgentTester(count) as tester:
        first = await tester.run(Item("apples", 2), tenant="acme", stream=True)
        second = await tester.run({"name": "apples"}, tenant="acme")
        other = await tester.run({"name": "apples"}, tenant="globex")
    assert first.output == Counted("acme", 2)
    assert second.output == Counted("acme", 3)
    assert other.output == Counted("globex", 1)  # another tenant's store
    assert first.events == [{"seen": "apples", "tenant": "acme"}]
    assert second.events == []  # not followed: ctx.stream sends nothing
    assert tester.state("acme").counter("apples").value == 3


async def test_publish_records_follow_up_tasks_and_drops_a_repeated_id() -> None:
    async with AgentTester(count) as tester:
        await tester.run({"name": "pears", "n": 2}, tenant="acme", task_id="t1")
        await tester.run({"name": "pears", "n": 2}, tenant="acme", task_id="t1")  # a redelivery
    assert tester.published == [PublishedTask("acme", "audit", {"name": "pears"}, "t1-audit")]


async def test_fates_follow_the_worker_rules() -> None:
    async with AgentTester(count, max_deliver=3) as tester:
        invalid = await tester.run({"name": 5}, tenant="acme")
        timeouts = await tester.run_until_settled({"name": "slow"}, tenant="acme")
        broken = await tester.run({"name": "boom"}, tenant="acme", attempt=1)
    assert (invalid.fate, invalid.reason) == ("dead_letter", DlqReason.INVALID_PAYLOAD)
    assert [o.fate for o in timeouts] == ["retry", "retry", "dead_letter"]
    assert timeouts[0].detail == "timed out after 0.2s"
    assert timeouts[-1].reason == DlqReason.MAX_DELIVERIES
    assert [o.attempt for o in timeouts] == [1, 2, 3]
    assert (broken.fate, broken.delay_s) == ("retry", None)  # the worker's backoff decides
    assert broken.detail == "RuntimeError: downstream broke"
    assert isinstance(broken.error, RuntimeError)


async def test_on_start_and_on_stop_run_around_the_tasks() -> None:
    calls: list[str] = []

    async def start(services: Services) -> None:
        calls.append(f"start {services.worker}")

    async def stop() -> None:
        calls.append("stop")

    @agent(kind="hooks", input=Item, output=Item, on_start=start, on_stop=stop)
    async def hooks(ctx: Context, task: Item) -> Item:
        calls.append(f"task {task.name}")
        if task.name == "no":
            raise Reject("said no")
        raise Retry("later", delay_s=1.5)

    tester: AgentTester[Any] = AgentTester(hooks, worker="w7")
    with pytest.raises(RuntimeError, match="async with"):
        await tester.run({"name": "x"}, tenant="acme")
    async with tester:
        later = await tester.run({"name": "x"}, tenant="acme")
        no = await tester.run({"name": "no"}, tenant="acme")
    assert calls == ["start w7", "task x", "task no", "stop"]
    assert (later.fate, later.delay_s, later.detail) == ("retry", 1.5, "later")
    assert (no.fate, no.reason, no.detail) == ("dead_letter", DlqReason.REJECTED, "said no")


async def test_an_llm_agent_runs_in_the_tester_with_its_plugin_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentbus.errors import ConfigError
    from agents.builtin.assistant import order_rules, order_tools
    from agents.builtin.orders import Inventory
    from agents.llm import OfflineBrain, task_agent
    from agents.llm.shared_limits import SharedLimits

    for var in ("AGENTBUS_LLM_BASE_URL", "AGENTBUS_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    spec = task_agent(kind="assistant", tools=order_tools(Inventory()), offline=OfflineBrain(order_rules))
    async with AgentTester(spec) as tester:
        outcome = await tester.run({"request": "customer U1 buys 1 of PROD-001"}, tenant="acme", stream=True)
    assert outcome.fate == "ok"
    assert outcome.output is not None
    assert outcome.output.answer.startswith("Order acme-00000001 created: 1 x PROD-001")
    assert outcome.events[-1] == {"type": "done", "seq": len(outcome.events), "ok": True}
    assert isinstance(spec.handler.__self__.limits, SharedLimits)  # type: ignore[attr-defined]
    assert spec.handler.__self__.tokens["acme"] > 0  # type: ignore[attr-defined]  # what on_start gave to count

    monkeypatch.setenv("AGENTBUS_LLM_BASE_URL", "model-host:8000")
    bad = task_agent(kind="assistant", tools=order_tools(Inventory()), offline=OfflineBrain(order_rules))
    with pytest.raises(ConfigError, match="AGENTBUS_LLM_BASE_URL"):
        async with AgentTester(bad):
            pass
