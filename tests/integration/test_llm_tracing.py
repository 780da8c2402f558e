"""OpenTelemetry spans publish -> receive -> plan -> tool -> answer -> ack, in one trace.

Run in a child interpreter: a tracer provider is process-wide and sticky, and every
other test must keep running with tracing off (the zero-cost path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from bus import tracing

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from agents.builtin.assistant import order_rules, order_tools
    from agents.builtin.orders import Inventory
    from agents.config import WorkerConfig
    from agents.llm import LLMConfig, OfflineBrain, task_agent
    from agents.registry import Registry
    from agents.worker import Worker
    from bus.connection import connect
    from bus.publisher import Publisher

    async def main():
        spec = task_agent(kind="assistant", tools=order_tools(Inventory()),
                          offline=OfflineBrain(order_rules), config=LLMConfig())
        worker = Worker(WorkerConfig(nats_url=sys.argv[1], http_port=-1), Registry([spec]))
        await worker.start()
        nc = await connect(sys.argv[1])
        result = await Publisher(nc).call("acme", "assistant", {"request": "customer U1 buys 1 of PROD-001"})
        assert result.ok, result.error
        await nc.close()
        await worker.stop()

    asyncio.run(main())
    print(json.dumps([
        {"name": s.name, "trace": s.context.trace_id, "id": s.context.span_id,
         "parent": s.parent.span_id if s.parent else None, "kind": s.kind.name}
        for s in exporter.get_finished_spans()
    ]))
    """
)


def test_spans_of_one_task_form_one_trace(nats_url: str) -> None:
    assert not tracing.enabled()  # this process runs untraced: the runner never wraps
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, nats_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    spans = json.loads(done.stdout.splitlines()[-1])
    by_name: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        by_name.setdefault(str(span["name"]), []).append(span)
    (publish,) = by_name["publish"]
    (receive,) = by_name["receive"]
    (ack,) = by_name["ack"]
    assert publish["kind"] == "PRODUCER"
    assert receive["kind"] == "CONSUMER"
    assert {s["trace"] for s in spans} == {publish["trace"]}  # one trace from publish to ack
    assert receive["parent"] == publish["id"]  # carried across NATS in the task's headers
    assert [s["parent"] for s in by_name["plan"]] == [receive["id"]] * 2
    assert [s["parent"] for s in by_name["answer"]] == [receive["id"]]
    assert [s["parent"] for s in by_name["tool"]] == [receive["id"]] * 2
    assert ack["parent"] == receive["id"]
