"""OpenTelemetry: the ``receive`` span of each delivery carries the task and its fate, and a
retry or a dead letter sets the span's status to error; ``OTEL_*`` variables install the SDK.

Each test runs in a child interpreter: a tracer provider is process-wide and sticky, and every
other test must keep running with tracing off (the zero-cost path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    import msgspec
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    from agents import Context, Reject, Registry, agent
    from agents.config import WorkerConfig
    from agents.worker import Worker
    from bus.connection import connect
    from bus.publisher import Publisher

    class Said(msgspec.Struct):
        text: str

    @agent(kind="fates", input=Said, output=Said)
    async def fates(ctx: Context, task: Said) -> Said:
        if task.text == "no":
            raise Reject("said no")
        if task.text == "boom":
            raise RuntimeError("downstream broke")
        return task

    async def main():
        config = WorkerConfig(nats_url=sys.argv[1], http_port=-1, max_deliver=2,
                              retry_base_s=0.01, retry_max_s=0.02)
        worker = Worker(config, Registry([fates]))
        await worker.start()
        nc = await connect(sys.argv[1])
        pub = Publisher(nc)
        for task_id, text in (("t-ok", "hi"), ("t-no", "no"), ("t-boom", "boom")):
            result = await pub.call("acme", "fates", {"text": text}, task_id=task_id, timeout_s=30)
            assert result.ok == (text == "hi"), result
        await nc.close()
        await worker.stop()

    asyncio.run(main())
    print(json.dumps([
        {"name": s.name, "attributes": dict(s.attributes), "status": s.status.status_code.name,
         "description": s.status.description, "events": [e.name for e in s.events]}
        for s in exporter.get_finished_spans() if s.name == "receive"
    ]))
    """
)


def _child(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        timeout=90,
        check=False,
    )


def test_receive_spans_carry_the_task_and_its_fate(nats_url: str) -> None:
    done = _child(CHILD, nats_url)
    assert done.returncode == 0, done.stderr
    spans: list[dict[str, Any]] = json.loads(done.stdout.splitlines()[-1])
    by_task: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_task.setdefault(span["attributes"]["agentbus.task_id"], []).append(span)
    assert set(by_task) == {"t-ok", "t-no", "t-boom"}
    for task_spans in by_task.values():
        for span in task_spans:
            assert span["attributes"]["agentbus.tenant"] == "acme"
            assert span["attributes"]["agentbus.kind"] == "fates"

    (ok,) = by_task["t-ok"]
    assert (ok["attributes"]["agentbus.fate"], ok["status"]) == ("ok", "UNSET")

    (rejected,) = by_task["t-no"]
    assert rejected["attributes"]["agentbus.fate"] == "dead_letter"
    assert rejected["attributes"]["agentbus.dead_letter.reason"] == "rejected"
    assert rejected["attributes"]["agentbus.attempt"] == 1
    assert rejected["status"] == "ERROR"
    assert rejected["description"] == "dead letter: rejected: said no"

    first, last = sorted(by_task["t-boom"], key=lambda s: s["attributes"]["agentbus.attempt"])
    assert first["attributes"]["agentbus.attempt"] == 1
    assert first["attributes"]["agentbus.fate"] == "retry"
    assert first["status"] == "ERROR"
    assert "exception" in first["events"]  # the handler's RuntimeError, recorded
    assert last["attributes"]["agentbus.attempt"] == 2
    assert last["attributes"]["agentbus.fate"] == "dead_letter"
    assert last["attributes"]["agentbus.dead_letter.reason"] == "max_deliveries"
    assert last["status"] == "ERROR"
    assert "RuntimeError: downstream broke" in last["description"]


CONFIGURE = textwrap.dedent(
    """
    import importlib.util, json
    from agentbus.errors import ConfigError
    from bus import tracing

    out = {}
    out["none"] = tracing.configure_from_env({})
    try:
        tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "jaeger"})
    except ConfigError as exc:
        out["unknown"] = str(exc)
    try:
        out["otlp"] = tracing.configure_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    except ConfigError as exc:
        out["otlp"] = str(exc)
    out["otlp_installed"] = importlib.util.find_spec("opentelemetry.exporter") is not None
    off = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    out["disabled"] = tracing.configure_from_env(off)
    out["enabled_before"] = tracing.enabled()
    if not tracing.enabled():
        out["console"] = tracing.configure_from_env({"OTEL_TRACES_EXPORTER": "console"})
    out["enabled_after"] = tracing.enabled()
    print(json.dumps(out))
    """
)


def test_otel_variables_install_the_sdk_or_say_what_is_missing() -> None:
    done = _child(CONFIGURE)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["none"] is False  # no OTEL_* variable: tracing stays off
    assert out["unknown"] == "OTEL_TRACES_EXPORTER='jaeger': expected otlp, console or none"
    if out["otlp_installed"]:
        assert out["otlp"] is True
    else:  # the dev venv has the SDK but not the exporter: `agentbus[otel]` installs it
        assert "pip install 'agentbus[otel]'" in out["otlp"]
        assert out["disabled"] is False
        assert out["enabled_before"] is False
        assert out["console"] is True
    assert out["enabled_after"] is True
