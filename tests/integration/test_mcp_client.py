"""MCP tools in an LLM agent's toolbox, against real MCP servers (the SDK's server API, started
as subprocesses by the test) over stdio and streamable HTTP: schemas to the model, arguments
validated before sending, results and errors back, timeouts, the breaker, a session reused and
reopened, tenant scoping, and a worker that has MCP servers configured but no ``mcp`` package."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from prometheus_client import CollectorRegistry, generate_latest

from agents.builtin.assistant import order_rules, order_tools
from agents.builtin.orders import Inventory
from agents.config import WorkerConfig
from agents.llm import (
    BreakerConfig,
    LLMConfig,
    OfflineBrain,
    Plan,
    Run,
    Toolbox,
    agent_of,
    planned_call,
    task_agent,
)
from agents.llm import testing as s
from agents.llm.mcp import MCPToolset
from agents.llm.mcp_config import MCPServerConfig, mcp_servers_from_env
from agents.registry import Registry
from agents.testing import AgentTester, bare_context
from agents.worker import Worker
from bus.messages import StepEvent
from bus.publisher import Publisher

pytestmark = pytest.mark.integration

SERVER = (sys.executable, "-m", "agents.llm.mcp_testing")
ENV = {"PYTHONPATH": str(ROOT)}


def stdio(name: str, *extra: str, **kw: Any) -> MCPServerConfig:
    return MCPServerConfig(name=name, command=(*SERVER, "--label", name, *extra), env=ENV, **kw)


@pytest.fixture
def http_url() -> Iterator[str]:
    """The test MCP server over streamable HTTP, in a subprocess."""
    proc = subprocess.Popen(
        [*SERVER, "--transport", "http", "--label", "web", "--hostile"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
async def opened(request: pytest.FixtureRequest) -> AsyncIterator[MCPToolset]:
    toolset = MCPToolset(request.param)
    await toolset.open()
    try:
        yield toolset
    finally:
        await toolset.close()


async def _exercise(toolset: MCPToolset, prefix: str) -> None:
    box = toolset.toolbox(Toolbox(), "acme")
    assert f"{prefix}__add" in box
    assert f"{prefix}__open_ticket" in box
    spec = next(sp for sp in box.specs if sp.function.name == f"{prefix}__open_ticket")
    params = spec.function.parameters
    assert params["properties"]["priority"]["enum"] == ["low", "normal", "high"]
    assert params["required"] == ["title"]
    ok = await box.call(bare_context(), f"{prefix}__add", '{"a": 2, "b": 40}')
    assert (ok.ok, ok.result) == (True, {"result": 42})
    conn = toolset.connections[0]
    sent = conn.calls
    for bad in ('{"a": "2", "b": 40}', '{"a": 1}', "[1, 2]", "{not json", '{"a": 1, "b": 2.5}'):
        refused = await box.call(bare_context(), f"{prefix}__add", bad)
        assert not refused.ok
        assert "invalid arguments" in refused.error or "JSON" in refused.error
    assert conn.calls == sent  # refused here: the server never saw them
    assert conn.outcomes["invalid_arguments"] == 3
    bad_enum = await box.call(
        bare_context(), f"{prefix}__open_ticket", '{"title": "x", "priority": "urgent"}'
    )
    assert not bad_enum.ok
    assert "priority" in bad_enum.error
    failed = await box.call(bare_context(), f"{prefix}__fail", '{"message": "disk full"}')
    assert not failed.ok
    assert "disk full" in failed.error
    assert conn.outcomes["tool_error"] == 1
    assert "bad name!" in [t.name for t in conn.listed]
    assert f"{prefix}__bad name!" not in box  # a name no model accepts is left out
    huge = await box.call(bare_context(), f"{prefix}__big", '{"size": 1000000}')
    assert huge.ok
    assert len(huge.result) < 17_000  # cut at max_result_chars: it goes to the model and the audit
    assert huge.result.endswith("[cut at 16384 characters]")
    ticket = await box.call(bare_context(), f"{prefix}__open_ticket", '{"title": "printer on fire"}')
    assert ticket.ok
    assert ticket.result["ticket_id"] == "T-0001"


@pytest.mark.parametrize("opened", [[stdio("desk", "--hostile")]], indirect=True)
async def test_stdio_server_tools_schemas_validation_results_and_errors(opened: MCPToolset) -> None:
    await _exercise(opened, "desk")


async def test_http_server_tools_schemas_validation_results_and_errors(http_url: str) -> None:
    toolset = MCPToolset(
        [
            MCPServerConfig(name="web", url=http_url),
            MCPServerConfig(name="keyed", url=http_url, headers={"X-Api-Key": "k1"}),
        ]
    )
    await toolset.open()
    try:
        await _exercise(toolset, "web")
        box = toolset.toolbox(Toolbox(), "acme")
        sent = await box.call(bare_context(), "keyed__header", '{"name": "X-Api-Key"}')
        assert (sent.ok, sent.result) == (True, {"result": "k1"})  # configured headers go with every call
        bare = await box.call(bare_context(), "web__header", '{"name": "X-Api-Key"}')
        assert (bare.ok, bare.result) == (True, {"result": ""})
    finally:
        await toolset.close()


@pytest.mark.parametrize("opened", [[stdio("desk", timeout_s=0.5)]], indirect=True)
async def test_a_timeout_keeps_the_session_and_a_dead_server_is_restarted(opened: MCPToolset) -> None:
    box = opened.toolbox(Toolbox(), "acme")
    slow = await box.call(bare_context(), "desk__sleep", '{"seconds": 30}')
    assert not slow.ok
    assert "did not answer within 0.5s" in slow.error
    ticket = await box.call(bare_context(), "desk__open_ticket", '{"title": "before the crash"}')
    assert ticket.ok, ticket.error  # the same session, the same process
    assert ticket.result["ticket_id"] == "T-0001"
    crashed = await box.call(bare_context(), "desk__crash", "{}")
    assert not crashed.ok
    assert "connection to MCP server desk failed" in crashed.error
    # many calls at once after the crash: one of them reopens the session, the others wait for it
    calls = [box.call(bare_context(), "desk__open_ticket", '{"title": "after the crash"}') for _ in range(8)]
    again = await asyncio.gather(*calls)
    assert all(a.ok for a in again), [a.error for a in again]
    assert sorted(a.result["ticket_id"] for a in again) == [
        f"T-{i:04d}" for i in range(1, 9)
    ]  # a new process
    conn = opened.connections[0]
    assert conn.opened == 2
    assert conn.outcomes == {"timeout": 1, "ok": 9, "connection": 1}


@pytest.mark.parametrize(
    "opened", [[stdio("desk", breaker=BreakerConfig(failure_threshold=1, open_s=60))]], indirect=True
)
async def test_an_open_breaker_fails_fast_without_touching_the_server(opened: MCPToolset) -> None:
    box = opened.toolbox(Toolbox(), "acme")
    assert not (await box.call(bare_context(), "desk__crash", "{}")).ok
    refused = await box.call(bare_context(), "desk__whoami", "{}")
    assert not refused.ok
    assert "MCP server desk is unavailable" in refused.error
    conn = opened.connections[0]
    assert conn.outcomes == {"connection": 1, "circuit_open": 1}
    assert not conn.connected  # not reopened while the breaker is open


async def test_a_tenant_sees_and_calls_only_its_own_servers_tools(llm: s.ScriptedLLM) -> None:
    """globex's model is offered no tool of acme's server, and a call of one by name is refused."""
    spec = task_agent(
        kind="desk",
        tools=order_tools(Inventory()),
        offline=OfflineBrain(order_rules),
        config=LLMConfig(base_url=llm.url, model="m", stream=False),
        mcp=[stdio("private", tenants=("acme",)), stdio("shared", tools=("whoami", "add"))],
    )
    llm.script(
        s.tool_calls([("private__whoami", "{}"), ("shared__whoami", "{}")]),
        s.text("done"),
        s.tool_calls([("private__whoami", "{}"), ("shared__whoami", "{}")]),
        s.text("done"),
    )
    async with AgentTester(spec) as tester:
        acme = await tester.run({"request": "who?"}, tenant="acme")
        globex = await tester.run({"request": "who?"}, tenant="globex")
        registry = CollectorRegistry()
        assert spec.collector is not None
        registry.register(spec.collector)
        metrics = generate_latest(registry).decode()
    offered = [{t["function"]["name"] for t in r.body["tools"]} for r in llm.requests[::2]]
    assert {"private__whoami", "shared__whoami", "check_inventory"} <= offered[0]
    assert "shared__add" in offered[1]
    assert "shared__crash" not in offered[0] | offered[1]  # not in the server's "tools" list
    assert "private__crash" in offered[0]
    assert "private__whoami" not in offered[1]
    assert "shared__whoami" in offered[1]
    assert acme.output is not None
    assert globex.output is not None
    acme_steps = {e.tool: (e.ok, e.result, e.error) for e in acme.output.audit if isinstance(e, StepEvent)}
    globex_steps = {
        e.tool: (e.ok, e.result, e.error) for e in globex.output.audit if isinstance(e, StepEvent)
    }
    assert acme_steps["private__whoami"] == (True, {"result": "private"}, "")
    assert globex_steps["shared__whoami"] == (True, {"result": "shared"}, "")
    ok, _, error = globex_steps["private__whoami"]
    assert not ok
    assert error.startswith("unknown tool 'private__whoami'")
    assert 'agentbus_mcp_calls_total{kind="desk",outcome="ok",server="private"} 1.0' in metrics
    assert 'agentbus_mcp_calls_total{kind="desk",outcome="ok",server="shared"} 2.0' in metrics
    assert agent_of(spec).mcp is None  # on_stop closed the sessions


def test_the_config_file(tmp_path: Path) -> None:
    headers = tmp_path / "h.json"
    headers.write_text('{"Authorization": "Bearer k"}')
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "servers": [
                    {"name": "desk", "command": ["x"], "tenants": ["acme"], "kinds": ["helpdesk"]},
                    {"name": "crm", "url": "http://127.0.0.1:1/mcp", "headers_file": str(headers)},
                ]
            }
        )
    )
    desk, crm = mcp_servers_from_env({"AGENTBUS_MCP_CONFIG": str(path)})
    assert (desk.transport, desk.tenants, desk.serves("helpdesk"), desk.serves("assistant")) == (
        "stdio",
        ("acme",),
        True,
        False,
    )
    assert crm.headers == {"Authorization": "Bearer k"}
    assert "Bearer" not in repr(crm)
    for bad in (
        {"servers": [{"name": "a_b", "command": ["x"]}]},  # "_" would make "__" ambiguous
        {"servers": [{"name": "a", "command": ["x"], "url": "http://h/mcp"}]},
        {"servers": [{"name": "a", "url": "file:///etc/passwd"}]},
        {"servers": [{"name": "a", "command": ["x"], "typo": 1}]},
        {"servers": [{"name": "a", "command": ["x"]}, {"name": "a", "command": ["y"]}]},
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=r"MCP|AGENTBUS_MCP_CONFIG"):
            mcp_servers_from_env({"AGENTBUS_MCP_CONFIG": str(path)})


def test_a_worker_with_mcp_servers_but_no_mcp_package_exits_78(tmp_path: Path, nats_url: str) -> None:
    hidden = tmp_path / "no-mcp"
    (hidden / "mcp").mkdir(parents=True)
    (hidden / "mcp" / "__init__.py").write_text("raise ImportError('mcp is not installed here')\n")
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"servers": [{"name": "desk", "command": [*SERVER]}]}))
    env = {
        **os.environ,
        "PYTHONPATH": f"{hidden}{os.pathsep}{ROOT}",
        "AGENTBUS_MCP_CONFIG": str(config),
    }
    argv = [sys.executable, "-m", "agentbus", "worker", "--nats-url", nats_url, "--http-port", "-1"]
    done = subprocess.run(
        [*argv, "--agents", "agents.builtin.assistant"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 78, done.stderr
    assert "pip install 'agentbus[mcp]'" in done.stderr


def test_a_worker_whose_mcp_server_does_not_start_exits_1_for_a_restart(
    tmp_path: Path, nats_url: str
) -> None:
    """Not a configuration error (the server may come back): exit 1, which supervisors restart."""
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"servers": [{"name": "desk", "command": [sys.executable, "-c", "pass"]}]}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTBUS_MCP_CONFIG": str(config)}
    argv = [sys.executable, "-m", "agentbus", "worker", "--nats-url", nats_url, "--http-port", "-1"]
    done = subprocess.run(
        [*argv, "--agents", "agents.builtin.assistant"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "MCP server desk (stdio) could not be opened" in done.stderr


async def test_an_mcp_call_in_a_handlers_eager_first_step(nats_url: str, nc: Any) -> None:
    """An offline brain calls the MCP tool before anything suspends: the worker runs that first
    step in its own task, so the SDK's cancel scopes must get a task of their own."""

    def rules(run: Run) -> Plan:
        if not run.turns:
            return Plan([planned_call("desk__whoami", {}, id="c1")])
        last = run.turns[-1].outcomes[0]
        return Plan([], f"{last.ok} {last.result} {last.error}")

    spec = task_agent(
        kind="desk",
        tools=Toolbox(),
        offline=OfflineBrain(rules),
        config=LLMConfig(),
        mcp=[stdio("desk", timeout_s=5)],
    )
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1), Registry([spec]))
    await worker.start()
    try:
        pub = Publisher(nc)
        answers = [
            (await pub.call("acme", "desk", {"request": "who"}, timeout_s=30)).output for _ in range(3)
        ]
    finally:
        await worker.stop()
    assert [(a or {})["answer"] for a in answers] == ["True {'result': 'desk'} "] * 3
