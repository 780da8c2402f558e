"""Must-show 1 of issue 22, end to end through NATS: ``agentbus kb add`` fills a tenant's
knowledge base (embeddings from the local OpenAI-compatible server), a real worker process
runs the ``helpdesk`` example agent, the scripted model drives a ``retrieve`` call and a call
of an MCP server's tool (a real stdio server built with the SDK), and the result carries the
answer, the cited passages and the ticket in its audit trail. docs/llm.md shows this run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, WorkerProcess
from nats.aio.client import Client

from agents.builtin.helpdesk import COLLECTION, helpdesk_rules
from agents.kb import Document, HashEmbedder, KnowledgeBase, OpenAIEmbedder, SQLiteStore
from agents.llm import LLMConfig, OfflineBrain, Toolbox, task_agent
from agents.llm import testing as s
from agents.llm.mcp_config import MCPServerConfig
from agents.llm.retrieval import RetrieveTool
from agents.testing import AgentTester
from bus.messages import StepEvent
from bus.publisher import Publisher

pytestmark = pytest.mark.integration

CORPUS = ROOT / "tests" / "data" / "kb"


async def _agentbus(*argv: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentbus",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_helpdesk_retrieves_cites_and_opens_a_ticket_through_nats(
    llm: s.ScriptedLLM, nats_url: str, nc: Client, tmp_path: Path
) -> None:
    db = tmp_path / "kb.sqlite3"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")},
        "PYTHONPATH": str(ROOT),
        "AGENTBUS_KB_PATH": str(db),
        "AGENTBUS_KB_EMBED_URL": llm.url,
        "AGENTBUS_KB_EMBED_MODEL": "embed-small",
    }
    added = await _agentbus("kb", "add", "--tenant", "acme", "--collection", "handbook", str(CORPUS), env=env)
    assert json.loads(added) == {"documents": 32, "passages": 32}
    # another tenant's handbook in the same file and vector space (through the API: one process less)
    embedder = OpenAIEmbedder(llm.url, "embed-small")
    globex = KnowledgeBase(SQLiteStore(db), embedder)
    await globex.add(
        "globex", COLLECTION, [Document("g.md", "Globex refunds take 90 days and a notarised letter.")]
    )
    assert [h.doc_id for h in await globex.search("acme", COLLECTION, "refund days", k=1)] == ["refunds.md"]
    await embedder.aclose()

    mcp_config = tmp_path / "mcp.json"
    server = [sys.executable, "-m", "agents.llm.mcp_testing", "--label", "tickets"]
    mcp_config.write_text(
        json.dumps({"servers": [{"name": "tickets", "command": server, "env": {"PYTHONPATH": str(ROOT)}}]})
    )
    env |= {
        "AGENTBUS_LLM_BASE_URL": llm.url,
        "AGENTBUS_LLM_MODEL": "scripted",
        "AGENTBUS_LLM_STREAM": "0",
        "AGENTBUS_MCP_CONFIG": str(mcp_config),
    }
    llm.script(
        s.tool_calls([("retrieve", {"query": "how long does a refund take to appear", "k": 2})]),
        s.tool_calls([("tickets__open_ticket", {"title": "Refund for order 42", "priority": "high"})]),
        s.text("Refunds take 5 to 10 business days [1]. I opened ticket T-0001 for you."),
    )
    worker = WorkerProcess(nats_url, tmp_path, "w1", "--agents", "agents.builtin.helpdesk", env=env)
    try:
        worker.wait_ready(60)
        request = {"request": "My refund for order 42 has not arrived, please open a ticket."}
        result = await Publisher(nc).call("acme", "helpdesk", request, timeout_s=60)
        metrics = worker.get("/metrics")[1]
    finally:
        worker.stop()
    assert result.ok, result.error
    out: dict[str, Any] = result.output or {}
    assert out["answer"] == "Refunds take 5 to 10 business days [1]. I opened ticket T-0001 for you."
    steps = {e["tool"]: e for e in out["audit"] if e["type"] == "step"}
    retrieved = steps["retrieve"]["result"]
    assert retrieved["citations"][0] == "[1] refunds.md#0"
    assert retrieved["passages"][0]["text"].startswith("# Refund policy")
    assert all("Globex" not in p["text"] for p in retrieved["passages"])  # another tenant's documents
    assert steps["tickets__open_ticket"]["result"] == {
        "ticket_id": "T-0001",
        "title": "Refund for order 42",
        "priority": "high",
    }
    first, second, third = (r.body for r in llm.requests)
    assert {"retrieve", "tickets__open_ticket", "tickets__add"} <= {
        t["function"]["name"] for t in first["tools"]
    }
    fed_back = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    assert "5 to 10 business days" in fed_back[0]  # the model answered from the passage
    assert "T-0001" in [m["content"] for m in third["messages"] if m["role"] == "tool"][-1]
    assert 'agentbus_mcp_calls_total{kind="helpdesk",outcome="ok",server="tickets"} 1.0' in metrics
    assert 'agentbus_mcp_call_seconds_count{kind="helpdesk",server="tickets"} 1.0' in metrics
    assert 'agentbus_mcp_connected{kind="helpdesk",server="tickets"} 1.0' in metrics
    promtool = shutil.which("promtool")
    assert promtool is not None, (
        "promtool is not installed: `make test` installs it (Debian package `prometheus`)"
    )
    check = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    said, _ = await asyncio.wait_for(check.communicate(metrics.encode()), 60)
    assert check.returncode == 0, said.decode()
    assert 'agentbus_llm_tool_calls_total{kind="helpdesk",outcome="ok",tool="retrieve"} 1.0' in metrics


async def test_helpdesk_offline_rules_retrieve_open_a_ticket_and_cite(tmp_path: Path) -> None:
    """With no model, the example's rules do the same: retrieve, open the ticket, cite passage [1]."""
    kb = KnowledgeBase(SQLiteStore(tmp_path / "kb.sqlite3"), HashEmbedder())
    await kb.add("acme", COLLECTION, [Document(p.name, p.read_text(), p.name) for p in CORPUS.glob("*.md")])
    server = MCPServerConfig(
        name="tickets",
        command=(sys.executable, "-m", "agents.llm.mcp_testing"),
        env={"PYTHONPATH": str(ROOT)},
    )
    spec = task_agent(
        kind="helpdesk",
        tools=Toolbox([RetrieveTool(COLLECTION, kb=kb)]),
        offline=OfflineBrain(helpdesk_rules),
        config=LLMConfig(),
        mcp=[server],
    )
    async with AgentTester(spec) as tester:
        done = await tester.run(
            {"request": "Please open a ticket: how do I reset my password?"}, tenant="acme"
        )
    assert done.output is not None
    assert done.output.answer == (
        "To reset a password, open the sign-in page and choose Forgot password. [1] (password-reset.md)"
        " Ticket T-0001 opened."
    )
    assert [e.tool for e in done.output.audit if isinstance(e, StepEvent)] == [
        "retrieve",
        "tickets__open_ticket",
    ]
