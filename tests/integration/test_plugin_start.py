"""Plugins are configured at start: a bad ``AGENTBUS_LLM_BASE_URL`` stops the worker before it
takes a task (exit 78, the variable named, readiness never green), instead of burning every
task's retries into the DLQ while ``/readyz`` says ready."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from conftest import ROOT
from nats.aio.client import Client

from agentbus.errors import ConfigError
from agents import Context, Services, agent
from agents.builtin.basic import EchoIn, EchoOut
from agents.config import WorkerConfig
from agents.registry import Registry
from agents.worker import Worker
from bus.messages import Task, encode
from bus.subjects import task_subject
from bus.topology import DLQ_STREAM, TASKS_STREAM, ensure_streams

pytestmark = pytest.mark.integration


async def test_a_bad_llm_base_url_stops_the_worker_at_start_with_no_task_taken(
    nats_url: str, nc: Client
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)
    task = Task(id="t-bad-url-1", tenant="acme", kind="assistant", payload={"request": "hello"})
    await js.publish(task_subject("acme", "assistant"), encode(task), headers={"Nats-Msg-Id": task.id})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT)
    env["AGENTBUS_LLM_BASE_URL"] = "ftp://models.internal/v1"
    env["AGENTBUS_LLM_MODEL"] = "m"
    proc = await asyncio.create_subprocess_exec(
        *(
            sys.executable,
            "-m",
            "agentbus",
            "worker",
            "--nats-url",
            nats_url,
            "--agents",
            "agents.builtin.assistant",
        ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 60)
    stderr = err_bytes.decode()
    assert proc.returncode == 78, stderr
    assert "AGENTBUS_LLM_BASE_URL" in stderr
    assert "ftp://models.internal/v1" in stderr  # what was wrong, shown (no secret in this one)
    tasks = await js.stream_info(TASKS_STREAM)
    assert tasks.state.messages == 1  # the task is still there for a correctly configured worker
    consumers = await js.consumers_info(TASKS_STREAM)
    assert [c.name for c in consumers] == []  # never subscribed: nothing delivered, nothing counted
    dlq = await js.stream_info(DLQ_STREAM)
    assert dlq.state.messages == 0


async def test_on_start_runs_before_the_first_task_and_on_stop_after_the_drain(nats_url: str) -> None:
    seen: list[str] = []

    async def start(services: Services) -> None:
        assert services.stores is not None
        services.stores("acme").counter("boots").increment()
        seen.append(f"start {services.worker}")

    async def stop() -> None:
        seen.append("stop")

    @agent(kind="echo", input=EchoIn, output=EchoOut, on_start=start, on_stop=stop)
    async def echo(ctx: Context, task: EchoIn) -> EchoOut:
        return EchoOut(text=task.text, tenant="", attempt=1)

    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="w9"), Registry([echo]))
    await worker.start()
    assert seen == ["start w9"]
    assert worker.state.replica.store("acme").counter("boots").value == 1
    await worker.stop()
    assert seen == ["start w9", "stop"]


async def test_an_on_start_that_raises_stops_the_started_ones_and_connects_nowhere() -> None:
    seen: list[str] = []

    async def good_start(services: Services) -> None:
        seen.append("good start")

    async def good_stop() -> None:
        seen.append("good stop")

    async def bad_start(services: Services) -> None:
        raise ConfigError("AGENTBUS_THING is not a thing")

    @agent(kind="a", input=EchoIn, output=EchoIn, on_start=good_start, on_stop=good_stop)
    async def a(ctx: Context, task: EchoIn) -> EchoIn:
        return task

    @agent(kind="b", input=EchoIn, output=EchoIn, on_start=bad_start)
    async def b(ctx: Context, task: EchoIn) -> EchoIn:
        return task

    # nothing listens on port 9: the start must fail before it tries
    worker = Worker(WorkerConfig(nats_url="nats://127.0.0.1:9", http_port=-1), Registry([a, b]))
    with pytest.raises(ConfigError, match="AGENTBUS_THING"):
        await worker.start()
    assert seen == ["good start", "good stop"]
    assert worker.http is None
