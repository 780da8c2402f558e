"""A task whose acks are all lost is not dead-lettered after it completed.

Each delivery runs the task and stores its result, and the proxy between the worker and
nats-server drops the ack, so the consumer delivers it again, past ``max_deliver``. The
worker's judge of that last delivery (``max_deliveries``) first reads stream RESULTS: the
task has a result, so the delivery is acked and no dead letter claims it failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ack_proxy import AckDropProxy
from conftest import WorkerProcess
from helpers_a import dead_letters, metric, poll, queue_empty
from nats.aio.client import Client

from agents.builtin.basic import EchoIn
from bus.embedded import EmbeddedNats
from bus.publisher import Publisher
from bus.records import fetch_result

pytestmark = pytest.mark.integration


async def test_a_completed_task_whose_acks_were_lost_is_acked_not_dead_lettered(
    nats_server: EmbeddedNats, nc: Client, tmp_path: Path
) -> None:
    proxy = await AckDropProxy(nats_server.port, share=1.0, budget=2).start()
    args = ("--kind", "echo", "--max-deliver", "2", "--ack-wait-s", "1", "--no-gossip")
    worker = WorkerProcess(proxy.url, tmp_path, "w1", *args)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await Publisher(nc).submit("acme", "echo", EchoIn(text="once"), task_id="lost-acks")

        async def settled() -> bool:
            return proxy.dropped == 2 and await queue_empty(nc, "echo")

        await poll(settled, timeout_s=60, what="two lost acks, then the task acked")
        assert (await fetch_result(nc, "acme", "lost-acks")).ok
        assert await dead_letters(nc) == []
        assert await metric(worker, "agentbus_lost_acks_total", kind="echo") == 1
    finally:
        await asyncio.to_thread(worker.stop)
        await proxy.close()
