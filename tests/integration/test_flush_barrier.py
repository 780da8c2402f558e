"""``flush()`` is a barrier: the PING it waits on reaches the server after every command queued before it.

nats-py 2.16 writes that PING straight to the socket while a ``SUB`` or ``PUB`` queued just
before waits for the flusher task: the server answered the PING first, ``flush()`` returned
before the server had the subscription, and a message another connection published then
could miss it (tests/integration/test_frame_guard.py failed so, about one run in six).
A proxy in front of a real nats-server records the order of what the client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from bus import _client
from bus.connection import connect
from bus.embedded import EmbeddedNats
from loadtest.chaos_net import TcpProxy

pytestmark = pytest.mark.integration


class RecordingProxy(TcpProxy):
    """Forwards everything; records each client-to-server op line (payloads skipped)."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.ops: list[bytes] = []

    async def _client_to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):  # the client went away
            while True:
                line = await reader.readuntil(b"\r\n")
                op = line.split(b" ", 1)[0].upper()
                self.ops.append(line.strip() if op in (b"SUB", b"PING", b"UNSUB") else op.strip())
                if op in (b"PUB", b"HPUB"):
                    line += await reader.readexactly(int(line[:-2].rsplit(b" ", 1)[1]) + 2)
                writer.write(line)
                await writer.drain()


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
async def proxied(
    request: pytest.FixtureRequest, nats_server: EmbeddedNats
) -> AsyncIterator[tuple[Client, RecordingProxy]]:
    proxy = await RecordingProxy(nats_server.port).start()
    nc = await connect(proxy.url, name="flush", fast_path=request.param)
    try:
        yield nc, proxy
    finally:
        await nc.close()
        await proxy.close()


async def test_a_subscription_reaches_the_server_before_the_flush_returns(
    proxied: tuple[Client, RecordingProxy],
) -> None:
    nc, proxy = proxied
    await nc.subscribe("g.>")
    await nc.flush()
    assert proxy.ops == [b"CONNECT", b"PING", b"SUB g.>  1", b"PING"]  # connect's PING, then flush's


async def test_publishes_and_an_unsubscribe_reach_the_server_before_the_flush_returns(
    proxied: tuple[Client, RecordingProxy],
) -> None:
    nc, proxy = proxied
    sub = await nc.subscribe("g.>")
    await nc.flush()
    await nc.publish("g.a", b"1")
    await _client.publish(nc, "g.b", b"2")  # with the fast path, queued by publish_now
    await sub.unsubscribe()
    await nc.flush()
    assert proxy.ops[2:] == [b"SUB g.>  1", b"PING", b"PUB", b"PUB", b"UNSUB 1", b"PING"]
