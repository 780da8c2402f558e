"""``agentbus publish --wait --stream`` prints a task's stream events live, then its result;
what a tenant's ``publish`` prints of a failing model endpoint (configured the ``AGENTBUS_LLM_*``
way, in a worker process) holds none of the endpoint's URL, key or body: the worker's log does."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request

import pytest
from conftest import ROOT

from agents.builtin.assistant import order_rules, order_tools
from agents.builtin.orders import Inventory
from agents.config import WorkerConfig
from agents.llm import LLMConfig, OfflineBrain, task_agent
from agents.registry import Registry
from agents.worker import Worker
from bus.embedded import free_port
from loadtest import llm_server as s

pytestmark = pytest.mark.integration


async def _publish_and_follow(request: str, nats_url: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``agentbus publish assistant REQUEST --tenant acme --wait --stream``, output piped."""
    argv = ["-m", "agentbus", "publish", "assistant", request, "--tenant", "acme", "--wait", "--stream"]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        "--nats-url",
        nats_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


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
        proc = await _publish_and_follow('{"request": "customer U9 buys 3 of PROD-002"}', nats_url, env)
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


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


async def test_a_tenant_sees_no_url_key_or_body_of_a_failing_model_the_worker_log_does(
    nats_url: str,
) -> None:
    marker, password = "SECRET-BODY-123", "s3cr3t-PASS"
    llm = await s.ScriptedLLM().start()
    llm.default = lambda body: s.status(401, body=f'{{"error": "{marker}: key sk-LIVE-KEY is not valid"}}')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env["PYTHONPATH"] = str(ROOT)
    worker_env = env | {
        "AGENTBUS_LLM_BASE_URL": f"http://opsuser:{password}@127.0.0.1:{llm.port}/v1?key=QKEY-777",
        "AGENTBUS_LLM_MODEL": "scripted",
        "AGENTBUS_LLM_API_KEY": "sk-LIVE-KEY",
    }
    argv = [
        "-m",
        "agentbus",
        "worker",
        "--nats-url",
        nats_url,
        "--http-port",
        str(port),
        "--agents",
        "agents.builtin.assistant",
    ]
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        env=worker_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(600):
            if await asyncio.to_thread(_ready, port):
                break
            assert worker.returncode is None, "the worker exited"
            await asyncio.sleep(0.05)
        publish = await _publish_and_follow('{"request": "stock of PROD-003?"}', nats_url, env)
        out, err = await asyncio.wait_for(publish.communicate(), 60)
    finally:
        if worker.returncode is None:
            worker.terminate()
        log = (await asyncio.wait_for(worker.communicate(), 60))[0].decode()
        await llm.aclose()
    seen = out.decode() + err.decode()
    *events, result = [json.loads(line) for line in out.decode().splitlines()]
    assert result["ok"] is False
    assert result["error"] == (
        "rejected: model endpoint primary answered 401: the request was refused (the endpoint's"
        " answer is in the worker's log)"
    )
    assert events[-1]["type"] == "done"
    assert events[-1]["error"] == result["error"].removeprefix("rejected: ")
    for secret in ("opsuser", password, "QKEY-777", marker, "sk-LIVE-KEY", "127.0.0.1"):
        assert secret not in seen
        if secret not in (marker, "127.0.0.1"):
            assert secret not in log  # the operator's log names the endpoint redacted
    assert "HTTP 401" in log
    assert marker in log
    assert f"http://***@127.0.0.1:{llm.port}/v1?***" in log
