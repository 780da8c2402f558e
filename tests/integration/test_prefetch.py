"""Prefetch: a consumer takes up to ``prefetch`` messages ahead of its slots, never more.

Against a real nats-server and JetStream consumer: the slots bound what runs, the
slots plus the prefetch bound what the server has delivered unacked (its own
``num_ack_pending`` is the witness), prefetched messages start in stream order as
slots free, heartbeats see them, and a drain hands them to the worker at once.
Then worker processes with the default prefetch: one hands its prefetched tasks back
on SIGTERM and another finishes every task; one keeps prefetched tasks alive past the
ack wait with heartbeats (none is redelivered).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest
from conftest import WorkerProcess, async_wait_until
from helpers_a import ResultLog, consumer_state, dead_letters, launch, metric, poll, queue_empty
from nats.aio.client import Client
from nats.aio.msg import Msg

from agents.builtin.basic import EchoIn
from bus.consumer import PullConsumer, stream_seq
from bus.publisher import Publisher, TaskRef, TaskSpec
from bus.topology import TASKS_STREAM, ConsumerSpec, consumer_name, ensure_consumer, ensure_streams

pytestmark = pytest.mark.integration

SLOTS = 4
PREFETCH = 3
KIND = "pf"


async def _queue(nc: Client, n: int, kind: str = KIND) -> None:
    await ensure_streams(nc.jetstream())
    await ensure_consumer(nc.jetstream(), ConsumerSpec(kind=kind))
    refs = await Publisher(nc).submit_many(TaskSpec("acme", kind, {"i": i}) for i in range(n))
    assert all(isinstance(r, TaskRef) for r in refs)


class Holder:
    """An ``on_message`` that keeps every message until the test finishes it."""

    def __init__(self) -> None:
        self.running: list[Msg] = []
        self.started: list[int] = []  # stream sequences, in the order they were started
        self.consumer: PullConsumer | None = None
        self.most_held = 0

    def __call__(self, msg: Msg) -> None:
        assert self.consumer is not None
        self.most_held = max(self.most_held, self.consumer.held)
        self.running.append(msg)
        self.started.append(stream_seq(msg))

    async def finish(self, n: int) -> None:
        assert self.consumer is not None
        for msg in self.running[:n]:
            await self.consumer.ack_next(msg)
        del self.running[:n]


async def _consumer(nc: Client, holder: Holder) -> PullConsumer:
    consumer = PullConsumer(
        nc,
        stream=TASKS_STREAM,
        consumer=consumer_name(KIND),
        slots=SLOTS,
        on_message=holder,
        prefetch=PREFETCH,
    )
    holder.consumer = consumer
    await consumer.start()
    return consumer


async def test_slots_bound_what_runs_and_prefetch_what_is_delivered(nc: Client) -> None:
    await _queue(nc, 40)
    holder = Holder()
    consumer = await _consumer(nc, holder)
    try:
        await async_wait_until(lambda: consumer.prefetched == PREFETCH, what="a full prefetch")
        assert (len(holder.running), consumer.held) == (SLOTS, SLOTS)
        assert await consumer_state(nc, KIND) == (40 - SLOTS - PREFETCH, SLOTS + PREFETCH)
        ahead = list(consumer.waiting_since(time.monotonic() + 1))
        assert [stream_seq(m) for m in ahead] == [SLOTS + 1 + i for i in range(PREFETCH)]
        assert list(consumer.waiting_since(0.0)) == []  # nothing arrived before the clock began

        while len(holder.started) < 40:  # finish one at a time; each frees a slot for the next
            done = len(holder.started)
            await holder.finish(1)
            await async_wait_until(
                lambda done=done: len(holder.started) == min(40, done + 1) or not holder.running,  # type: ignore[misc]
                what="a prefetched message taking the freed slot",
            )
            _, ack_pending = await consumer_state(nc, KIND)
            assert ack_pending <= SLOTS + PREFETCH
            assert consumer.held <= SLOTS
            assert consumer.prefetched <= PREFETCH
        await holder.finish(len(holder.running))
        await async_wait_until(lambda: consumer.held == 0, what="every slot free")
    finally:
        await consumer.close()
    assert holder.started == list(range(1, 41))  # each once, in stream order
    assert holder.most_held == SLOTS  # held counts the message being started: never above
    await poll(lambda: queue_empty(nc, KIND), timeout_s=10, what="every message acked")


async def test_a_drain_hands_the_prefetched_messages_over_at_once(nc: Client) -> None:
    await _queue(nc, 20)
    holder = Holder()
    consumer = await _consumer(nc, holder)
    try:
        await async_wait_until(lambda: consumer.prefetched == PREFETCH, what="a full prefetch")
        await consumer.stop_fetching()
        assert consumer.prefetched == 0
        assert holder.started == list(range(1, SLOTS + PREFETCH + 1))  # a draining worker hands them back
        await holder.finish(len(holder.running))
        await asyncio.sleep(0.3)  # nothing more arrives: the pull requests were withdrawn
        assert len(holder.started) == SLOTS + PREFETCH
    finally:
        await consumer.close()

    async def handed_back() -> bool:
        return await consumer_state(nc, KIND) == (20 - SLOTS - PREFETCH, 0)

    await poll(handed_back, timeout_s=10, what="the drained messages acked, the rest untouched")


async def test_a_worker_hands_its_prefetched_tasks_back_on_sigterm(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    """64 slots take 8 ahead by default; SIGTERM gives those back at once, not after ack_wait."""
    args = ("--kind", "echo", "--max-inflight", "64", "--drain-timeout-s", "10", "--ack-wait-s", "30")
    a = await launch(start_worker, "A", *args)
    log = await ResultLog().start(nc)
    specs = [TaskSpec("acme", "echo", EchoIn(text=str(i), sleep_s=2.0)) for i in range(100)]
    refs = await Publisher(nc).submit_many(specs)
    published = {r.task_id for r in refs if isinstance(r, TaskRef)}
    assert len(published) == 100

    async def a_full() -> bool:
        running = await metric(a, "agentbus_inflight", kind="echo")
        return running == 64 and await metric(a, "agentbus_prefetched", kind="echo") == 8

    await poll(a_full, timeout_s=20, what="A running 64 tasks with 8 prefetched")
    assert (await consumer_state(nc, "echo"))[1] == 72
    sigterm_at = time.monotonic()
    a.signal(signal.SIGTERM)
    b = await launch(start_worker, "B", *args)
    assert await asyncio.to_thread(a.wait, 30) == 0, a.log()
    await poll(
        lambda: log.ok_ids() >= published,
        timeout_s=25 - (time.monotonic() - sigterm_at),  # ack_wait (30 s) would be too late
        what="every task done, the handed-back ones by B",
    )
    await log.stop()
    assert not log.failed()
    assert await dead_letters(nc) == []
    by_a = {r.task_id for r in log.results if r.worker == "A"}
    assert len(by_a) == 64  # what it ran; the 8 prefetched went to B at once
    assert await metric(b, "agentbus_redeliveries_total", kind="echo") == 8
    await poll(lambda: queue_empty(nc, "echo"), timeout_s=10, what="an empty queue")


async def test_prefetched_tasks_are_heartbeated_past_the_ack_wait(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    """With a 2 s ack wait and 3 s tasks, the 8 prefetched tasks wait 3 s for a slot: only the
    heartbeats (+WPI) they get like running tasks keep JetStream from redelivering them."""
    args = ("--kind", "echo", "--max-inflight", "64", "--ack-wait-s", "2")
    worker = await launch(start_worker, "A", *args)
    log = await ResultLog().start(nc)
    specs = [TaskSpec("acme", "echo", EchoIn(text=str(i), sleep_s=3.0)) for i in range(72)]
    refs = await Publisher(nc).submit_many(specs)
    published = {r.task_id for r in refs if isinstance(r, TaskRef)}

    async def waiting() -> bool:
        return await metric(worker, "agentbus_prefetched", kind="echo") == 8

    await poll(waiting, timeout_s=20, what="8 tasks prefetched behind 64 running ones")
    await poll(lambda: log.ok_ids() >= published, timeout_s=30, what="all 72 tasks done")
    await log.stop()
    assert [r.attempts for r in log.results] == [1] * 72  # none was redelivered
    assert await metric(worker, "agentbus_redeliveries_total", kind="echo") == 0
    await poll(lambda: queue_empty(nc, "echo"), timeout_s=10, what="an empty queue")
