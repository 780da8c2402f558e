"""The LLM benchmark's anchor (``python -m loadtest.llm_raw``) end to end.

A real nats-server, the scripted model on loopback, tasks published with agentbus's
Publisher and the anchor as a subprocess: every task must be answered and acked, and
the model must have been sent what the ``assistant`` agent sends (its system prompt and
tool specs), or the benchmark compares two different workloads.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from agents.builtin.assistant import assistant
from agents.llm.agent import agent_of
from agents.llm.planner import SYSTEM_PROMPT
from agents.llm.testing import ScriptedLLM, bench_model
from bus.publisher import Publisher, TaskSpec
from bus.topology import TASKS_STREAM, ConsumerSpec, consumer_name, ensure_consumer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KIND = "assistant-raw"
TENANT = "bench"
REQUEST = "customer U1 buys 1 of PROD-001"
ANSWER = "There are enough units of PROD-001."  # bench_model's second reply
TASKS = 20
EXIT_BOUND_S = 60.0  # liveness only: 20 tasks take well under a second


@pytest.fixture
async def model() -> AsyncIterator[ScriptedLLM]:
    server = await ScriptedLLM(default=bench_model(0.0), record=True).start()
    try:
        yield server
    finally:
        await server.aclose()


async def _run_anchor(nats_url: str, model_url: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.llm_raw",
        "--nats-url",
        nats_url,
        "--model-url",
        model_url,
        "--kind",
        KIND,
        "--tasks",
        str(TASKS),
        "--inflight",
        "8",
        "--batch",
        "5",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), EXIT_BOUND_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"the anchor did not exit within {EXIT_BOUND_S} s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_anchor_answers_every_task_with_the_assistants_prompt_and_tools(
    nats_url: str, nc: Client, model: ScriptedLLM
) -> None:
    js = nc.jetstream()
    await ensure_consumer(js, ConsumerSpec(kind=KIND))
    results: list[tuple[str, dict[str, Any]]] = []
    got_all = asyncio.Event()

    async def on_result(msg: Msg) -> None:
        results.append((msg.subject, json.loads(msg.data)))
        if len(results) >= TASKS:
            got_all.set()

    sub = await nc.subscribe(f"results.{TENANT}.*", cb=on_result)
    await nc.flush()
    ids = [f"anchor-{i}" for i in range(TASKS)]
    payload = {"request": REQUEST}
    refs = await Publisher(nc).submit_many(TaskSpec(TENANT, KIND, payload, task_id=t) for t in ids)
    assert len(refs) == TASKS

    code, out, err = await _run_anchor(nats_url, model.url)

    assert code == 0, err
    assert out.splitlines() == ["ready"]
    await asyncio.wait_for(got_all.wait(), EXIT_BOUND_S)  # published and flushed before it exited
    await sub.unsubscribe()

    # every task answered once, with the scripted model's answer
    assert sorted(subject for subject, _ in results) == sorted(f"results.{TENANT}.{t}" for t in ids)
    for subject, result in results:
        assert result == {
            "task_id": subject.rsplit(".", 1)[1],
            "ok": True,
            "output": {"answer": ANSWER},
        }

    # every task acked: nothing pending, nothing awaiting an ack
    info = await js.consumer_info(TASKS_STREAM, consumer_name(KIND))
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    assert info.ack_floor is not None
    assert info.ack_floor.consumer_seq == TASKS

    # two model calls per task, each with the assistant agent's system prompt and tool specs
    toolbox = agent_of(assistant).tools
    expected_tools = msgspec.to_builtins(toolbox.specs)
    system = {"role": "system", "content": SYSTEM_PROMPT.format(tenant=TENANT)}
    bodies = [r.body for r in model.requests]
    assert len(bodies) == 2 * TASKS
    for body in bodies:
        assert [t["function"]["name"] for t in body["tools"]] == toolbox.names
        assert body["tools"] == expected_tools
        assert body["messages"][:2] == [system, {"role": "user", "content": REQUEST}]
    plans = [b for b in bodies if len(b["messages"]) == 2]
    answers = [b for b in bodies if len(b["messages"]) > 2]
    assert len(plans) == len(answers) == TASKS
    for body in answers:  # the plan's tool call, then its result, as the agent sends them
        _, _, called, tool = body["messages"]
        assert called["role"] == "assistant"
        assert [c["function"]["name"] for c in called["tool_calls"]] == ["check_inventory"]
        assert tool == {
            "role": "tool",
            "tool_call_id": called["tool_calls"][0]["id"],
            "content": '{"available":100,"enough":true}',
        }
