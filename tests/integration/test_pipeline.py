"""The fan-out / fan-in pipeline completes with a worker killed (SIGKILL) in the middle, and the
order demo's stock is shared by workers through KV compare-and-set: it never goes negative."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
from conftest import WorkerProcess
from helpers_a import poll
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from agents.builtin.orders import OrderIn, OrderOut
from agents.builtin.pipeline import JoinOut, SplitIn, SplitOut
from bus.publisher import Publisher
from bus.records import KV_BUCKET

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTS = 12
WORDS_PER_PART = 5


async def test_pipeline_completes_with_a_worker_killed_in_the_middle(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    args = ("--agents", "agents.builtin.pipeline", "--ack-wait-s", "2", "--max-inflight", "4", "--no-gossip")
    w1, w2 = await asyncio.gather(*(asyncio.to_thread(start_worker, n, *args) for n in ("w1", "w2")))
    words = [f"w{n:03d}" + "x" * (n % 7) for n in range(PARTS * WORDS_PER_PART)]
    pub = Publisher(nc)
    split = await pub.call(
        "acme",
        "doc_split",
        SplitIn(text=" ".join(words), chunk_words=WORDS_PER_PART, hold_s=1.0),
        timeout_s=30,
        output_type=SplitOut,
    )
    assert split.ok, split.error
    assert split.output is not None
    job = split.output.job
    kv = await nc.jetstream().key_value(KV_BUCKET)

    async def some_parts_in() -> bool:
        try:
            return bool((await kv.get(f"acme.pipe.{job}.done")).value)
        except Exception:
            return False

    await poll(some_parts_in, timeout_s=60, what="the first parts in")
    w1.signal(signal.SIGKILL)  # chunks held by w1 are redelivered to w2 after ack_wait
    await asyncio.to_thread(w1.wait, 30)
    joined = await pub.result(split.output.join, tenant="acme", timeout_s=90, output_type=JoinOut)
    assert joined.ok, joined.error
    longest = max(words, key=len)
    assert joined.output == JoinOut(job=job, parts=PARTS, words=len(words), longest=longest)
    assert w2.proc.poll() is None


async def test_order_stock_is_shared_and_never_negative(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    args = ("--kind", "order", "--no-gossip")
    pub = Publisher(nc)

    async def buy(n: int, qty: int) -> str:
        request = OrderIn(request=f"customer U{n} buys {qty} of PROD-003")
        result = await pub.call("acme", "order", request, timeout_s=30, output_type=OrderOut)
        assert isinstance(result.output, OrderOut), result.error
        return result.output.status

    await asyncio.gather(*(asyncio.to_thread(start_worker, n, *args) for n in ("w1", "w2")))
    assert [await buy(n, 1) for n in range(3)] == ["created"] * 3  # PROD-003 starts at 5
    assert await buy(10, 3) == "insufficient_stock"  # whichever worker takes it: 2 are left
    # concurrent orders of the last 2 units across the two workers: exactly 2 are created
    # (stock in each worker's memory would sell up to 5 - sold there, on each)
    statuses = sorted(await asyncio.gather(*(buy(20 + n, 1) for n in range(8))))
    assert statuses == ["created"] * 2 + ["insufficient_stock"] * 6
    kv = await nc.jetstream().key_value(KV_BUCKET)
    assert (await kv.get("acme.stock.PROD-003")).value == b"0"
    with pytest.raises(KeyNotFoundError):
        await kv.get("other.stock.PROD-003")  # another tenant's stock is untouched
