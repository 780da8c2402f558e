"""``bus._client.route`` on a real nats-server: routed messages equal what the callback gets, in order."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from conftest import async_wait_until
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus import _client
from bus.connection import connect

pytestmark = pytest.mark.integration

HEADERS = [
    None,
    {"Nats-Msg-Id": "t-1"},
    {"Nats-Msg-Id": "t-2", "Agentbus-Reply": "_INBOX.x.t-2", "k": "a: b"},
]


def _seen(msgs: list[Msg]) -> list[tuple[str, str, bytes, dict[str, str] | None]]:
    return [(m.subject, m.reply, m.data, m.headers) for m in msgs]


async def _both(nc: Client, subject: str) -> tuple[list[Msg], list[Msg]]:
    """Two subscriptions to ``subject`` on ``nc``: one routed, one through nats-py's callback."""
    routed: list[Msg] = []
    usual: list[Msg] = []

    async def never(msg: Msg) -> None:
        raise AssertionError(f"a routed message reached the callback: {msg}")

    async def on_usual(msg: Msg) -> None:
        usual.append(msg)

    sub = await nc.subscribe(subject, cb=never)
    assert _client.route(nc, sub, routed.append)
    await nc.subscribe(subject, cb=on_usual)
    await nc.flush()
    return routed, usual


async def test_routed_messages_equal_the_callbacks_in_order(nc: Client, nats_url: str) -> None:
    routed, usual = await _both(nc, "fs.a")
    other = await connect(nats_url, name="fs-publisher")
    try:
        for i in range(300):  # with and without reply (a delivery, or the status path), headers or none
            reply = f"r.{i}" if i % 2 else ""
            await other.publish("fs.a", b"m%d" % i, reply=reply, headers=HEADERS[i % 3])
        await other.flush()
    finally:
        await other.close()
    await async_wait_until(lambda: len(routed) == 300 and len(usual) == 300, what="300 messages each")
    assert _seen(routed) == _seen(usual)
    assert [m.data for m in routed] == [b"m%d" % i for i in range(300)]
    assert nc.stats["in_msgs"] >= 600  # routed messages are counted like any other
    assert all(m._client is nc for m in routed)  # respond/ack work on them


async def test_a_failing_handler_is_logged_and_the_next_message_still_arrives(
    nc: Client, caplog: pytest.LogCaptureFixture
) -> None:
    got: list[bytes] = []

    def handler(msg: Msg) -> None:
        if msg.data == b"boom":
            raise RuntimeError("handler bug")
        got.append(msg.data)

    async def never(msg: Msg) -> None:
        raise AssertionError("routed")

    sub = await nc.subscribe("fs.b", cb=never)
    assert _client.route(nc, sub, handler)
    with caplog.at_level(logging.WARNING, logger="agentbus.bus"):
        for data in (b"one", b"boom", b"two"):
            await nc.publish("fs.b", data, reply="r")
        await nc.flush()
        await async_wait_until(lambda: got == [b"one", b"two"], what="both good messages")
    assert "bad nats frame #1 (handler) on b'fs.b': RuntimeError: handler bug" in caplog.text
    assert "Traceback" in caplog.text
    assert nc.is_connected
    assert nc.bad_frames["handler"] == 1  # type: ignore[attr-defined]


async def test_unrouted_subscriptions_get_their_callbacks_again(nc: Client) -> None:
    first, _ = await _both(nc, "fs.c")
    second: list[Msg] = []
    sub = await nc.subscribe("fs.d", cb=_append_to(second))
    assert _client.route(nc, sub, second.append)
    _client.unroute(nc, sub)
    await nc.publish("fs.d", b"after unroute", reply="r")
    await nc.publish("fs.c", b"still routed", reply="r")
    await nc.flush()
    await async_wait_until(lambda: len(second) == 1 and len(first) == 1, what="one message each")
    assert second[0].data == b"after unroute"  # through the callback again
    assert first[0].data == b"still routed"


