"""No frame another client can publish ends a subscriber's read loop, fast path on and off.

A raw TCP socket speaks the NATS protocol to a real nats-server (``PUB``/``HPUB``), the
way any client with publish permission could; each hostile frame is followed by an
ordinary message that must still arrive, on a connection that is still reading.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import async_wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import _client
from bus.connection import connect
from bus.embedded import EmbeddedNats

pytestmark = pytest.mark.integration


def hpub(subject: bytes, headers: bytes, payload: bytes = b"p", reply: bytes = b"") -> bytes:
    """An ``HPUB`` frame with exactly ``headers`` as its header block."""
    rep = b" " + reply if reply else b""
    size = len(headers) + len(payload)
    return b"HPUB %s%s %d %d\r\n%s%s\r\n" % (subject, rep, len(headers), size, headers, payload)


def pub(subject: bytes, payload: bytes = b"p", reply: bytes = b"") -> bytes:
    rep = b" " + reply if reply else b""
    return b"PUB %s%s %d\r\n%s\r\n" % (subject, rep, len(payload), payload)


class RawPeer:
    """A client speaking the NATS protocol over a plain socket, with no validation at all."""

    def __init__(self, server: EmbeddedNats) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self._until(b"\r\n")  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')

    def _until(self, end: bytes) -> bytes:
        got = b""
        while end not in got:  # the server may follow its PONG with an INFO
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"server closed the raw connection after {got!r}")
            got += chunk
        return got

    def send(self, frame: bytes) -> None:
        """Send ``frame``, then wait for the server's PONG: it has processed the frame."""
        self.sock.sendall(frame + b"PING\r\n")
        answer = self._until(b"PONG\r\n")
        assert b"-ERR" not in answer, answer

    def close(self) -> None:
        self.sock.close()


HOSTILE = {
    "subject-not-utf8": (pub(b"g.\xff\xfe.echo"), "subject"),
    "reply-not-utf8": (pub(b"g.a", reply=b"_INBOX.\xff"), "subject"),
    "headers-NATS/1.0-only": (hpub(b"g.a", b"NATS/1.0"), "headers"),
    "headers-short": (hpub(b"g.a", b"NATS/1"), "headers"),
    "headers-garbage": (hpub(b"g.a", b"xy"), "headers"),
    "status-not-utf8": (hpub(b"g.a", b"NATS/1.0 \xff\xfe\r\n\r\n"), "headers"),
    "status-description-not-utf8": (hpub(b"g.a", b"NATS/1.0 503 \xff\xfe\r\n\r\n"), "headers"),
    "status-and-fields-not-utf8": (hpub(b"g.a", b"NATS/1.0 100 Id\xffle\r\nK: v\r\n\r\n"), "headers"),
    # nats-py's control-line regex read "3 4" as reply and header size, and "0" as the size
    "headers-digits-crlf": (hpub(b"g.a", b"0\r\n"), "headers"),
}


@pytest.fixture(params=[True, False], ids=["fast", "plain"])
async def subscriber(request: pytest.FixtureRequest, nats_url: str) -> AsyncIterator[Client]:
    kwargs: dict[str, Any] = {} if request.param else {"fast_path": False}  # the default is the fast path
    nc = await connect(nats_url, name="guarded", **kwargs)
    try:
        yield nc
    finally:
        await nc.close()


def _reading(nc: Client) -> bool:
    task = nc._reading_task
    return nc.is_connected and task is not None and not task.done()


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_frame_does_not_end_the_read_loop(
    subscriber: Client, nats_server: EmbeddedNats, case: str
) -> None:
    nc = subscriber
    got: list[Msg] = []

    async def on(msg: Msg) -> None:
        got.append(msg)

    await nc.subscribe("g.>", cb=on)
    await nc.flush()
    peer = RawPeer(nats_server)
    try:
        frame, reason = HOSTILE[case]
        peer.send(frame)
        peer.send(pub(b"g.ok", b"after"))
        await async_wait_until(lambda: any(m.data == b"after" for m in got), 15, "the next message")
    finally:
        peer.close()
    assert _reading(nc)
    counts = getattr(nc, "bad_frames", {})
    assert counts.get(reason) == 1, counts
    if reason == "subject":  # delivered, with replacement characters
        assert got[0].subject in ("g.\ufffd\ufffd.echo", "g.a")
        assert "\ufffd" in got[0].subject + got[0].reply
    else:  # dropped
        assert [m.data for m in got] == [b"after"]


