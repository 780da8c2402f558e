"""The effects ledger and tenant KV on a real nats-server, and derived follow-up ids."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgspec
import pytest
from helpers_a import poll
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from agentbus.errors import InvalidSubjectError, Retry
from agents import Context, Registry, agent
from agents.api import follow_up_id
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.ledger import Ledger, OnceKey, TenantKV, check_key
from bus.publisher import Publisher
from bus.records import KV_BUCKET, ONCE_BUCKET
from bus.topology import TASKS_STREAM

pytestmark = pytest.mark.integration


async def test_once_runs_a_step_once_and_returns_its_value_to_every_attempt(nc: Client) -> None:
    js = nc.jetstream()
    ledger = Ledger(await js.key_value(ONCE_BUCKET), worker="w")
    runs: Counter[str] = Counter()

    async def charge() -> dict[str, Any]:
        runs["charge"] += 1
        return {"receipt": runs["charge"]}

    name = OnceKey("acme", "t1", "charge")
    first = await ledger.once(name, charge, lease_s=5, attempt=1)
    again = await ledger.once(name, charge, lease_s=5, attempt=2)
    assert first == again == {"receipt": 1}
    assert runs["charge"] == 1
    # another tenant's task of the same id and step is its own step
    assert await ledger.once(OnceKey("beta", "t1", "charge"), charge, lease_s=5) == {"receipt": 2}


async def test_a_live_claim_makes_others_retry_and_a_dead_ones_lease_is_taken_over(nc: Client) -> None:
    js = nc.jetstream()
    ledger = Ledger(await js.key_value(ONCE_BUCKET))
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "first"

    name = OnceKey("acme", "t2", "send")
    running = asyncio.create_task(ledger.once(name, slow, lease_s=30))
    await started.wait()
    with pytest.raises(Retry):  # a redelivery while the first attempt still runs
        await ledger.once(name, _never, lease_s=30)
    release.set()
    assert await running == "first"

    # a claim whose worker died (kill -9): pending, lease short and run out
    dead = OnceKey("acme", "t3", "send")
    kv = await js.key_value(ONCE_BUCKET)
    await kv.create(dead.key, b'{"state":"pending","until":1.0,"worker":"gone"}')

    async def again() -> str:
        return "second"

    assert await ledger.once(dead, again, lease_s=30) == "second"


async def _never() -> str:
    raise AssertionError("ran while another attempt held the step")


async def test_a_step_that_raises_releases_its_claim(nc: Client) -> None:
    ledger = Ledger(await nc.jetstream().key_value(ONCE_BUCKET))
    name = OnceKey("acme", "t4", "flaky")

    async def fails() -> int:
        raise RuntimeError("downstream 503")

    async def works() -> int:
        return 7

    with pytest.raises(RuntimeError):
        await ledger.once(name, fails, lease_s=30)
    assert await ledger.once(name, works, lease_s=30) == 7


async def test_tenant_kv_compare_and_set_and_no_escape(nc: Client) -> None:
    kv = await nc.jetstream().key_value(KV_BUCKET)
    acme, beta = TenantKV(kv, "acme"), TenantKV(kv, "beta")
    rev = await acme.create("stock.A", b"5")
    assert rev is not None
    assert await acme.create("stock.A", b"9") is None  # exists
    assert await acme.update("stock.A", b"4", rev) is not None
    assert await acme.update("stock.A", b"3", rev) is None  # stale revision: refused
    assert await beta.get("stock.A") is None
    for bad in ("*", ">", "a.>", "", "a..b", "a b", "../beta.stock", "x" * 129):
        with pytest.raises(InvalidSubjectError):
            await acme.get(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_check_key_never_lets_a_wildcard_or_empty_token_through(key: str) -> None:
    try:
        check_key(key)
    except InvalidSubjectError:
        return
    tokens = key.split(".")
    assert all(tokens)
    assert len(tokens) <= 8
    assert not any(c in key for c in "*> \t\r\n/")


class ParentIn(msgspec.Struct):
    text: str


async def test_a_retried_handlers_follow_ups_are_stored_once(nc: Client, nats_url: str) -> None:
    attempts: Counter[str] = Counter()
    children: Counter[str] = Counter()

    async def parent(ctx: Context, task: ParentIn) -> ParentIn:
        attempts[ctx.task_id] += 1
        await ctx.publish("child", {"text": task.text})
        await ctx.publish("child", {"text": task.text + "!"})
        if ctx.attempt == 1:
            raise RuntimeError("fails after queueing its follow-ups")
        return task

    async def child(ctx: Context, task: ParentIn) -> ParentIn:
        children[ctx.task_id] += 1
        return task

    specs = [
        agent(kind="parent", input=ParentIn, output=ParentIn, timeout_s=10)(parent),
        agent(kind="child", input=ParentIn, output=ParentIn, timeout_s=10)(child),
    ]
    cfg = WorkerConfig(nats_url=nats_url, http_port=-1, retry_base_s=0.05, retry_max_s=0.1)
    worker = Worker(cfg, Registry(specs))
    await worker.start()
    try:
        await Publisher(nc).submit("acme", "parent", ParentIn(text="go"), task_id="p1")
        await poll(lambda: attempts["p1"] == 2 and len(children) == 2, timeout_s=20, what="two attempts")
        await asyncio.sleep(0.5)  # room for a duplicate child to run
        info = await nc.jetstream().stream_info(TASKS_STREAM)
    finally:
        await worker.stop()
    assert set(children) == {follow_up_id("p1", "child", "0"), follow_up_id("p1", "child", "1")}
    assert set(children.values()) == {1}
    assert info.state.messages == 0


async def test_ensure_records_moves_buckets_to_the_configured_ttl(nc: Client) -> None:
    from bus.records import RecordLimits, ensure_records

    js = nc.jetstream()
    await ensure_records(js, RecordLimits(once_max_age_s=3600))
    assert (await js.stream_info(f"KV_{ONCE_BUCKET}")).config.max_age == 3600
    assert (await js.stream_info(f"KV_{KV_BUCKET}")).config.max_age in (0, None)  # kept for good
