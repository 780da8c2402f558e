"""``--log-format json``: every line is one JSON object, and every line about a task (the
handler's ``ctx.log``, the worker's retry and dead-letter lines) carries its tenant, kind, task
id, attempt and trace id."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, WorkerProcess, async_wait_until
from nats.aio.client import Client

from bus.messages import HDR_MSG_ID, Task, encode, msg_id
from bus.subjects import task_subject

pytestmark = pytest.mark.integration

AGENT = """
import msgspec
from agents import Context, Reject, Retry, agent


class Said(msgspec.Struct):
    text: str


@agent(kind="logged", input=Said, output=Said)
async def logged(ctx: Context, task: Said) -> Said:
    ctx.log.warning("handling %s", task.text)
    if task.text == "busy" and ctx.attempt == 1:
        raise Retry("upstream busy", delay_s=0.05)
    if task.text == "no":
        raise Reject("said no")
    return task
"""

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _lines(worker: WorkerProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in worker.log().splitlines() if line.strip()]


async def test_json_lines_carry_the_task(nats_url: str, nc: Client, tmp_path: Path) -> None:
    (tmp_path / "logged_agent.py").write_text(AGENT)
    env = {
        "AGENTBUS_LOG_FORMAT": "json",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    worker = WorkerProcess(nats_url, tmp_path, "w1", "--agents", "logged_agent", env=env)
    try:
        worker.wait_ready()
        js = nc.jetstream()
        for task_id, text in (("t-busy", "busy"), ("t-no", "no")):
            headers = {
                HDR_MSG_ID: msg_id("acme", "logged", task_id),
                "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
            }
            task = Task(id=task_id, payload={"text": text})
            await js.publish(task_subject("acme", "logged"), encode(task), headers=headers)

        def settled() -> bool:
            text = worker.log()
            return "dead-lettered" in text and text.count("handling busy") == 2

        await async_wait_until(settled, 30, "both tasks settled")
    finally:
        worker.stop()
    lines = _lines(worker)  # every line parses: nothing else is written
    assert {"ts", "level", "logger", "message"} <= set(lines[0])
    about = [line for line in lines if line.get("task_id") in ("t-busy", "t-no")]
    fields = {(line["tenant"], line["kind"], line["trace_id"]) for line in about}
    assert fields == {("acme", "logged", TRACE)}
    busy = [(line["message"], line["attempt"]) for line in about if line["task_id"] == "t-busy"]
    assert ("handling busy", 1) in busy
    assert ("handling busy", 2) in busy
    assert any(m.startswith("task t-busy attempt 1 failed, retry in 0.05s") and a == 1 for m, a in busy)
    (dead,) = [line for line in about if "dead-lettered" in line["message"]]
    assert dead["task_id"] == "t-no"
    assert dead["attempt"] == 1
    assert dead["level"] == "WARNING"
    assert "rejected" in dead["message"]
    handler = [line for line in about if line["message"] == "handling no"]
    assert handler[0]["logger"] == "agentbus.agents.logged"
    untied = [line for line in lines if "task_id" not in line]
    assert any("worker w1 is running" in line["message"] for line in untied)  # other lines: no task
