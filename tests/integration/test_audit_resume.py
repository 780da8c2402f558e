"""The decision audit of an LLM task (``agentbus audit``) and a retried LLM task that resumes.

The model is the scripted OpenAI-compatible server (``llm`` fixture); NATS is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import pytest
from conftest import ROOT
from nats.aio.client import Client

from agents.builtin.assistant import order_rules, order_tools
from agents.builtin.orders import Inventory
from agents.config import WorkerConfig
from agents.llm import LLMConfig, OfflineBrain, TaskOut, agent_of, task_agent
from agents.llm import testing as s
from agents.registry import Registry
from agents.worker import Worker
from bus.messages import StepEvent
from bus.publisher import Publisher
from bus.records import audit_records

pytestmark = pytest.mark.integration

CHECK = ("check_inventory", {"sku": "PROD-003", "quantity": 2})
CREATE = ("create_order", {"customer": "U1", "sku": "PROD-001", "quantity": 2})


def _model(server: s.ScriptedLLM) -> LLMConfig:
    return LLMConfig(base_url=server.url, model="scripted", stream=False)


async def _audit_cli(nats_url: str, task_id: str) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "agentbus", "audit", task_id, "--tenant", "acme", "--nats-url", nats_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_agentbus_audit_prints_an_llm_tasks_plan_tool_calls_and_fate(
    llm: s.ScriptedLLM, nc: Client, nats_url: str
) -> None:
    spec = task_agent(
        kind="assistant",
        tools=order_tools(Inventory()),
        offline=OfflineBrain(order_rules),
        config=_model(llm),
    )
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="w-audit"), Registry([spec]))
    await worker.start()
    try:
        llm.script(s.tool_calls([CHECK]), s.text("Yes: 5 units of PROD-003, enough for 2."))
        result = await Publisher(nc).call(
            "acme", "assistant", {"request": "is PROD-003 in stock?"}, timeout_s=30
        )
        assert result.ok
    finally:
        await worker.stop()
        await agent_of(spec).aclose()
    (record,) = await _audit_cli(nats_url, result.task_id)
    assert (record["task_id"], record["tenant"], record["kind"]) == (result.task_id, "acme", "assistant")
    assert (record["attempt"], record["worker"], record["fate"]) == (1, "w-audit", "ok")
    assert record["brain"] == "model:scripted"
    assert record["tokens"] == 30
    decision, step, answer = record["events"]
    assert decision["type"] == "decision"
    assert decision["tools"] == ["check_inventory"]
    assert step["type"] == "step"
    assert step["tool"] == "check_inventory"
    assert json.loads(step["arguments"]) == CHECK[1]
    assert step["result"] == {"available": 5, "enough": True}
    assert answer["final"] is True
    assert answer["text"] == "Yes: 5 units of PROD-003, enough for 2."
    # the audit of another tenant's task of that id: nothing
    assert await audit_records(nc.jetstream(), "other", result.task_id) == []


async def test_a_retried_llm_task_resumes_instead_of_creating_the_order_again(
    llm: s.ScriptedLLM, nc: Client, nats_url: str
) -> None:
    inventory = Inventory()
    spec = task_agent(
        kind="assistant",
        tools=order_tools(inventory),
        offline=OfflineBrain(order_rules),
        config=_model(llm),
        timeout_s=1.5,
    )
    llm.script(
        s.tool_calls([CREATE]),
        s.text("too late", delay_s=4.0),  # attempt 1 times out after its order was placed
        s.tool_calls([CREATE]),  # attempt 2: the model plans the same call again
        s.text("Order placed."),
    )
    cfg = WorkerConfig(nats_url=nats_url, http_port=-1, retry_base_s=0.05, retry_max_s=0.2)
    worker = Worker(cfg, Registry([spec]))
    await worker.start()
    try:
        result = await Publisher(nc).call(
            "acme", "assistant", {"request": "buy"}, timeout_s=30, output_type=TaskOut
        )
    finally:
        await worker.stop()
        await agent_of(spec).aclose()
    assert result.ok
    assert result.attempts == 2
    assert inventory.orders == 1  # the second attempt got the first one's order back
    assert inventory.of("acme")["PROD-001"] == 1_000_000 - 2
    assert result.output is not None
    steps = [e for e in result.output.audit if isinstance(e, StepEvent)]
    assert [(e.tool, e.ok, e.attempt) for e in steps] == [("create_order", True, 2)]
    assert steps[0].result["order_id"] == "acme-00000001"
