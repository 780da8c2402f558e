"""PullConsumer.ack_next_now: ack_next done synchronously, or nothing done at all."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus._client import FastClient
from bus.consumer import PullConsumer

REPLY = "$JS.ACK.TASKS.k.1.6.6.1733500000000000000.100"


def _consumer(nc: Client, *, fetching: bool) -> PullConsumer:
    consumer = PullConsumer(nc, stream="TASKS", consumer="k", slots=4, on_message=lambda msg: None)
    consumer.held, consumer.credit = 4, 0
    consumer.fetching = fetching
    consumer._sub = Subscription(nc, id=1, subject="_INBOX.x")
    consumer._inbox = "_INBOX.x"
    return consumer


def _connected(flusher: asyncio.Task[None]) -> FastClient:
    nc = FastClient()
    nc._status = Client.CONNECTED
    nc._flusher_task = flusher
    nc._flush_queue = asyncio.Queue()
    nc._max_payload = 1 << 20
    return nc


def test_without_the_fast_path_nothing_is_done() -> None:
    async def run() -> None:
        nc = Client()  # not connected: publish_now cannot queue
        consumer = _consumer(nc, fetching=True)
        assert not consumer.ack_next_now(Msg(nc, "tasks.t.k", REPLY, b"", None))
        assert (consumer.held, consumer.credit) == (4, 0)

    asyncio.run(run())


def test_it_acks_and_pulls_as_ack_next_does() -> None:
    async def run() -> None:
        flusher = asyncio.get_running_loop().create_task(asyncio.sleep(10))
        nc = _connected(flusher)
        consumer = _consumer(nc, fetching=True)
        assert consumer.ack_next_now(Msg(nc, "tasks.t.k", REPLY, b"", None))
        assert (consumer.held, consumer.credit) == (3, 1)
        assert nc._pending == [
            b"PUB %s _INBOX.x %d\r\n+NXT %s\r\n"
            % (REPLY.encode(), 5 + len(consumer._request(1)), consumer._request(1))
        ]
        nc._pending.clear()
        consumer.fetching = False
        assert consumer.ack_next_now(Msg(nc, "tasks.t.k", REPLY, b"", None))
        assert (consumer.held, consumer.credit) == (2, 1)
        assert nc._pending == [b"PUB %s  4\r\n+ACK\r\n" % REPLY.encode()]
        flusher.cancel()

    asyncio.run(run())
