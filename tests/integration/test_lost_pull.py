"""A tenant whose pull requests were lost is asked for again while other tenants keep the
worker busy.

A consumer whose leader is lost (its node killed, paused or cut off) may never answer or
expire the requests it held. ``make chaos`` saw three of ten tenants get nothing done for
80 s after a partition healed, while the other seven kept the worker's connection lively. A
proxy between the worker and nats-server here drops every pull request of one tenant's
consumer for a while, which leaves that lane's credit out with no answer ever coming.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import msgspec
import pytest
from ack_proxy import PubFilterProxy
from helpers_a import poll
from nats.aio.client import Client

from agents import Context, Registry, agent
from agents.config import WorkerConfig
from agents.worker import Worker
from bus.embedded import EmbeddedNats
from bus.fair import FairConsumer
from bus.publisher import Publisher, TaskSpec
from bus.topology import TASKS_STREAM, tenant_consumer_name

pytestmark = pytest.mark.integration


class Job(msgspec.Struct):
    sleep_s: float = 0.0


class PullDropProxy(PubFilterProxy):
    """Leaves out the client's publishes to ``subject`` while ``dropping``."""

    def __init__(self, upstream_port: int, subject: bytes) -> None:
        super().__init__(upstream_port)
        self.subject = subject
        self.dropping = True
        self.dropped = 0

    def _pub(self, headers: bool, args: list[bytes], line: bytes, body: bytes) -> bytes:
        if self.dropping and args[1] == self.subject:
            self.dropped += 1
            return b""
        return line + body


@pytest.fixture
async def proxy(nats_server: EmbeddedNats, nc: Client) -> AsyncIterator[PullDropProxy]:
    consumer = tenant_consumer_name("job", "lost")
    p = await PullDropProxy(
        nats_server.port, f"$JS.API.CONSUMER.MSG.NEXT.{TASKS_STREAM}.{consumer}".encode()
    ).start()
    yield p
    await p.close()


async def test_a_lane_whose_requests_went_unanswered_asks_again_while_others_are_busy(
    proxy: PullDropProxy, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agents.worker.FairConsumer", functools.partial(FairConsumer, heartbeat_s=0.5))
    done: list[str] = []

    @agent(kind="job", input=Job, output=Job, timeout_s=30, max_inflight=4)
    async def job(ctx: Context, task: Job) -> Job:
        await asyncio.sleep(task.sleep_s)
        done.append(ctx.tenant)
        return task

    config = WorkerConfig(nats_url=proxy.url, worker_id="lost-pull", http_port=-1, gossip=False)
    worker = Worker(config, Registry([job]))
    pub = Publisher(nc)
    stop = asyncio.Event()

    async def busy() -> None:  # another tenant's deliveries never stop while we wait
        while not stop.is_set():
            await pub.submit_many(TaskSpec("busy", "job", Job(sleep_s=0.01)) for _ in range(8))
            await asyncio.sleep(0.05)

    await worker.start()
    feeding = asyncio.create_task(busy())
    try:
        await poll(lambda: done.count("busy") >= 20, timeout_s=30, what="the busy tenant being served")
        await pub.submit_many(TaskSpec("lost", "job", Job()) for _ in range(3))
        await poll(lambda: proxy.dropped >= 1, timeout_s=30, what="the lost tenant's request dropped")
        await asyncio.sleep(1.0)  # more heartbeat periods pass with the lane's credit out
        proxy.dropping = False  # from here its next request would be answered: if one is sent
        await poll(lambda: done.count("lost") == 3, timeout_s=30, what="the lost tenant's three tasks")
        assert done.count("busy") > 20  # served all along
    finally:
        stop.set()
        await feeding
        await worker.stop()
        await pub.close()
