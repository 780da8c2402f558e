"""Duplicates: the task id is the ``Nats-Msg-Id``, so JetStream stores a task once per window.

A publisher that retries after a lost ack (or a user who submits twice) must not
make the agent run twice: the handler here counts its runs in-process.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import pytest
from helpers_a import ResultLog, poll, queue_empty
from nats.aio.client import Client

from agents import Context, Registry, agent
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.publisher import Publisher
from bus.topology import TASKS_STREAM

pytestmark = pytest.mark.integration


class CountIn(msgspec.Struct):
    text: str


class CountOut(msgspec.Struct):
    text: str
    run: int


async def test_same_task_id_twice_is_stored_and_run_once(nc: Client, nats_url: str) -> None:
    runs: Counter[str] = Counter()

    async def count(ctx: Context, task: CountIn) -> CountOut:
        runs[ctx.task_id] += 1
        await asyncio.sleep(0.01)  # real work suspends
        return CountOut(text=task.text, run=runs[ctx.task_id])

    # One slot: tasks run strictly in stream order, so a later sentinel settles everything before it.
    spec = agent(kind="count", input=CountIn, output=CountOut, max_inflight=1, timeout_s=10)(count)
    log = await ResultLog(CountOut).start(nc, "results.acme.*")
    pub = Publisher(nc)
    js = nc.jetstream()

    # Twice before any worker runs: the second publish is acknowledged as a duplicate.
    first = await pub.submit("acme", "count", CountIn(text="first"), task_id="dup-1")
    second = await pub.submit("acme", "count", CountIn(text="second"), task_id="dup-1")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.seq == first.seq
    assert (await js.stream_info(TASKS_STREAM)).state.messages == 1
    # Same payload, other ids: not duplicates.
    others = [await pub.submit("acme", "count", CountIn(text="first"), task_id=f"other-{i}") for i in (1, 2)]
    assert not any(r.duplicate for r in others)

    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="inproc"), Registry([spec]))
    await worker.start()
    try:
        await poll(lambda: {"dup-1", "other-1", "other-2"} <= log.ok_ids(), timeout_s=20, what="results")
        # Done and deleted from the work queue, the id is still remembered for the window.
        third = await pub.submit("acme", "count", CountIn(text="third"), task_id="dup-1")
        assert third.duplicate
        sentinel = await pub.submit("acme", "count", CountIn(text="sentinel"), task_id="sentinel-1")
        assert not sentinel.duplicate
        await poll(lambda: "sentinel-1" in log.ok_ids(), timeout_s=20, what="the sentinel's result")
        await poll(lambda: queue_empty(nc, "count"), timeout_s=10, what="an empty queue")
        # One more full round trip on the connection the results arrive on.
        await nc.flush()
    finally:
        await worker.stop()
        await log.stop()

    assert runs == {"dup-1": 1, "other-1": 1, "other-2": 1, "sentinel-1": 1}
    dup = [r for r in log.results if r.task_id == "dup-1"]
    assert len(dup) == 1
    assert dup[0].ok
    assert dup[0].tenant == "acme"
    assert dup[0].output == CountOut(text="first", run=1)
    assert worker.stats.kind("count").fetched == 4
