"""Round trip: a typed task in, a typed result out, for several tenants and kinds.

The tenant a handler sees is the one of the subject the task arrived on, never one
the body claims; a body that contradicts its subject is dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from conftest import WorkerProcess
from helpers_a import ResultLog, dead_letters, launch, poll, queue_empty
from nats.aio.client import Client

from agents import Context, Registry, agent, current_tenant
from agents.builtin.basic import EchoIn, EchoOut, SummarizeIn, SummarizeOut
from agents.builtin.orders import OrderIn, OrderOut
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.messages import HDR_MSG_ID, DlqReason, Result
from bus.publisher import Publisher
from bus.topology import DLQ_STREAM

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")

TEXT = "NATS streams carry tasks. Workers pull tasks from NATS streams. The weather is nice."


async def _echo(pub: Publisher, tenant: str) -> None:
    res = await pub.call(tenant, "echo", EchoIn(text=f"hi {tenant}"), timeout_s=20, output_type=EchoOut)
    assert res.ok, res.error
    assert (res.tenant, res.kind, res.worker, res.attempts) == (tenant, "echo", "w1", 1)
    assert res.output == EchoOut(text=f"hi {tenant}", tenant=tenant, attempt=1)


async def _summarize(pub: Publisher, tenant: str) -> None:
    res = await pub.call(tenant, "summarize", SummarizeIn(text=TEXT), timeout_s=20, output_type=SummarizeOut)
    assert res.ok, res.error
    assert (res.tenant, res.kind) == (tenant, "summarize")
    assert isinstance(res.output, SummarizeOut)
    assert res.output.summary == "Workers pull tasks from NATS streams."
    assert res.output.keywords == ["nats", "streams", "tasks"]
    assert res.output.words == 14


async def _orders(pub: Publisher, tenant: str) -> None:
    # PROD-003 starts at 5 per tenant: the first order empties this tenant's stock only.
    first = await pub.call(
        tenant, "order", OrderIn(request="customer U1 buys 5 of PROD-003"), timeout_s=20, output_type=OrderOut
    )
    assert first.ok, first.error
    assert isinstance(first.output, OrderOut)
    assert first.output.status == "created"
    assert first.output.order_id is not None
    assert first.output.order_id.startswith(f"{tenant}-")
    assert [s.tool for s in first.output.steps] == ["check_inventory", "create_order"]
    assert first.output.steps[0].result == {"available": 5, "enough": True}
    assert first.output.steps[1].args == {"customer": "U1", "sku": "PROD-003", "quantity": 5}

    second = await pub.call(
        tenant, "order", OrderIn(request="customer U2 buys 1 of prod-003"), timeout_s=20, output_type=OrderOut
    )
    assert second.ok, second.error
    assert isinstance(second.output, OrderOut)
    assert second.output.status == "insufficient_stock"
    assert second.output.order_id is None
    assert second.output.steps[0].result == {"available": 0, "enough": False}


@pytest.mark.slow
async def test_typed_round_trip_for_every_tenant_and_kind(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    await launch(start_worker, "w1")  # serves every built-in kind
    pub = Publisher(nc)
    try:
        await asyncio.gather(*(f(pub, t) for t in TENANTS for f in (_echo, _summarize, _orders)))
    finally:
        await pub.close()


@pytest.mark.slow
async def test_tenant_comes_from_the_subject_never_the_body(
    nc: Client, start_worker: Callable[..., WorkerProcess]
) -> None:
    await launch(start_worker, "w1", "--kind", "echo")
    log = await ResultLog().start(nc)
    js = nc.jetstream()

    async def raw(task_id: str, body: dict[str, Any]) -> bytes:
        data = msgspec.json.encode({"id": task_id, **body})
        await js.publish("tasks.acme.echo", data, headers={HDR_MSG_ID: task_id})
        return data

    # A body agreeing with its subject is fine; a "tenant" inside the payload is just payload.
    await raw("agree-1", {"tenant": "acme", "kind": "echo", "payload": {"text": "a"}})
    await raw("inner-1", {"payload": {"text": "b", "tenant": "other"}})
    spoofed = await raw("spoof-1", {"tenant": "other", "payload": {"text": "c"}})
    await raw("spoof-2", {"kind": "summarize", "payload": {"text": "d"}})

    await poll(lambda: len(log.results) >= 4, timeout_s=20, what="four results")

    by_id = {r.task_id: r for r in log.results}
    assert by_id.keys() == {"agree-1", "inner-1", "spoof-1", "spoof-2"}
    for tid, text in (("agree-1", "a"), ("inner-1", "b")):
        res = by_id[tid]
        assert res.ok
        assert res.tenant == "acme"
        assert res.output == EchoOut(text=text, tenant="acme", attempt=1)
    for tid in ("spoof-1", "spoof-2"):
        assert not by_id[tid].ok
        assert by_id[tid].output is None
        assert (by_id[tid].error or "").startswith("invalid_envelope")

    info = await js.stream_info(DLQ_STREAM, subjects_filter="dlq.>")
    assert info.state.subjects == {"dlq.acme.echo": 2}, "nothing may land in the claimed tenant's space"
    letters = {d.task_id: d for d in await dead_letters(nc)}
    assert letters.keys() == {"spoof-1", "spoof-2"}
    spoof = letters["spoof-1"]
    assert spoof.reason is DlqReason.INVALID_ENVELOPE
    assert (spoof.tenant, spoof.kind, spoof.attempts, spoof.worker) == ("acme", "echo", 1, "w1")
    assert "other" in spoof.detail
    assert spoof.data == spoofed
    assert not spoof.data_truncated
    assert letters["spoof-2"].reason is DlqReason.INVALID_ENVELOPE
    await poll(lambda: queue_empty(nc, "echo"), timeout_s=20, what="spoofed tasks terminated")
    await log.stop()


class WhoIn(msgspec.Struct):
    """``meet``: wait until every meeting task is suspended in its handler at once."""

    meet: bool = False


class WhoOut(msgspec.Struct):
    before: str
    after: str
    nested: str
    ctx_tenant: str


def _tenant_from_deep_inside() -> str:
    """Library code called by a handler: no tenant argument, still the right tenant."""
    return current_tenant()


async def test_current_tenant_inside_concurrent_handlers(nc: Client, nats_url: str) -> None:
    meeting = [(t, i) for t in TENANTS for i in range(2)]
    barrier = asyncio.Barrier(len(meeting))

    async def whoami(ctx: Context, task: WhoIn) -> WhoOut:
        before = current_tenant()
        if task.meet:  # every meeting handler is suspended here together: their scopes overlap
            await asyncio.wait_for(barrier.wait(), 20)
        return WhoOut(
            before=before, after=current_tenant(), nested=_tenant_from_deep_inside(), ctx_tenant=ctx.tenant
        )

    spec = agent(kind="whoami", input=WhoIn, output=WhoOut, max_inflight=32, timeout_s=30)(whoami)
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1, worker_id="inproc"), Registry([spec]))
    await worker.start()
    pub = Publisher(nc)
    try:
        calls = [
            pub.call(t, "whoami", WhoIn(meet=True), timeout_s=25, output_type=WhoOut) for t, _ in meeting
        ]
        # Handlers that never suspend run eagerly, without a Task of their own.
        calls += [pub.call(t, "whoami", WhoIn(), timeout_s=25, output_type=WhoOut) for t in TENANTS]
        results: list[Result[Any]] = await asyncio.gather(*calls)
    finally:
        await pub.close()
        await worker.stop()

    expected = [t for t, _ in meeting] + list(TENANTS)
    for tenant, res in zip(expected, results, strict=True):
        assert res.ok, res.error
        assert res.tenant == tenant
        assert res.output == WhoOut(before=tenant, after=tenant, nested=tenant, ctx_tenant=tenant)
    assert worker.stats.kind("whoami").tasks[("acme", "ok")] == 3
    with pytest.raises(LookupError):  # the scope never leaks into the caller's context
        current_tenant()
