"""SIGTERM drain: stop fetching, finish in-flight work, hand the rest back at once, exit 0.

``ack_wait`` is 30 s on purpose: anything a draining worker kept without acking
or nakking would only come back after 30 s, so "every task done well before
that" proves the hand-over was immediate, not a redelivery after a timeout.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable

import pytest
from conftest import WorkerProcess
from helpers_a import ResultLog, consumer_totals, dead_letters, launch, metric, poll, queue_empty
from nats.aio.client import Client

from agents.builtin.basic import EchoIn
from bus.publisher import Publisher, TaskRef, TaskSpec
from bus.topology import TASKS_STREAM

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACK_WAIT_S = 30.0
TENANTS = ("acme", "globex", "initech")


def _args(*, drain_timeout_s: float, max_inflight: int | None = None) -> tuple[str, ...]:
    args = ("--drain-timeout-s", str(drain_timeout_s), "--ack-wait-s", str(ACK_WAIT_S), "--kind", "echo")
    return args + (("--max-inflight", str(max_inflight)) if max_inflight else ())


async def _held(worker: WorkerProcess) -> int:
    return int(await metric(worker, "agentbus_inflight", kind="echo") or 0)


async def _publish(pub: Publisher, specs: list[TaskSpec]) -> set[str]:
    refs = await asyncio.wait_for(pub.submit_many(specs), 30)
    ids = {r.task_id for r in refs if isinstance(r, TaskRef)}
    assert len(ids) == len(specs)
    return ids


async def test_sigterm_finishes_in_flight_work_and_hands_over_the_queue(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    args = _args(drain_timeout_s=10, max_inflight=10)
    a = await launch(start_worker, "A", *args)
    b = await launch(start_worker, "B", *args)
    log = await ResultLog().start(nc)
    rng = random.Random(20240611)
    specs = [
        TaskSpec(TENANTS[i % 3], "echo", EchoIn(text=str(i), sleep_s=rng.uniform(1.0, 4.0)))
        for i in range(40)
    ]
    published = await _publish(Publisher(nc), specs)

    async def both_full() -> bool:
        return await _held(a) == 10 and await _held(b) == 10

    await poll(both_full, timeout_s=20, what="both workers holding 10 tasks")
    sigterm_at = time.monotonic()
    a.signal(signal.SIGTERM)
    # Liveness bound: the 10 s drain timeout plus a flush; a hung drain fails here.
    assert await asyncio.to_thread(a.wait, 30) == 0, a.log()
    exited_at = time.monotonic()

    # Well before ack_wait could have redelivered anything A kept: the hand-over was immediate.
    await poll(
        lambda: log.ok_ids() >= published,
        timeout_s=ACK_WAIT_S - 5 - (time.monotonic() - sigterm_at),
        what="every task done before ack_wait could matter",
    )
    await poll(lambda: queue_empty(nc, "echo"), timeout_s=10, what="an empty queue")
    await log.stop()

    assert log.ok_ids() == published
    assert not log.failed()
    assert await dead_letters(nc) == []
    # A finished what it held (all shorter than the drain timeout) instead of dropping it. With
    # 10 slots and a refill at 5 free, A held at least 5 tasks whenever the queue was not empty.
    finished_by_a_late = {r.task_id for t, r in log.arrivals if r.worker == "A" and t > sigterm_at}
    assert len(finished_by_a_late) >= 5
    assert all(t <= exited_at for t, r in log.arrivals if r.worker == "A")
    # Nothing ran twice because of an ack timeout; a redelivered task was handed back by A.
    for r in log.results:
        assert r.attempts == 1 or r.worker == "B", r
    assert len(log.results) == len(published), "a task ran twice"
    assert "worker A is stopped" in a.log()
    assert "handing back" not in a.log()  # nothing ran past the drain timeout


async def test_task_longer_than_the_drain_timeout_is_handed_back_at_once(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    args = _args(drain_timeout_s=2)
    a = await launch(start_worker, "A", *args)
    log = await ResultLog().start(nc)
    (task_id,) = await _publish(Publisher(nc), [TaskSpec("acme", "echo", EchoIn(text="long", sleep_s=15))])

    async def a_has_it() -> bool:
        return await _held(a) == 1

    await poll(a_has_it, timeout_s=20, what="A running the long task")
    delivered_at = time.monotonic()
    b = await launch(start_worker, "B", *args)

    a.signal(signal.SIGTERM)
    assert await asyncio.to_thread(a.wait, 20) == 0, a.log()
    assert "drain timeout: handing back 1 running tasks" in a.log()
    assert not log.results, "A must not report the cancelled task as done"

    # Handed back: B starts it at once and needs its 15 s; after an ack timeout it would
    # only start 30 s after A got it.
    await poll(
        lambda: bool(log.ok_ids()),
        timeout_s=delivered_at + ACK_WAIT_S + 15 - 5 - time.monotonic(),
        what="B finishing the handed-back task before ack_wait could redeliver it",
    )
    await log.stop()
    (result,) = log.results
    assert result.task_id == task_id
    assert (result.worker, result.attempts) == ("B", 2)
    assert result.output is not None
    assert result.output.attempt == 2
    assert await metric(b, "agentbus_redeliveries_total", kind="echo") == 1
    assert await queue_empty(nc, "echo")


async def test_a_draining_worker_takes_no_new_tasks(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    """Tasks published while the only worker drains wait, untouched, for the next worker.

    A draining worker that kept its pull requests on the server would be handed
    them, hand each back and be handed it again, until max_deliver dead-lettered
    tasks that never ran (this was a bug).
    """
    args = _args(drain_timeout_s=10, max_inflight=10)
    a = await launch(start_worker, "A", *args)
    log = await ResultLog().start(nc)
    pub = Publisher(nc)
    (slow,) = await _publish(pub, [TaskSpec("acme", "echo", EchoIn(text="slow", sleep_s=8))])

    async def a_has_it() -> bool:
        return await _held(a) == 1

    await poll(a_has_it, timeout_s=20, what="A running the slow task")
    js = nc.jetstream()
    assert (await consumer_totals(nc, "echo")).num_waiting, "A asks for more"
    a.signal(signal.SIGTERM)

    async def withdrawn() -> bool:
        return (await consumer_totals(nc, "echo")).num_waiting == 0

    # Well inside the slow task's 8 s: A is still draining (checked just below).
    await poll(withdrawn, timeout_s=5, what="the server holding no pull request of the draining A")
    assert await _held(a) == 1, "A is still draining, running the slow task"
    fresh = await _publish(pub, [TaskSpec("globex", "echo", EchoIn(text=str(i))) for i in range(5)])
    assert await asyncio.to_thread(a.wait, 30) == 0, a.log()

    assert await dead_letters(nc) == []
    info = await consumer_totals(nc, "echo")
    assert (info.num_ack_pending, info.delivered) == (0, 1), "only the slow task was ever delivered"
    stream = await js.stream_info(TASKS_STREAM, subjects_filter="tasks.*.echo")
    assert stream.state.subjects == {"tasks.globex.echo": 5}, "the fresh tasks wait, untouched"
    assert log.ok_ids() == {slow}, "A finished its slow task during the drain"

    await launch(start_worker, "B", *args)
    await poll(lambda: log.ok_ids() >= fresh | {slow}, timeout_s=20, what="B doing the fresh tasks")
    await log.stop()
    assert sorted((r.worker, r.attempts) for r in log.results) == [("A", 1)] + [("B", 1)] * 5
