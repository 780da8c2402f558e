"""``bus._client.publish`` against a real nats-server, fast path on and off: the same messages
as ``Client.publish``, in order; nothing the server would close the connection for is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from conftest import async_wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg

from agentbus.errors import UnsafeSubjectError
from bus import _client
from bus.connection import connect
from bus.embedded import EmbeddedNats

pytestmark = pytest.mark.integration


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
async def client(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Client]:
    nc = await connect(nats_url, name="test", fast_path=request.param)
    try:
        yield nc
    finally:
        await nc.close()


def _fast(nc: Client) -> bool:
    return isinstance(nc, _client.FastClient)


async def _collect(nc: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def on(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=on)
    await nc.flush()
    return got


def test_the_pinned_nats_py_is_the_one_checked() -> None:
    assert _client.SUPPORTED  # else neither guard nor fast path applies: re-check them, then bump
    assert _client.client_class(fast_path=True) is _client.FastClient
    assert _client.client_class(fast_path=False) is _client.GuardedClient


async def test_the_fast_path_sends_what_publish_sends_in_call_order(client: Client) -> None:
    nc = client
    got = await _collect(nc, "fp.>")
    expected = []
    for i in range(200):  # interleaved with Client.publish: one buffer, one order
        subject, data, reply = f"fp.{i % 7}", b"payload %d" % i, ("fp.reply.x" if i % 3 == 0 else "")
        if i % 2:
            assert _client.publish_now(nc, subject, data, reply) is _fast(nc)
            if not _fast(nc):
                await _client.publish(nc, subject, data, reply)
        else:
            await nc.publish(subject, data, reply=reply)
        expected.append((subject, data, reply))
    await nc.flush()
    await async_wait_until(lambda: len(got) == 200, what="all 200 messages")
    assert [(m.subject, m.data, m.reply) for m in got] == expected
    assert nc.stats["out_msgs"] >= 200


async def test_an_empty_payload_and_the_publish_wrapper(client: Client) -> None:
    nc = client
    got = await _collect(nc, "fp.empty")
    await _client.publish(nc, "fp.empty", b"")
    await _client.publish(nc, "fp.empty", b"via wrapper", reply="r.1")
    await nc.flush()
    await async_wait_until(lambda: len(got) == 2, what="both messages")
    assert [(m.data, m.reply) for m in got] == [(b"", ""), (b"via wrapper", "r.1")]


async def test_what_the_fast_path_leaves_to_client_publish(client: Client) -> None:
    nc = client
    big = b"x" * (nc.max_payload + 1)
    # nothing is queued for any of these: the caller falls back to Client.publish, whose
    # validation and errors apply
    for subject, data, reply in [
        ("fp.bad subject", b"1", ""),
        ("fp.bad\r\nPUB evil 1", b"1", ""),
        ("", b"1", ""),
        ("fp.ok", b"1", "bad reply"),
        ("fp.ok", big, ""),
        ("fp." + "x" * 5000, b"1", ""),
    ]:
        before = nc._pending_data_size
        assert not _client.publish_now(nc, subject, data, reply)
        assert nc._pending_data_size == before


@pytest.mark.parametrize(
    ("subject", "reply"),
    [
        ("fp." + "a" * 5000, ""),  # a 5,000-character task id in a result subject
        ("fp.ok", "_INBOX." + "a" * 5000),
        ("fp." + "a" * 2100, "_INBOX." + "a" * 2100),  # each fine, together over the control line
        ("fp.ok", "_INBOX.has space"),
        ("fp.tab\there", ""),
        ("fp.nul\x00", ""),
        ("fp.ok", "_INBOX.del\x7f"),
        ("", ""),
    ],
    ids=["long-subject", "long-reply", "long-pair", "space", "tab", "nul", "del", "empty"],
)
async def test_a_subject_the_server_would_close_the_connection_for_is_refused_and_never_sent(
    client: Client, subject: str, reply: str
) -> None:
    nc = client
    got = await _collect(nc, "fp.after")
    before = nc.stats["out_msgs"]
    with pytest.raises(UnsafeSubjectError) as refused:
        await _client.publish(nc, subject, b"x", reply)
    assert refused.value.field in ("subject", "reply")
    assert len(str(refused.value)) < 300  # the message names it without the 5,000 characters
    assert nc.stats["out_msgs"] == before
    await _client.publish(nc, "fp.after", b"still connected")
    await nc.flush()
    await async_wait_until(lambda: len(got) == 1, what="the next message")
    assert nc.is_connected


async def test_the_longest_subject_allowed_is_accepted_by_the_server(client: Client) -> None:
    nc = client
    subject = "fp.long." + "a" * (_client.MAX_NAMES_BYTES - len("fp.long.") - len("_INBOX.x"))
    got = await _collect(nc, subject)
    await _client.publish(nc, subject, b"ok", "_INBOX.x")
    await nc.flush()
    await async_wait_until(lambda: len(got) == 1, what="the message on the longest subject")
    assert nc.is_connected
    assert got[0].reply == "_INBOX.x"


@pytest.mark.parametrize("fast_path", [True, False], ids=["fast", "plain"])
async def test_a_disconnected_client_falls_back_and_publish_buffers(
    nats_server: EmbeddedNats, fast_path: bool
) -> None:
    nc = await connect(nats_server.url, reconnect_wait_s=0.1, fast_path=fast_path)
    try:
        nats_server.stop()
        await async_wait_until(lambda: not nc.is_connected, what="disconnect")
        assert not _client.publish_now(nc, "fp.later", b"queued while down")
        await _client.publish(nc, "fp.later", b"queued while down")  # Client.publish buffers it
        nats_server.start()
        await async_wait_until(lambda: nc.is_connected, what="reconnect")
        sub = await nc.subscribe("fp.after")
        assert _client.publish_now(nc, "fp.after", b"fast again") is fast_path
        if not fast_path:
            await _client.publish(nc, "fp.after", b"fast again")
        msg = await asyncio.wait_for(sub.next_msg(), 10)
        assert msg.data == b"fast again"
    finally:
        await nc.close()