async def test_every_hostile_frame_in_one_stream_then_ordinary_traffic(
    subscriber: Client, nats_server: EmbeddedNats
) -> None:
    nc = subscriber
    got: list[bytes] = []

    async def on(msg: Msg) -> None:
        got.append(msg.data)

    await nc.subscribe("g.>", cb=on)
    await nc.flush()
    peer = RawPeer(nats_server)
    try:
        stream = b"".join(frame + pub(b"g.ok", b"%d" % i) for i, (frame, _) in enumerate(HOSTILE.values()))
        peer.send(stream)
    finally:
        peer.close()
    want = [b"%d" % i for i in range(len(HOSTILE))]
    await async_wait_until(lambda: [d for d in got if d != b"p"] == want, 15, "every ordinary message")
    assert _reading(nc)
    assert sum(getattr(nc, "bad_frames", {}).values()) == len(HOSTILE)


async def test_a_routed_subscription_survives_hostile_frames_too(
    nats_url: str, nats_server: EmbeddedNats
) -> None:
    nc = await connect(nats_url, name="routed")
    try:
        routed: list[Msg] = []

        async def never(msg: Msg) -> None:
            raise AssertionError("routed messages skip the callback")

        sub = await nc.subscribe("inbox.>", cb=never)
        assert _client.route(nc, sub, routed.append)
        await nc.flush()
        peer = RawPeer(nats_server)
        try:
            # deliveries (a reply) take the fast lane; statuses (none) nats-py's header parsing
            peer.send(pub(b"inbox.\xff", reply=b"ack.x"))
            peer.send(pub(b"inbox.a", reply=b"ack.\xfe"))
            peer.send(hpub(b"inbox.a", b"NATS/1.0", reply=b"ack.y"))  # nats-py cannot read it: dropped
            peer.send(hpub(b"inbox.a", b"NATS/1.0"))  # a status nats-py cannot read: dropped
            peer.send(hpub(b"inbox.a", b"NATS/1.0 \xff\r\n\r\n"))
            peer.send(hpub(b"inbox.a", b"NATS/1.0 503\r\n\r\n", reply=b"ack.w"))  # delivered, as by nats-py
            peer.send(pub(b"inbox.ok", b"after", reply=b"ack.z"))
        finally:
            peer.close()
        await async_wait_until(lambda: any(m.data == b"after" for m in routed), 15, "the next delivery")
        assert _reading(nc)
        assert [(m.subject, m.reply, m.headers) for m in routed] == [
            ("inbox.\ufffd", "ack.x", None),
            ("inbox.a", "ack.\ufffd", None),
            ("inbox.a", "ack.w", {"Status": "503"}),
            ("inbox.ok", "ack.z", None),
        ]
        assert nc.bad_frames == {"subject": 2, "headers": 3, "handler": 0, "other": 0}  # type: ignore[attr-defined]
    finally:
        await nc.close()


async def test_the_read_loop_survives_a_burst_of_them(nats_url: str, nats_server: EmbeddedNats) -> None:
    nc = await connect(nats_url, name="burst")
    try:
        got: list[bytes] = []

        async def on(msg: Msg) -> None:
            got.append(msg.data)

        await nc.subscribe("g.>", cb=on)
        await nc.flush()
        peer = RawPeer(nats_server)
        try:
            frames = [f for f, _ in HOSTILE.values()] * 50
            peer.send(b"".join(frames) + pub(b"g.ok", b"after"))
        finally:
            peer.close()
        await async_wait_until(lambda: b"after" in got, 15, "the message after the hostile frames")
        await asyncio.sleep(0)
        assert _reading(nc)
        assert sum(nc.bad_frames.values()) == len(frames)  # type: ignore[attr-defined]
    finally:
        await nc.close()
