"""Every fate of a task whose handler suspended first, decided after its Task ends.

No coroutine of the runner waits through a handler: a handler that suspends runs in a
Task of its own and the fate (result, ack, retry, dead letter) starts from that Task's
done callback. Against a real nats-server, in-process worker: each handler awaits
before it returns or raises, and one is a plain function that raises before returning
an awaitable at all. Every task ends with the fate it asked for and the queue ends empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from functools import partial

import msgspec
import pytest
from helpers_a import dead_letters, poll, queue_empty
from nats.aio.client import Client

from agentbus.errors import Reject
from agents.api import AgentSpec, Context, agent
from agents.config import WorkerConfig
from agents.registry import Registry
from agents.worker import Worker
from bus.messages import DlqReason
from bus.publisher import Publisher

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.3


class In(msgspec.Struct):
    text: str


class Out(msgspec.Struct):
    text: str
    tenant: str


@agent(kind="later-ok", input=In, output=Out)
async def later_ok(ctx: Context, task: In) -> Out:
    await asyncio.sleep(0.01)
    return Out(text=task.text.upper(), tenant=ctx.tenant)


@agent(kind="later-reject", input=In, output=Out)
async def later_reject(ctx: Context, task: In) -> Out:
    await asyncio.sleep(0.01)
    raise Reject(f"refused {task.text}")


@agent(kind="later-fail", input=In, output=Out)
async def later_fail(ctx: Context, task: In) -> Out:
    await asyncio.sleep(0.01)
    raise ValueError(f"broken {task.text}")


@agent(kind="too-slow", input=In, output=Out, timeout_s=TIMEOUT_S)
async def too_slow(ctx: Context, task: In) -> Out:
    await asyncio.sleep(30)
    raise AssertionError("cancelled before this")


def _plain(ctx: Context, task: In) -> Awaitable[Out]:
    raise Reject(f"plain {task.text}")


plain_reject: AgentSpec[In, Out] = agent(kind="plain-reject", input=In, output=Out)(_plain)

AGENTS = [later_ok, later_reject, later_fail, too_slow, plain_reject]


@pytest.fixture
async def worker(nats_url: str) -> AsyncIterator[Worker]:
    config = WorkerConfig(
        nats_url=nats_url,
        worker_id="fates",
        http_port=-1,
        max_deliver=2,
        retry_base_s=0.05,
        retry_max_s=0.1,
    )
    w = Worker(config, Registry(AGENTS))
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def test_each_fate_is_decided_after_a_suspended_handler(nc: Client, worker: Worker) -> None:
    publisher = Publisher(nc)
    ok, rejected, failed, slow, plain = await asyncio.gather(
        publisher.call("acme", "later-ok", In("hi"), output_type=Out),
        publisher.call("acme", "later-reject", In("r")),
        publisher.call("acme", "later-fail", In("f")),
        publisher.call("acme", "too-slow", In("s")),
        publisher.call("acme", "plain-reject", In("p")),
    )

    assert ok.ok
    assert ok.output == Out(text="HI", tenant="acme")
    assert ok.attempts == 1

    assert not rejected.ok
    assert rejected.error == "rejected: refused r"
    assert rejected.attempts == 1

    assert not failed.ok
    assert failed.error is not None
    assert failed.error.startswith("max_deliveries: failed on all 2 deliveries")
    assert "ValueError: broken f" in failed.error

    assert not slow.ok
    assert slow.error is not None
    assert f"timed out after {TIMEOUT_S:g}s" in slow.error
    assert slow.attempts == 2

    assert not plain.ok
    assert plain.error == "rejected: plain p"

    letters = {letter.kind: letter for letter in await dead_letters(nc)}
    assert letters["later-reject"].reason == DlqReason.REJECTED
    assert letters["later-fail"].reason == DlqReason.MAX_DELIVERIES
    assert letters["too-slow"].reason == DlqReason.MAX_DELIVERIES
    assert letters["plain-reject"].reason == DlqReason.REJECTED
    assert "later-ok" not in letters

    for spec in AGENTS:
        await poll(partial(queue_empty, nc, spec.kind), timeout_s=10, what=f"{spec.kind} acked")
    assert all(not runner.slots for runner in worker.runners)  # every slot was freed
