"""``bus.fastpub`` against a real nats-server: the same messages as ``Client.publish``, in order."""

from __future__ import annotations

import asyncio

import nats
from conftest import async_wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import fastpub
from bus.embedded import EmbeddedNats


async def _collect(nc: Client, subject: str) -> list[Msg]:
    got: list[Msg] = []

    async def on(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe(subject, cb=on)
    await nc.flush()
    return got


def test_the_pinned_nats_py_is_the_one_checked() -> None:
    assert fastpub.SUPPORTED  # else the fast path silently never applies: re-check it, then bump


async def test_the_fast_path_sends_what_publish_sends_in_call_order(nc: Client) -> None:
    got = await _collect(nc, "fp.>")
    expected = []
    for i in range(200):  # interleaved with Client.publish: one buffer, one order
        subject, data, reply = f"fp.{i % 7}", b"payload %d" % i, ("fp.reply.x" if i % 3 == 0 else "")
        if i % 2:
            assert fastpub.publish_now(nc, subject, data, reply)
        else:
            await nc.publish(subject, data, reply=reply)
        expected.append((subject, data, reply))
    await nc.flush()
    await async_wait_until(lambda: len(got) == 200, what="all 200 messages")
    assert [(m.subject, m.data, m.reply) for m in got] == expected
    assert nc.stats["out_msgs"] >= 200


async def test_an_empty_payload_and_the_publish_wrapper(nc: Client) -> None:
    got = await _collect(nc, "fp.empty")
    assert fastpub.publish_now(nc, "fp.empty", b"")
    await fastpub.publish(nc, "fp.empty", b"via wrapper", reply="r.1")
    await nc.flush()
    await async_wait_until(lambda: len(got) == 2, what="both messages")
    assert [(m.data, m.reply) for m in got] == [(b"", ""), (b"via wrapper", "r.1")]


async def test_what_the_fast_path_leaves_to_client_publish(nc: Client) -> None:
    big = b"x" * (nc.max_payload + 1)
    # nothing is queued for any of these: the caller falls back to Client.publish, whose
    # validation and errors apply
    for subject, data, reply in [
        ("fp.bad subject", b"1", ""),
        ("fp.bad\r\nPUB evil 1", b"1", ""),
        ("", b"1", ""),
        ("fp.ok", b"1", "bad reply"),
        ("fp.ok", big, ""),
    ]:
        before = nc._pending_data_size
        assert not fastpub.publish_now(nc, subject, data, reply)
        assert nc._pending_data_size == before


async def test_a_disconnected_client_falls_back_and_publish_buffers(nats_server: EmbeddedNats) -> None:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        nats_server.stop()
        await async_wait_until(lambda: not nc.is_connected, what="disconnect")
        assert not fastpub.publish_now(nc, "fp.later", b"queued while down")
        await fastpub.publish(nc, "fp.later", b"queued while down")  # Client.publish buffers it
        nats_server.start()
        await async_wait_until(lambda: nc.is_connected, what="reconnect")
        sub = await nc.subscribe("fp.after")
        assert fastpub.publish_now(nc, "fp.after", b"fast again")
        msg = await asyncio.wait_for(sub.next_msg(), 10)
        assert msg.data == b"fast again"
    finally:
        await nc.close()
