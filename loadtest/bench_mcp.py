"""The mcp suite: retrieval latency and recall on the shipped corpus, and what an MCP tool
call costs against the same tool in-process.

``python -m loadtest.bench_mcp [--quick]`` (or ``python -m loadtest --suite mcp``) prints
human-readable lines, then one JSON line. Three parts, all on this machine:

* **retrieval**: the corpus of ``tests/data/kb`` (32 documents, 40 queries with the
  expected document) in a SQLite knowledge base with the offline hash embedder: recall@1
  and recall@3, and the latency of one ``search`` (embed the query + exact cosine over the
  collection), p50 and p99 over every query repeated; then the same search over the corpus
  copied to ``--scale`` passages (how exact search grows).
* **tool calls**: ``add(a, b)`` as a local typed tool (the anchor) and as an MCP tool of
  the SDK-built test server over stdio and over streamable HTTP, called through the same
  :class:`~agents.llm.tools.Toolbox` one at a time: p50/p99 per call, and the ratio MCP/local.
* **concurrency**: ``--concurrency`` callers at once on the one stdio session: calls/s.
* **tasks**: whole LLM agent tasks through NATS (an embedded nats-server, an in-process
  worker, the offline brain planning one ``add`` call then answering), the tool local and
  then on the stdio MCP server: tasks/s of each side and the ratio (``--tasks``, 64 in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import psutil

from agents.api import Context
from agents.config import WorkerConfig
from agents.kb import Document, HashEmbedder, KnowledgeBase, SQLiteStore
from agents.llm import LLMConfig, OfflineBrain, Plan, Run, planned_call, task_agent
from agents.llm.mcp import MCPToolset
from agents.llm.mcp_config import MCPServerConfig
from agents.llm.tools import Toolbox, tool
from agents.registry import Registry
from agents.testing import bare_context
from agents.worker import Worker
from bus.connection import connect
from bus.embedded import EmbeddedNats
from bus.publisher import Publisher
from loadtest.stats import percentile

__all__ = ["bench_mcp", "main"]

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "data" / "kb"
SERVER = (sys.executable, "-m", "agents.llm.mcp_testing")


class _Add(msgspec.Struct, forbid_unknown_fields=True):
    a: int
    b: int


@tool
def add(ctx: Context, args: _Add) -> int:
    """Add two integers."""
    return args.a + args.b


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(percentile(ordered, 0.5) * 1000, 4),
        "p99_ms": round(percentile(ordered, 0.99) * 1000, 4),
        "mean_ms": round(sum(ordered) / len(ordered) * 1000, 4),
    }


async def _timed(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        out.append(time.perf_counter() - started)
    return out


async def _retrieval(repeat: int, scale: int) -> dict[str, Any]:
    docs = [Document(p.name, p.read_text(), p.name) for p in sorted(CORPUS.glob("*.md"))]
    queries = json.loads((CORPUS / "queries.json").read_text())
    kb = KnowledgeBase(SQLiteStore(":memory:"), HashEmbedder())
    started = time.perf_counter()
    await kb.add("bench", "corpus", docs)
    add_ms = (time.perf_counter() - started) * 1000
    top1 = top3 = 0
    for q in queries:
        ids = [h.doc_id.removesuffix(".md") for h in await kb.search("bench", "corpus", q["query"], 3)]
        top1 += ids[0] == q["doc"]
        top3 += q["doc"] in ids
    samples: list[float] = []
    for _ in range(repeat):
        for q in queries:
            samples += await _timed(partial(kb.search, "bench", "corpus", q["query"], 4), 1)
    big = [
        Document(f"{i}-{d.doc_id}", f"{d.text} copy {i}", d.source)
        for i in range(scale // len(docs))
        for d in docs
    ]
    await kb.add("bench", "scaled", big)
    scaled: list[float] = []
    for q in queries[:20]:
        scaled += await _timed(partial(kb.search, "bench", "scaled", q["query"], 4), 1)
    return {
        "documents": len(docs),
        "queries": len(queries),
        "embedder": kb.embedder.name,
        "recall_at_1": round(top1 / len(queries), 3),
        "recall_at_3": round(top3 / len(queries), 3),
        "add_corpus_ms": round(add_ms, 2),
        "search": _ms(samples),
        "scaled_passages": len(big),
        "search_scaled": _ms(scaled),
    }


async def _http_server() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        *SERVER, "--transport", "http", stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"the MCP test server did not start: {line!r}")
    return proc, line.split()[1]


async def _tool_calls(n: int, concurrency: int) -> dict[str, Any]:
    ctx = bare_context("bench", kind="bench")
    local = Toolbox([add])
    out: dict[str, Any] = {"calls": n}
    await _timed(lambda: local.call(ctx, "add", '{"a": 1, "b": 2}'), 200)  # warm
    out["local"] = _ms(await _timed(lambda: local.call(ctx, "add", '{"a": 1, "b": 2}'), n))
    proc, url = await _http_server()
    try:
        for name, cfg in (
            ("stdio", MCPServerConfig(name="bench", command=SERVER, env={"PYTHONPATH": str(ROOT)})),
            ("http", MCPServerConfig(name="bench", url=url)),
        ):
            toolset = MCPToolset([cfg])
            await toolset.open()
            try:
                box = toolset.toolbox(Toolbox(), "bench")
                outcome = await box.call(ctx, "bench__add", '{"a": 1, "b": 2}')
                assert outcome.ok, outcome.error
                call = partial(box.call, ctx, "bench__add", '{"a": 1, "b": 2}')
                await _timed(call, 20)  # warm
                out[name] = _ms(await _timed(call, n))
                out[f"{name}_over_local_p50"] = round(out[name]["p50_ms"] / out["local"]["p50_ms"], 1)
                if name == "stdio":
                    out["stdio_concurrent"] = await _concurrent(box, ctx, n, concurrency)
            finally:
                await toolset.close()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    return out


async def _concurrent(box: Toolbox, ctx: Context, n: int, concurrency: int) -> dict[str, Any]:
    per = max(1, n // concurrency)

    async def caller() -> None:
        for _ in range(per):
            assert (await box.call(ctx, "bench__add", '{"a": 1, "b": 2}')).ok

    me = psutil.Process()
    servers = me.children(recursive=True)  # the stdio server (and the HTTP one, idle meanwhile)

    def cpu() -> tuple[float, float]:
        own = me.cpu_times()
        theirs = [p.cpu_times() for p in servers]
        return own.user + own.system, sum(t.user + t.system for t in theirs)

    before = cpu()
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    after = cpu()
    calls = per * concurrency
    return {
        "callers": concurrency,
        "calls": calls,
        "calls_per_s": round(calls / wall, 1),
        "client_cpu_ms_per_call": round((after[0] - before[0]) / calls * 1000, 3),
        "server_cpu_ms_per_call": round((after[1] - before[1]) / calls * 1000, 3),
    }


def _rules(tool_name: str) -> Callable[[Run], Plan]:
    def rules(run: Run) -> Plan:
        if not run.turns:
            return Plan([planned_call(tool_name, {"a": 1, "b": 2}, id="c1")])
        return Plan([], f"the sum is {run.turns[-1].outcomes[0].result}")

    return rules


async def _tasks(n: int, inflight: int = 64) -> dict[str, Any]:
    """Agent tasks through NATS: the one tool call local, then over stdio MCP."""
    server = MCPServerConfig(name="bench", command=SERVER, env={"PYTHONPATH": str(ROOT)})
    local = task_agent(
        kind="local", tools=Toolbox([add]), offline=OfflineBrain(_rules("add")), config=LLMConfig(), mcp=[]
    )
    remote = task_agent(
        kind="remote",
        tools=Toolbox(),
        offline=OfflineBrain(_rules("bench__add")),
        config=LLMConfig(),
        mcp=[server],
    )
    out: dict[str, Any] = {"tasks": n, "in_flight": inflight}
    with EmbeddedNats() as nats:
        nc = await connect(nats.url, name="bench-mcp")
        worker = Worker(
            WorkerConfig(nats_url=nats.url, http_port=-1, gossip=False), Registry([local, remote])
        )
        await worker.start()
        try:
            pub = Publisher(nc)
            gate = asyncio.Semaphore(inflight)

            async def one(kind: str) -> None:
                async with gate:
                    result = await pub.call("bench", kind, {"request": "add"}, timeout_s=60)
                    assert result.ok, result.error

            for kind in ("local", "remote"):
                await asyncio.gather(*(one(kind) for _ in range(min(n, 100))))  # warm
                started = time.perf_counter()
                await asyncio.gather(*(one(kind) for _ in range(n)))
                out[f"{kind}_tasks_per_s"] = round(n / (time.perf_counter() - started), 1)
        finally:
            await worker.stop()
            await nc.close()
    out["mcp_over_local_tasks_per_s"] = round(out["remote_tasks_per_s"] / out["local_tasks_per_s"], 3)
    return out


async def bench_mcp(
    *, quick: bool = False, scale: int | None = None, concurrency: int = 16
) -> dict[str, Any]:
    """Run the suite and return every figure."""
    retrieval = await _retrieval(repeat=3 if quick else 25, scale=scale or (640 if quick else 6400))
    calls = await _tool_calls(200 if quick else 2000, concurrency)
    tasks = await _tasks(300 if quick else 3000)
    return {
        "suite": "mcp",
        "retrieval": retrieval,
        "tool_calls": calls,
        "tasks": tasks,
        "ratio_mcp_stdio_over_local_p50": calls["stdio_over_local_p50"],
        "ratio_mcp_http_over_local_p50": calls["http_over_local_p50"],
        "ratio_mcp_over_local_tasks_per_s": tasks["mcp_over_local_tasks_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    """Print the figures, then the suite's one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_mcp", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller scaled corpus")
    parser.add_argument("--scale", type=int, help="passages of the scaled corpus (default 6400, quick 640)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (default 16)")
    args = parser.parse_args(argv)
    result = asyncio.run(bench_mcp(quick=args.quick, scale=args.scale, concurrency=args.concurrency))
    r, c = result["retrieval"], result["tool_calls"]
    print(
        f"retrieval: recall@1 {r['recall_at_1']}, recall@3 {r['recall_at_3']} on {r['queries']} queries;"
        f" search p50 {r['search']['p50_ms']} ms, p99 {r['search']['p99_ms']} ms ({r['documents']} passages);"
        f" {r['search_scaled']['p50_ms']} ms at {r['scaled_passages']} passages"
    )
    conc = c["stdio_concurrent"]
    print(
        f"tool call p50: local {c['local']['p50_ms']} ms, MCP stdio {c['stdio']['p50_ms']} ms"
        f" ({c['stdio_over_local_p50']}x), MCP HTTP {c['http']['p50_ms']} ms ({c['http_over_local_p50']}x);"
        f" stdio with {conc['callers']} callers: {conc['calls_per_s']} calls/s, CPU per call:"
        f" worker {conc['client_cpu_ms_per_call']} ms, server {conc['server_cpu_ms_per_call']} ms"
    )
    t = result["tasks"]
    print(
        f"agent tasks through NATS: local tool {t['local_tasks_per_s']}/s,"
        f" MCP tool {t['remote_tasks_per_s']}/s"
        f" ({t['mcp_over_local_tasks_per_s']}x)"
    )
    print(json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
