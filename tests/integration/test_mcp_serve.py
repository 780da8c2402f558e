"""``agentbus mcp serve`` driven by the MCP SDK's client, over stdio and streamable HTTP: the
agent kinds are tools with their input schemas, a call is a task of the served tenant (never
the client's choice) answered with its result, stream events arrive as progress, and bad
arguments or a failed task are tool errors."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from conftest import ROOT
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from agents.builtin.assistant import assistant
from agents.builtin.basic import echo
from agents.config import WorkerConfig
from agents.registry import Registry
from agents.worker import Worker

pytestmark = pytest.mark.integration

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture
async def worker(nats_url: str) -> AsyncIterator[Worker]:
    w = Worker(WorkerConfig(nats_url=nats_url, http_port=-1, max_deliver=1), Registry([echo, assistant]))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


def serve_argv(nats_url: str, *extra: str) -> list[str]:
    return [
        "-m",
        "agentbus",
        "mcp",
        "serve",
        "--agents",
        "agents.builtin.basic,agents.builtin.assistant",
        "--kind",
        "echo",
        "--kind",
        "assistant",
        "--tenant",
        "acme",
        "--nats-url",
        nats_url,
        *extra,
    ]


async def test_mcp_serve_over_stdio(worker: Worker, nats_url: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=serve_argv(nats_url), env=ENV)
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with Client(params) as client:
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert set(listed) == {"echo", "assistant"}
        schema = listed["echo"].input_schema
        assert schema["type"] == "object"
        assert schema["required"] == ["text"]
        assert schema["properties"]["sleep_s"]["type"] == "number"

        # the tenant is the server's: a "tenant" argument is no field of the input, and ignored
        echoed = await client.call_tool("echo", {"text": "hi", "tenant": "globex"})
        assert not echoed.is_error, echoed.content
        assert echoed.structured_content == {"text": "hi", "tenant": "acme", "attempt": 1}

        bad = await client.call_tool("echo", {"text": 3})
        assert bad.is_error
        assert "invalid arguments for echo" in _text(bad)
        unknown = await client.call_tool("shell", {})
        assert unknown.is_error
        failed = await client.call_tool("echo", {"text": "x", "fail": "always"})
        assert failed.is_error
        assert "failed" in _text(failed)

        order = await client.call_tool(
            "assistant", {"request": "customer U1 buys 2 of PROD-001"}, progress_callback=on_progress
        )
        assert not order.is_error, order.content
        assert order.structured_content is not None
        assert order.structured_content["answer"].startswith("Order acme-")
    messages = [m or "" for _, m in seen]
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert messages[:4] == [
        "turn 0: check_inventory",
        "check_inventory: ok",
        "turn 1: create_order",
        "create_order: ok",
    ]
    # the answer's tokens as the brain streams them, then the decision that it was the answer
    assert "".join(messages[4:-1]) == order.structured_content["answer"]
    assert messages[-1] == "turn 2: answer"


def _text(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_mcp_serve_over_http_with_a_token(worker: Worker, nats_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *serve_argv(nats_url, "--transport", "http"),
        stdout=asyncio.subprocess.PIPE,
        env={**ENV, "AGENTBUS_MCP_SERVE_TOKEN": "s3cret"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("listening http://127.0.0.1:"), line
        url = line.split()[1]
        ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        async with httpx2.AsyncClient() as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                refused = await http.post(url, json=ping, headers=headers)
                assert refused.status_code == 401
        http = httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"echo", "assistant"}
            echoed = await client.call_tool("echo", {"text": "over http"})
            assert echoed.structured_content == {"text": "over http", "tenant": "acme", "attempt": 1}
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


def test_mcp_serve_refuses_http_beyond_loopback_without_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentbus.cli import main

    monkeypatch.delenv("AGENTBUS_MCP_SERVE_TOKEN", raising=False)
    argv = [*serve_argv("nats://127.0.0.1:9")[2:], "--transport", "http", "--host", "0.0.0.0"]
    assert main(argv) == 2
    assert "needs AGENTBUS_MCP_SERVE_TOKEN" in capsys.readouterr().err


def test_mcp_serve_refuses_a_bad_tenant_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    from agentbus.cli import main

    # nothing listens on port 9: a connection attempt would fail differently
    argv = [*serve_argv("nats://127.0.0.1:9")[2:-4], "--tenant", "a.*", "--nats-url", "nats://127.0.0.1:9"]
    assert main(argv) == 1
    assert "invalid tenant" in capsys.readouterr().err
