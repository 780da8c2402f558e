"""Backpressure: a worker with 8 slots never holds more than 8 messages, however deep the queue.

10,000 queued tasks and one worker with ``--max-inflight 8``. Sampled all along:

* the worker's own count of held messages (``agentbus_inflight``): never above 8,
  and 8 at some point (or the test would prove nothing);
* JetStream's count of delivered-but-unacked messages (``num_ack_pending``), the
  independent witness: never above 8 either. (The worker asks for more in the same
  ``+NXT`` message that acks a finished task; a separate pull request could be served
  by the server before acks sent ahead of it are counted - nats-server applies acks
  and pull requests on two queues - and a snapshot would read above 8 for an instant.)
  A worker that fetched past its slots (FastStream #2563) would show thousands;
* the worker's RSS, which must stay flat once it is warm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psutil
import pytest
from conftest import WorkerProcess
from helpers_a import ResultLog, consumer_state, consumer_totals, launch, metric, poll, queue_empty
from nats.aio.client import Client

from agents.builtin.basic import EchoIn
from bus.publisher import Publisher, TaskRef, TaskSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = 10_000
SLOTS = 8
MiB = 1 << 20


class Sampler:
    """Every ``every_s``: num_ack_pending, the worker's held count and its RSS, until stopped."""

    def __init__(self, nc: Client, worker: WorkerProcess, log: ResultLog, every_s: float = 0.02) -> None:
        self._nc = nc
        self._worker = worker
        self._proc = psutil.Process(worker.proc.pid)
        self._log = log
        self._every_s = every_s
        self.ack_pending: list[int] = []
        self.held: list[int] = []
        self.rss: list[tuple[int, int]] = []  # (results seen so far, rss bytes)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            server, held = await asyncio.gather(
                consumer_state(self._nc, "echo"), metric(self._worker, "agentbus_inflight", kind="echo")
            )
            self.ack_pending.append(server[1])
            if held is not None:
                self.held.append(int(held))
            self.rss.append((len(self._log.arrivals), self._proc.memory_info().rss))
            await asyncio.sleep(self._every_s)


async def test_worker_holds_at_most_max_inflight_and_stays_flat(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    worker = await launch(start_worker, "w1", "--max-inflight", str(SLOTS), "--kind", "echo")
    log = await ResultLog().start(nc)
    sampler = Sampler(nc, worker, log)
    sampler.start()
    pub = Publisher(nc)
    specs = [
        TaskSpec("acme" if i % 2 else "globex", "echo", EchoIn(text=str(i), sleep_s=0.002))
        for i in range(TASKS)
    ]
    try:
        refs = await asyncio.wait_for(pub.submit_many(specs), 60)  # a lost ack must not hang the test
        published = {r.task_id for r in refs if isinstance(r, TaskRef)}
        assert len(published) == TASKS
        await poll(lambda: len(log.ok_ids()) >= TASKS, timeout_s=60, every_s=0.1, what="10,000 results")
        await poll(lambda: queue_empty(nc, "echo"), timeout_s=10, what="an empty queue")
    finally:
        await sampler.stop()
        await log.stop()

    assert log.ok_ids() == published
    assert not log.failed()

    # The worker's own count: the strict bound, and proof the slots were really filled.
    assert len(sampler.held) > 50
    assert max(sampler.held) <= SLOTS, sampler.held
    assert max(sampler.held) == SLOTS, "the worker never filled its slots: the test proves nothing"

    # JetStream's count: never above the slots, reaching them, and every message delivered once.
    assert max(sampler.ack_pending) <= SLOTS, sorted(n for n in sampler.ack_pending if n > SLOTS)
    assert SLOTS in sampler.ack_pending
    info = await consumer_totals(nc, "echo")
    assert info.delivered == TASKS, "a message was delivered twice"
    assert info.num_redelivered == 0
    assert await metric(worker, "agentbus_redeliveries_total", kind="echo") == 0
    assert await metric(worker, "agentbus_tasks_total", kind="echo", outcome="ok") == TASKS

    # RSS flat: no growth worth the name between a quarter of the work and the end.
    warm = next(rss for done, rss in sampler.rss if done >= TASKS // 4)
    growth = max(rss for done, rss in sampler.rss if done >= TASKS // 4) - warm
    assert growth < 20 * MiB, f"worker RSS grew {growth / MiB:.1f} MiB after warm-up"
