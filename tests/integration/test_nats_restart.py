"""nats-server restarts under a steady stream of tasks: workers reconnect and resume, 0 lost.

The server is stopped mid-run and started again on the same port and store. The
server forgets every pull request of a disconnected client (the trap of nats.py
#504), so a worker that does not re-issue its pulls after the reconnect would sit
idle forever. Every task whose publish JetStream acked must complete.

Results are read from the ``RESULTS`` stream where every result is stored (docs/records.md):
a core subscription would miss results published while it is itself reconnecting,
while a worker's result publishes are buffered across the outage and stored once
it reconnects. A result is sent before its task is acked, on the same connection,
so an acked task always has its result stored.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest
from conftest import WorkerProcess, async_wait_until
from nats.aio.client import Client
from nats.js import JetStreamContext

from agentbus.errors import NoStreamError, PayloadTooLargeError, PublishError, StreamFullError
from bus.embedded import EmbeddedNats
from bus.publisher import Publisher
from bus.records import RESULTS_STREAM
from bus.topology import DLQ_STREAM, TASKS_STREAM, ensure_streams

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RESULTS = RESULTS_STREAM
_OK = re.compile(r'^agentbus_tasks_total\{(?=[^}]*kind="echo")(?=[^}]*outcome="ok")[^}]*\} (\S+)$', re.M)


class SteadyPublisher:
    """Publishes echo tasks back to back; remembers which were acked and which failed."""

    def __init__(self, nc: Client) -> None:
        self._pub = Publisher(nc, ack_timeout_s=3.0)
        self.attempted: list[str] = []
        self.hung: set[str] = set()
        self.acked: set[str] = set()
        self.failed: set[str] = set()
        self.acked_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    def acked_since(self, t: float) -> int:
        return sum(1 for at in self.acked_at.values() if at > t)

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            task_id = f"steady-{n:06d}"
            self.attempted.append(task_id)
            try:
                await asyncio.wait_for(
                    self._pub.submit("acme", "echo", {"text": task_id, "sleep_s": 0.005}, task_id=task_id), 30
                )
            except TimeoutError:  # the publisher's own ack timeout (3 s) should have fired long before
                self.hung.add(task_id)
            except PublishError:  # refused or no ack during the outage: not counted as published
                self.failed.add(task_id)
                await asyncio.sleep(0.05)  # pace retries during the outage
            else:
                self.acked.add(task_id)
                self.acked_at[task_id] = time.monotonic()
                await asyncio.sleep(0.002)  # a steady stream, not a flood


async def completed_ids(js: JetStreamContext) -> set[str]:
    """Task ids with a result stored in the results stream (``results.<tenant>.<task_id>``)."""
    info = await js.stream_info(RESULTS, subjects_filter="results.>")
    return {subject.split(".", 2)[2] for subject in (info.state.subjects or {})}


def ok_count(worker: WorkerProcess) -> float:
    status, text = worker.get("/metrics")
    match = _OK.search(text)
    return float(match[1]) if status == 200 and match else 0.0


async def restart_under_load(
    server: EmbeddedNats, workers: list[WorkerProcess], publisher: SteadyPublisher, cycle: int
) -> None:
    """Stop the server while tasks flow, start it again, wait until every worker consumes again."""
    acked_before = len(publisher.acked)
    await async_wait_until(
        lambda: all(ok_count(w) > 0 for w in workers) and len(publisher.acked) >= acked_before + 50,
        30,
        f"cycle {cycle}: both workers completing tasks",
    )
    before = [ok_count(w) for w in workers]
    server.stop()
    await async_wait_until(
        lambda: all(w.get("/readyz")[0] == 503 for w in workers), 30, "workers noticing the outage"
    )
    server.start()
    restarted = time.monotonic()
    await async_wait_until(
        lambda: all(w.get("/readyz")[0] == 200 for w in workers), 30, "workers reconnected"
    )
    # each worker finishes tasks again, and the publisher gets acks for new ones
    await async_wait_until(
        lambda: (
            publisher.acked_since(restarted) >= 100
            and all(ok_count(w) > b for w, b in zip(workers, before, strict=True))
        ),
        60,
        f"cycle {cycle}: both workers consuming after the restart",
    )


async def test_workers_resume_after_nats_restarts_and_no_acked_task_is_lost(
    nats_server: EmbeddedNats, nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    js = nc.jetstream()
    await ensure_streams(js)  # RESULTS among them, before any result is published
    flags = ("--kind", "echo", "--max-inflight", "4", "--ack-wait-s", "2")
    workers = [start_worker("r1", *flags), start_worker("r2", *flags)]
    publisher = SteadyPublisher(nc)
    publisher.start()
    try:
        for cycle in range(2):
            await restart_under_load(nats_server, workers, publisher, cycle)
    finally:
        await publisher.stop()

    assert publisher.acked, "nothing was published"
    assert not publisher.hung, "submit hung instead of failing"
    assert publisher.acked.isdisjoint(publisher.failed)

    async def all_acked_done() -> bool:
        return publisher.acked <= await completed_ids(js)

    deadline = time.monotonic() + 60
    while not await all_acked_done():
        if time.monotonic() > deadline:
            missing = sorted(publisher.acked - await completed_ids(js))
            raise AssertionError(f"{len(missing)} acked tasks never completed: {missing[:20]}")
        await asyncio.sleep(0.1)

    completed = await completed_ids(js)
    assert completed <= set(publisher.attempted), "a result for a task nobody published"
    assert not (publisher.acked - completed)  # 0 lost

    deadline = time.monotonic() + 60
    while (await js.stream_info(TASKS_STREAM)).state.messages:
        assert time.monotonic() < deadline, "tasks left in the TASKS stream"
        await asyncio.sleep(0.1)
    assert (await js.stream_info(DLQ_STREAM)).state.messages == 0
    for w in workers:
        assert w.proc.poll() is None, w.log()
        assert w.get("/readyz")[0] == 200
        log = w.log()
        assert log.count("nats reconnected") == 2, log
        # resumed by re-issuing pulls on reconnect, not rescued by the silent-server watchdog later
        assert "re-issuing pull requests" not in log, log


async def test_a_publish_whose_ack_never_comes_fails_and_frees_its_window_slot(
    nats_server: EmbeddedNats, nc: Client
) -> None:
    """An ack lost in an outage must not hang ``submit`` nor hold a slot of the ack window for good."""
    js = nc.jetstream()
    pub = Publisher(nc, max_pending_acks=1, ack_timeout_s=0.5)
    await pub.submit("acme", "echo", {"text": "before"}, task_id="before")
    nats_server.stop()
    await async_wait_until(lambda: not nc.is_connected, 30, "the client noticing the outage")
    with pytest.raises(PublishError, match="no ack from JetStream") as info:
        await asyncio.wait_for(pub.submit("acme", "echo", {"text": "x"}, task_id="in-outage"), 30)
    assert info.value.task_id == "in-outage"
    assert not isinstance(info.value, StreamFullError | NoStreamError | PayloadTooLargeError)

    nats_server.start()
    await async_wait_until(lambda: nc.is_connected, 30, "the client reconnecting")
    # a window of one: this would stall forever if the lost ack still held its slot
    ref = await asyncio.wait_for(pub.submit("acme", "echo", {"text": "x"}, task_id="in-outage"), 30)
    # the buffered first attempt reached the server on reconnect; the retry is its duplicate
    assert ref.duplicate
    assert (await js.stream_info(TASKS_STREAM)).state.messages == 2
    await asyncio.wait_for(pub.flush(), 30)
