"""The opt-in minimal audit of generic tasks (``AGENTBUS_AUDIT_TASKS``): fate, attempt, worker."""

from __future__ import annotations

import pytest
from helpers_a import poll
from nats.aio.client import Client

from agents import Registry
from agents.builtin.basic import EchoIn, echo
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.publisher import Publisher
from bus.records import AUDIT_STREAM, audit_records

pytestmark = pytest.mark.integration


async def test_generic_tasks_get_a_record_per_attempt_only_when_asked(nc: Client, nats_url: str) -> None:
    js = nc.jetstream()
    pub = Publisher(nc)
    cfg = WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="w-a", retry_base_s=0.05, retry_max_s=0.1)
    worker = Worker(cfg, Registry([echo]))
    await worker.start()
    try:
        assert (await pub.call("acme", "echo", EchoIn(text="quiet"), timeout_s=20)).ok
    finally:
        await worker.stop()
    assert (await js.stream_info(AUDIT_STREAM)).state.messages == 0  # off by default

    worker = Worker(
        WorkerConfig.from_env({"AGENTBUS_AUDIT_TASKS": "1"}).with_(
            nats_url=nats_url, http_port=-1, worker_id="w-a", retry_base_s=0.05, retry_max_s=0.1
        ),
        Registry([echo]),
    )
    await worker.start()
    try:
        flaky = await pub.call("acme", "echo", EchoIn(text="x", fail="once"), timeout_s=20)
        bad = await pub.call("acme", "echo", {"text": 5}, timeout_s=20)
    finally:
        await worker.stop()
    assert flaky.ok
    assert not bad.ok
    records = await audit_records(js, "acme", flaky.task_id)
    assert [(r.attempt, r.fate, r.worker, r.kind) for r in records] == [
        (1, "retry", "w-a", "echo"),
        (2, "ok", "w-a", "echo"),
    ]
    assert records[0].error
    (letter,) = await audit_records(js, "acme", bad.task_id)
    assert letter.fate == "dead_letter:invalid_payload"

    async def counted() -> bool:
        return (await js.stream_info(AUDIT_STREAM)).state.messages == 3

    await poll(counted, timeout_s=5, what="three records")
