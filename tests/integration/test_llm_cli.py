"""``agentbus publish --wait --stream`` prints a task's stream events live, then its result."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest
from conftest import ROOT

from agents.builtin.assistant import order_rules, order_tools
from agents.builtin.orders import Inventory
from agents.config import WorkerConfig
from agents.llm import LLMConfig, OfflineBrain, task_agent
from agents.registry import Registry
from agents.worker import Worker

pytestmark = pytest.mark.integration


async def test_publish_wait_stream_prints_events_then_the_result(nats_url: str) -> None:
    spec = task_agent(
        kind="assistant",
        tools=order_tools(Inventory()),
        offline=OfflineBrain(order_rules),
        config=LLMConfig(),
    )
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1), Registry([spec]))
    await worker.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentbus",
            "publish",
            "assistant",
            '{"request": "customer U9 buys 3 of PROD-002"}',
            "--tenant",
            "acme",
            "--wait",
            "--stream",
            "--nats-url",
            nats_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await worker.stop()
    assert proc.returncode == 0, err.decode()
    *events, result = [json.loads(line) for line in out.decode().splitlines()]
    assert result["ok"] is True
    answer = result["output"]["answer"]
    assert answer == "Order acme-00000001 created: 3 x PROD-002 for customer U9; 499997 left in stock."
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1] == {"type": "done", "seq": len(events), "ok": True}
    last_turn = result["output"]["turns"] - 1
    assert (
        "".join(e["text"] for e in events if e["type"] == "token" and e.get("turn", 0) == last_turn) == answer
    )
    assert [e["tool"] for e in events if e["type"] == "step"] == ["check_inventory", "create_order"]


def test_publish_stream_without_wait_is_refused_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    from agents.cli import main

    # nothing listens on port 9: a connection attempt would fail differently (and slowly)
    assert main(["publish", "assistant", "{}", "--stream", "--nats-url", "nats://127.0.0.1:9"]) == 2
    assert "--stream needs --wait" in capsys.readouterr().err
