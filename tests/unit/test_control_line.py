"""A header block cannot move where the parser cuts the stream (nats-py's control-line regex).

nats-py 2.16's ``HMSG_RE`` separates fields with ``\\s+``, which matches CRLF: after
``HMSG <subject> <sid> <hsize> <size>\\r\\n`` (no reply), a header block starting with digits
and CRLF is read as the sizes, and the stream is cut where the publisher chose. The frames
here are fed to the parsers of clients that are never connected, whole and split at every
offset, with an ordinary message before and after them.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus._client import FastClient, GuardedClient

BEFORE = b"MSG g.pre 1 3\r\npre\r\n"
AFTER = b"MSG g.ok 1 5\r\nafter\r\n"

# the fuzz's find: the block "0\r\n" read as a total size of 0, then "unknown protocol"
PROTOCOL_ERROR = b"HMSG 0 1 3 5\r\n0\r\n0|\r\n"

# a message written inside the block, delivered to another subscription (sid 2) of the
# connection; "+OK" and the frame's own CRLF put the stream back in step
_SMUGGLED = b"0\r\nxxMSG secret.x 2 $JS.ACK.forged 5\r\nforge\r\n+OK"
SMUGGLING = b"HMSG g.a 1 %d %d\r\n%s\r\n" % (len(_SMUGGLED), len(_SMUGGLED), _SMUGGLED)

# whitespace before the digits, several lines: \s+ matches them all
OTHERS = [b"HMSG g.b 1 4 6\r\n 7\r\n0|\r\n", b"HMSG g.c 1 6 8\r\n\r\n12\r\n0|\r\n"]


class _Parsed:
    """What a client's parser delivered: (sid, subject, data) in order, per subscription."""

    def __init__(self, cls: type[Client], *, routed: bool) -> None:
        self.nc = cls()
        self.subs = {
            sid: Subscription(self.nc, sid, "s", pending_msgs_limit=0, pending_bytes_limit=0)
            for sid in (1, 2)
        }
        self.nc._subs.update(self.subs)
        self.routed: list[Msg] = []
        if routed:
            assert isinstance(self.nc, FastClient)
            self.nc._routes[2] = self.routed.append

    def feed(self, chunks: list[bytes]) -> None:
        async def run() -> None:
            for chunk in chunks:
                await self.nc._ps.parse(chunk)

        asyncio.run(run())

    def seen(self, sid: int) -> list[tuple[str, bytes]]:
        queue = self.subs[sid]._pending_queue
        out = [(m.subject, m.data) for m in self.routed] if sid == 2 else []
        while not queue.empty():
            m = queue.get_nowait()
            out.append((m.subject, m.data))
        return out


def _cuts(wire: bytes) -> list[list[bytes]]:
    """The stream in one read, then in two reads split at every offset."""
    return [[wire]] + [[wire[:k], wire[k:]] for k in range(1, len(wire))]


CLIENTS = [(GuardedClient, False), (FastClient, False), (FastClient, True)]
IDS = ["guarded", "fast", "fast-routed"]


@pytest.mark.parametrize(("cls", "routed"), CLIENTS, ids=IDS)
@pytest.mark.parametrize(
    "frame", [PROTOCOL_ERROR, SMUGGLING, *OTHERS], ids=["0", "smuggle", "space", "lines"]
)
def test_a_header_block_never_moves_the_cut(cls: type[GuardedClient], routed: bool, frame: bytes) -> None:
    subject = frame.split(b" ")[1].decode()
    for chunks in _cuts(BEFORE + frame + AFTER):
        parsed = _Parsed(cls, routed=routed)
        parsed.feed(chunks)  # a protocol error raised here would end the read loop
        assert not parsed.nc._ps.buf, chunks
        first = parsed.seen(1)
        assert [s for s, _ in first if s != subject] == ["g.pre", "g.ok"], chunks
        assert parsed.seen(2) == [], chunks  # nothing smuggled into another subscription
        dropped = parsed.nc.bad_frames["headers"]  # type: ignore[attr-defined]
        assert len(first) + dropped == 3, chunks  # the frame itself: delivered or dropped, once


def test_nats_py_itself_cuts_where_the_block_says() -> None:
    """The upstream behaviour the guard works around (nats-py is pinned): a plain ``Client``
    delivers the smuggled message, and raises on the fuzz's frame (its sizes taken from the
    block, the 5-byte "header" it cuts cannot be parsed: ``IndexError``)."""
    parsed = _Parsed(Client, routed=False)
    parsed.feed([BEFORE + SMUGGLING + AFTER])
    assert parsed.seen(2) == [("secret.x", b"forge")]
    plain = _Parsed(Client, routed=False)
    with pytest.raises(IndexError):
        plain.feed([PROTOCOL_ERROR])