def _append_to(box: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def on(msg: Msg) -> None:
        box.append(msg)

    return on


async def test_a_subscription_that_unsubscribes_itself_is_left_to_nats_py(nc: Client) -> None:
    got: list[Msg] = []
    sub = await nc.subscribe("fs.e", cb=_append_to(got), max_msgs=2)
    assert not _client.route(nc, sub, lambda msg: None)  # nats-py counts it down itself
    for data in (b"1", b"2", b"3"):
        await nc.publish("fs.e", data, reply="r")
    await nc.flush()
    await async_wait_until(lambda: len(got) == 2, what="two messages")
    assert [m.data for m in got] == [b"1", b"2"]


async def test_without_the_fast_path_nothing_is_routed_and_callbacks_get_everything(nats_url: str) -> None:
    nc = await connect(nats_url, name="plain", fast_path=False)
    try:
        got: list[Msg] = []
        sub = await nc.subscribe("fs.h", cb=_append_to(got))
        assert not _client.route(nc, sub, lambda msg: None)
        _client.unroute(nc, sub)  # harmless
        for data in (b"1", b"2"):
            await nc.publish("fs.h", data, reply="r", headers={"k": "v"})
        await nc.flush()
        await async_wait_until(lambda: len(got) == 2, what="two messages")
        assert [(m.data, m.headers) for m in got] == [(b"1", {"k": "v"}), (b"2", {"k": "v"})]
    finally:
        await nc.close()


def _frame(subject: str, sid: int, reply: str, payload: bytes, headers: bytes = b"") -> bytes:
    """A frame as nats-server writes it: ``MSG``, or ``HMSG`` when there are headers."""
    rep = f" {reply}" if reply else ""
    if headers:
        head = f"HMSG {subject} {sid}{rep} {len(headers)} {len(headers) + len(payload)}\r\n"
        return head.encode() + headers + payload + b"\r\n"
    return f"MSG {subject} {sid}{rep} {len(payload)}\r\n".encode() + payload + b"\r\n"


@pytest.mark.parametrize("cut", [1, 7, 64, 1000, 1 << 20])
async def test_frames_cut_anywhere_reach_their_subscriptions_whole_and_in_order(nc: Client, cut: int) -> None:
    # the read loop's parser, fed the bytes a server could send, in pieces of ``cut`` bytes:
    # frames whole at the start of a piece take the fast lane, the rest nats-py's parser
    routed: list[Msg] = []
    usual: list[Msg] = []

    async def never(msg: Msg) -> None:
        raise AssertionError("routed")

    sub = await nc.subscribe("fs.f", cb=never)
    assert _client.route(nc, sub, routed.append)
    other = await nc.subscribe("fs.g", cb=_append_to(usual))
    wire, want_routed, want_usual = b"", [], []
    for i in range(40):
        headers = b"NATS/1.0\r\nNats-Msg-Id: m%d\r\n\r\n" % i if i % 3 else b""
        payload = bytes([i]) * (i * 37 % 3000)
        if i % 4 == 0:  # an op the fast lane leaves to nats-py in the middle of the stream
            wire += b"+OK\r\n"
        if i % 2:
            wire += _frame("fs.f", sub._id, f"r.{i}", payload, headers)
            want_routed.append((f"r.{i}", payload, {"Nats-Msg-Id": f"m{i}"} if headers else None))
        else:
            wire += _frame("fs.g", other._id, "", payload, headers)
            want_usual.append(payload)
    for at in range(0, len(wire), cut):
        await nc._ps.parse(wire[at : at + cut])
    await async_wait_until(lambda: len(usual) == len(want_usual), what="the callback's messages")
    assert [(m.reply, m.data, m.headers) for m in routed] == want_routed
    assert [m.data for m in usual] == want_usual
    assert not nc._ps.buf  # nothing left half-parsed
