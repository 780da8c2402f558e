"""Fair share between tenants on a real nats-server (issue 19, docs/fairness.md).

Every assertion is on counts and order, never on wall-clock: a quiet tenant's tasks finish
while a noisy tenant still has most of its backlog queued; a tenant at its quota is refused
with TenantQuotaExceeded while another publishes; one tenant's dead letters never evict
another's; the backpressure bound holds with many tenants; a drain hands every tenant's
messages back.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from helpers_a import poll
from nats.aio.client import Client
from nats.js.errors import APIError

from agentbus.errors import StreamFullError, TenantQuotaExceeded
from agents import AgentSpec, Context, Registry, agent
from agents.api import Handler
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.fair import FairConsumer
from bus.messages import DeadLetter, DlqReason, encode
from bus.publisher import Publisher, TaskRef, TaskSpec
from bus.subjects import dlq_subject
from bus.topology import DLQ_STREAM, TASKS_STREAM, StreamLimits, ensure_streams

pytestmark = pytest.mark.integration


class Job(msgspec.Struct):
    sleep_s: float = 0.0


def _registry(done: list[str], *, sleeps: bool = True) -> Registry:
    """Agent ``job``: sleeps (unless told not to), then records its tenant in completion order."""

    async def job(ctx: Context, task: Job) -> Job:
        if task.sleep_s and sleeps:
            await asyncio.sleep(task.sleep_s)
        done.append(ctx.tenant)
        return task

    return Registry([agent(kind="job", input=Job, output=Job, timeout_s=30, max_inflight=4)(job)])


def _config(nats_url: str, **changes: Any) -> WorkerConfig:
    base: dict[str, Any] = {
        "nats_url": nats_url,
        "worker_id": "fair",
        "http_port": -1,
        "gossip": False,
        "consumer_info_interval_s": 0.2,
    }
    return WorkerConfig(**(base | changes))


@pytest.fixture
async def publisher(nc: Client) -> AsyncIterator[Publisher]:
    pub = Publisher(nc)
    yield pub
    await pub.close()


async def _queue(pub: Publisher, tenant: str, n: int, sleep_s: float = 0.0) -> None:
    refs = await pub.submit_many(TaskSpec(tenant, "job", Job(sleep_s=sleep_s)) for _ in range(n))
    assert all(isinstance(r, TaskRef) for r in refs)


def _fair(worker: Worker) -> FairConsumer:
    consumer = worker.runners[0].consumer
    assert isinstance(consumer, FairConsumer)
    return consumer


async def test_a_quiet_tenant_is_served_while_a_noisy_one_has_a_backlog(
    nats_url: str, publisher: Publisher
) -> None:
    done: list[str] = []
    worker = Worker(_config(nats_url), _registry(done))
    await _queue(publisher, "noisy", 400, sleep_s=0.02)
    await worker.start()
    try:
        await poll(lambda: done.count("noisy") >= 8, timeout_s=30, what="the noisy backlog being served")
        for i in range(5):  # one at a time, each waited for, like the quiet tenant
            await _queue(publisher, "quiet", 1)
            await poll(lambda i=i: done.count("quiet") > i, timeout_s=30, what=f"quiet task {i}")  # type: ignore[misc]
        noisy_before_quiet_ended = done.count("noisy")
    finally:
        await worker.stop()
    # Per-kind, arrival order: every quiet task would wait for the 400 noisy ones before it.
    assert noisy_before_quiet_ended < 200, noisy_before_quiet_ended
    # Each quiet task waited for at most a slot's worth of noisy ones (4 slots, one wave each).
    quiet_at = [i for i, tenant in enumerate(done) if tenant == "quiet"]
    gaps = [b - a for a, b in itertools.pairwise(quiet_at)]
    assert len(quiet_at) == 5
    assert max(gaps) < 60, (quiet_at, gaps)


async def test_weights_share_the_slots_three_to_one(nats_url: str, publisher: Publisher) -> None:
    done: list[str] = []
    config = _config(nats_url, tenant_weights={"gold": 3}, max_inflight=4, prefetch=4)
    await _queue(publisher, "gold", 300, sleep_s=0.01)
    await _queue(publisher, "bronze", 300, sleep_s=0.01)
    worker = Worker(config, _registry(done))
    await worker.start()
    try:
        await poll(lambda: len(done) >= 240, timeout_s=60, what="240 completions")
    finally:
        await worker.stop()
    window = Counter(done[40:240])  # after both lanes are open and full
    ratio = window["gold"] / max(1, window["bronze"])
    assert 2.4 <= ratio <= 3.6, window


async def test_the_backpressure_bound_holds_with_many_tenants(nats_url: str, publisher: Publisher) -> None:
    done: list[str] = []
    tenants = [f"t{i:03d}" for i in range(120)]
    for tenant in tenants:
        await _queue(publisher, tenant, 8, sleep_s=0.002)
    worker = Worker(_config(nats_url, max_inflight=8, prefetch=2), _registry(done))
    await worker.start()
    consumer = _fair(worker)
    held: list[int] = []
    outstanding: list[int] = []
    try:
        while len(done) < len(tenants) * 8:  # sample the worker's own counts at every turn of the loop
            held.append(consumer.held)
            outstanding.append(consumer.held + consumer.prefetched + consumer.credit)
            await asyncio.sleep(0.001)
            assert len(held) < 200_000, "the tenants were never all served"
    finally:
        await worker.stop()
    assert max(held) <= 8, max(held)
    assert max(held) == 8, "the slots were never all used: the test proves nothing"
    # places (8 slots + 2 prefetch) plus one standing one-message request per idle tenant; all
    # 120 are backlogged here, so requests never go beyond the places
    assert max(outstanding) <= 10, max(outstanding)
    assert Counter(done) == Counter({t: 8 for t in tenants})


async def test_a_drain_hands_back_every_tenants_messages(nats_url: str, publisher: Publisher) -> None:
    done: list[str] = []
    tenants = [f"d{i}" for i in range(12)]
    for tenant in tenants:
        await _queue(publisher, tenant, 3, sleep_s=5.0)
    # ack_wait far beyond the test: a task not handed back would not come back in time
    config = _config(nats_url, max_inflight=8, prefetch=8, drain_timeout_s=0.0, ack_wait_s=600.0)
    worker = Worker(config, _registry(done))
    await worker.start()
    consumer = _fair(worker)
    await poll(
        lambda: consumer.held == 8 and consumer.prefetched == 8, timeout_s=20, what="slots, prefetch full"
    )
    held = {t for t in tenants if consumer.held_by(t)}
    await worker.stop()  # no drain time: everything held or prefetched is handed back at once
    assert done == []
    outcomes = worker.runners[0].stats.tasks
    handed_back = {t: n for (t, outcome), n in outcomes.items() if outcome == "handed_back"}
    assert sum(handed_back.values()) == 16
    assert held <= set(handed_back), "a tenant's running task was not handed back"
    assert len(handed_back) > 2, "messages of several tenants were held: the test proves something"

    second = Worker(config.with_(worker_id="fair-2"), _registry(done, sleeps=False))
    await second.start()
    try:
        await poll(
            lambda: len(done) == len(tenants) * 3, timeout_s=30, what="every task, once, before ack_wait"
        )
    finally:
        await second.stop()
    assert Counter(done) == Counter({t: 3 for t in tenants})


async def test_a_tenant_at_its_quota_is_refused_while_others_publish(nc: Client) -> None:
    limits = StreamLimits(tenant_max_queued=5)
    await ensure_streams(nc.jetstream(), limits)
    pub = Publisher(nc, tenant_quota=limits.tenant_max_queued)
    try:
        await _queue(pub, "noisy", 5)
        for _ in range(3):
            with pytest.raises(TenantQuotaExceeded) as refused:
                await pub.submit("noisy", "job", Job())
            assert (refused.value.tenant, refused.value.kind, refused.value.limit) == ("noisy", "job", 5)
            assert not isinstance(refused.value, StreamFullError)
            ref = await pub.submit("quiet", "job", Job())  # another tenant is not affected
            assert isinstance(ref, TaskRef)
        await _queue(pub, "noisy", 0)
        ok = await pub.submit("noisy", "other", Job())  # the quota is per kind too
        assert isinstance(ok, TaskRef)
    finally:
        await pub.close()
    info = await nc.jetstream().stream_info(TASKS_STREAM, subjects_filter="tasks.>")
    assert info.state.subjects == {"tasks.noisy.job": 5, "tasks.quiet.job": 3, "tasks.noisy.other": 1}


async def test_a_tenants_dead_letters_cannot_evict_anothers(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamLimits(dlq_max_per_subject=3, dlq_max_bytes=64 * 1024))

    def letter(tenant: str, i: int, size: int) -> bytes:
        data = b"x" * size
        return encode(
            DeadLetter(
                reason=DlqReason.REJECTED,
                detail=str(i),
                tenant=tenant,
                kind="job",
                task_id=f"id{i}",
                data=data,
            )
        )

    await js.publish(dlq_subject("victim", "job"), letter("victim", 0, 100))
    refused = 0
    for i in range(60):  # far past both its per-subject and the stream's byte limit
        try:
            await js.publish(dlq_subject("flood", "job"), letter("flood", i, 4000))
        except APIError:
            refused += 1
    for i in range(40):  # many tenants flooding: the byte limit refuses new letters, evicts none
        try:
            await js.publish(dlq_subject(f"f{i}", "job"), letter(f"f{i}", i, 4000))
        except APIError:
            refused += 1
    assert refused > 0, "the limits were never reached: the test proves nothing"
    info = await js.stream_info(DLQ_STREAM, subjects_filter="dlq.>")
    subjects = info.state.subjects or {}
    assert subjects[dlq_subject("victim", "job")] == 1
    assert subjects[dlq_subject("flood", "job")] == 3  # its own newest three
    victim = await js.get_last_msg(DLQ_STREAM, dlq_subject("victim", "job"))
    assert msgspec.json.decode(victim.data or b"", type=DeadLetter).detail == "0"


async def test_one_tenants_backlog_drains_through_the_synchronous_ack(
    nats_url: str, publisher: Publisher
) -> None:
    """No output, a handler that never suspends: every ack is ``ack_next_now``'s ``+NXT``. A
    request sent without its ``+NXT`` is a plain ack to the server: the credit would be lost
    and the lane would stall until the watchdog (this was a bug)."""
    count: list[int] = [0]

    async def quick(ctx: Context, task: Job) -> None:
        count[0] += 1

    no_output: Callable[[Handler[Job, None]], AgentSpec[Job, None]] = agent(
        kind="job", input=Job, max_inflight=64
    )
    spec = no_output(quick)
    await _queue(publisher, "solo", 3000)
    worker = Worker(_config(nats_url, nats_fast_path=True), Registry([spec]))
    await worker.start()
    try:
        await poll(lambda: count[0] == 3000, timeout_s=10, what="3,000 tasks, well inside the 15 s watchdog")
    finally:
        await worker.stop()


async def test_one_tenant_holds_at_most_its_cap_of_the_slots(nats_url: str, publisher: Publisher) -> None:
    done: list[str] = []
    await _queue(publisher, "noisy", 300, sleep_s=0.01)
    await _queue(publisher, "other", 300, sleep_s=0.01)
    worker = Worker(_config(nats_url, max_inflight=8, prefetch=8, tenant_max_inflight=3), _registry(done))
    await worker.start()
    consumer = _fair(worker)
    noisy: list[int] = []
    try:
        while len(done) < 400:
            noisy.append(consumer.held_by("noisy"))
            await asyncio.sleep(0.001)
            assert len(noisy) < 100_000, "the tasks never finished"
    finally:
        await worker.stop()
    assert max(noisy) == 3, max(noisy)  # reached, never passed, though 8 slots were there
