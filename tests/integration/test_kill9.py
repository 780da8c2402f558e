"""kill -9: a worker dies holding tasks; JetStream redelivers them after ack_wait; none is lost.

Delivery is at-least-once, so a task may complete twice (finished by the dead
worker, its ack lost): results are compared as sets of task ids.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import msgspec
import pytest
from conftest import WorkerProcess
from helpers_a import ResultLog, dead_letters, launch, metric, poll, queue_empty
from nats.aio.client import Client

from agents.builtin.basic import EchoIn
from bus.messages import HDR_MSG_ID, DlqReason
from bus.publisher import Publisher, TaskRef, TaskSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANTS = ("acme", "globex", "initech")


async def test_sigkill_loses_no_task(nc: Client, start_worker: Callable[..., WorkerProcess]) -> None:
    args = ("--ack-wait-s", "2", "--kind", "echo", "--max-inflight", "20")
    a = await launch(start_worker, "A", *args)
    b = await launch(start_worker, "B", *args)
    log = await ResultLog().start(nc)
    pub = Publisher(nc)
    specs = [TaskSpec(TENANTS[i % 3], "echo", EchoIn(text=str(i), sleep_s=0.5)) for i in range(300)]
    refs = await asyncio.wait_for(pub.submit_many(specs), 30)
    published = {r.task_id for r in refs if isinstance(r, TaskRef)}
    assert len(published) == 300

    async def both_busy() -> bool:
        held = [await metric(w, "agentbus_inflight", kind="echo") for w in (a, b)]
        return all((n or 0) > 0 for n in held)

    await poll(both_busy, timeout_s=20, what="both workers holding tasks")
    a.signal(signal.SIGKILL)
    assert await asyncio.to_thread(a.wait, 10) == -signal.SIGKILL
    done_by_a = {r.task_id for r in log.results if r.worker == "A"}
    assert len(done_by_a) < len(published), "A finished everything before it died: nothing was tested"

    await poll(lambda: log.ok_ids() >= published, timeout_s=60, what="every published task completed")
    await poll(lambda: queue_empty(nc, "echo"), timeout_s=10, what="an empty queue")
    await log.stop()

    assert log.ok_ids() == published, "lost or invented tasks"
    assert not log.failed()
    assert await dead_letters(nc) == []
    # What A held when it died came back after ack_wait and was finished by B.
    redelivered = [r for r in log.results if r.attempts >= 2]
    assert redelivered, "nothing was redelivered: A held nothing when killed?"
    assert {r.worker for r in redelivered} == {"B"}
    assert all(r.output is not None and r.output.attempt == r.attempts for r in redelivered)
    assert (await metric(b, "agentbus_redeliveries_total", kind="echo") or 0) >= len(
        {r.task_id for r in redelivered}
    )


async def test_task_whose_worker_is_killed_on_every_delivery_is_dead_lettered(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    """The last allowed delivery dies with its worker: the next delivery is dead-lettered
    (``max_deliveries``) by the worker that gets it, without running (the server's max_deliver
    is unlimited: the worker judges; no advisory is involved)."""
    js = nc.jetstream()
    flags = ("--kind", "echo", "--max-deliver", "2", "--ack-wait-s", "1")

    async def holds_the_task(w: WorkerProcess) -> bool:
        return await metric(w, "agentbus_inflight", kind="echo") == 1

    w1 = await launch(start_worker, "kill-1", *flags)
    data = msgspec.json.encode({"id": "doomed", "payload": {"text": "x", "sleep_s": 30}})
    await js.publish("tasks.acme.echo", data, headers={HDR_MSG_ID: "acme:echo:doomed"})
    await poll(lambda: holds_the_task(w1), timeout_s=30, what="kill-1 running the task")
    w2 = await launch(start_worker, "kill-2", *flags)
    w1.signal(signal.SIGKILL)
    assert await asyncio.to_thread(w1.wait, 10) == -signal.SIGKILL
    await poll(lambda: holds_the_task(w2), timeout_s=30, what="kill-2 running the redelivered task")
    assert await metric(w2, "agentbus_redeliveries_total", kind="echo") == 1
    w3 = await launch(start_worker, "kill-3", *flags)
    w2.signal(signal.SIGKILL)
    assert await asyncio.to_thread(w2.wait, 10) == -signal.SIGKILL

    await poll(lambda: dead_letters(nc), timeout_s=30, what="the dead letter")
    (letter,) = await dead_letters(nc)
    assert letter.reason is DlqReason.MAX_DELIVERIES
    assert (letter.tenant, letter.kind, letter.task_id) == ("acme", "echo", "doomed")
    assert letter.attempts == 2  # the deliveries that ran; the third only dead-lettered it
    assert letter.data == data
    assert letter.worker == "kill-3"
    assert "delivery 3 of at most 2" in letter.detail
    await poll(lambda: queue_empty(nc, "echo"), timeout_s=10, what="an empty queue")
    assert (await js.stream_info("TASKS")).state.messages == 0
    assert await metric(w3, "agentbus_fetched_total", kind="echo") == 1  # delivered, never run
    assert await metric(w3, "agentbus_inflight", kind="echo") == 0
    assert w3.get("/readyz")[0] == 200
