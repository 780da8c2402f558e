"""Differential fuzz of the read loop's frame parsing against nats-py 2.16's own (Hypothesis).

Random ``MSG``/``HMSG`` frames (subjects and replies valid or not UTF-8, sids subscribed or
not, header blocks well formed, inline statuses, short, garbage, digits and CRLF; payloads
with CRLF in them) are concatenated and cut at random points, then fed to the parser of three clients
that are never connected:

- the fast path (:class:`bus._client.FastClient`, one subscription routed),
- the guard alone (:class:`bus._client.GuardedClient`, fast path off),
- plain nats-py, fed only the frames it can process, its ``_process_msg`` captured: the
  reference. Each frame's control line is fed on its own: in one read with the header block,
  nats-py's control-line regex can take its sizes from a block that starts with digits and
  CRLF (tests/unit/test_control_line.py).

Both of ours must deliver exactly the reference's (subject, reply, data, headers) for
every frame the reference takes, per subscription and in order, and no input may raise
out of their parsers. Frames nats-py cannot process are never fatal: one whose header block
it cannot parse is dropped (a JetStream delivery, reply ``$JS.ACK.``, is delivered with the
header ``Agentbus-Unreadable-Headers`` instead, so the worker dead-letters it), one whose
subject or reply is not UTF-8 is delivered with replacement characters (checked for every
frame, against that contract).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus._client import FastClient, GuardedClient
from bus.messages import HDR_UNREADABLE

ROUTED, QUEUED, OTHER, NOBODY = 1, 2, 3, 9  # sids: a routed subscription, two queued ones, none

Seen = tuple[int, str, str, bytes, dict[str, str] | None]
JS_ACK = b"$JS.ACK.TASKS.agents-echo.1.7.7.1700000000000000000.0"  # a JetStream delivery's reply

_SPACE = b" \t\r\n\x0b\x0c"  # what nats-server and nats-py's regular expressions split on
token_bytes = st.binary(min_size=1, max_size=12).map(lambda b: bytes(c for c in b if c not in _SPACE) or b"x")
utf8_tokens = st.text(
    st.characters(codec="utf-8", exclude_characters=" \t\r\n\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"),
    min_size=1,
    max_size=12,
).map(lambda s: "".join(c for c in s if not c.isspace()) or "x")
names = st.one_of(utf8_tokens.map(str.encode), token_bytes)  # mostly UTF-8, sometimes not

header_lines = st.lists(st.binary(max_size=24).map(lambda b: b.replace(b"\r\n", b"")), max_size=5)
field_names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1)


@st.composite
def header_blocks(draw: st.DrawFn, has_reply: bool) -> bytes | None:
    kinds = ["none", "fields", "lines", "status", "short", "garbage", "bad-status", "sizes"]
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "sizes":  # what nats-py's control-line regex could read as sizes: (space) digits CRLF
        space = draw(st.sampled_from([b"", b" ", b"\r\n", b"\t"]))
        return space + b"%d\r\n" % draw(st.integers(0, 40)) + draw(st.binary(max_size=30))
    if kind == "fields":
        fields = draw(st.dictionaries(field_names, st.text(max_size=20), max_size=4))
        return b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in fields.items()) + b"\r\n"
    if kind == "lines":  # any line bytes, as a publisher could send them
        return b"NATS/1.0\r\n" + b"".join(line + b"\r\n" for line in draw(header_lines)) + b"\r\n"
    if kind == "status" and not has_reply:  # nats-server's inline statuses come without a reply
        code = draw(st.sampled_from([b"100", b"404", b"408", b"409", b"503"]))
        desc = draw(st.sampled_from([b"", b" Idle Heartbeat", b" Request Timeout", b" No Messages"]))
        extra = draw(st.sampled_from([b"", b"Nats-Pending-Messages: 3\r\nNats-Pending-Bytes: 0\r\n"]))
        return b"NATS/1.0 " + code + desc + b"\r\n" + extra + b"\r\n"
    if kind == "short":
        return draw(st.sampled_from([b"NATS/1.0", b"NATS/1", b"N", b"NATS/1.0 ", b"NATS/1.0\r\n"]))
    if kind == "bad-status":
        return b"NATS/1.0 " + draw(st.binary(min_size=1, max_size=10)) + b"\xff\r\n\r\n"
    return draw(st.binary(min_size=1, max_size=40))


@dataclass
class Frame:
    sid: int
    subject: bytes
    reply: bytes
    headers: bytes | None
    payload: bytes

    def wire(self) -> bytes:
        rep = b" " + self.reply if self.reply else b""
        if self.headers is None:
            return b"MSG %s %d%s %d\r\n%s\r\n" % (
                self.subject,
                self.sid,
                rep,
                len(self.payload),
                self.payload,
            )
        size = len(self.headers) + len(self.payload)
        head = b"HMSG %s %d%s %d %d\r\n" % (self.subject, self.sid, rep, len(self.headers), size)
        return head + self.headers + self.payload + b"\r\n"


@st.composite
def frames(draw: st.DrawFn, index: int) -> Frame:
    reply = draw(st.one_of(st.just(b""), names, st.just(JS_ACK)))
    payload = b"%d|" % index + draw(st.binary(max_size=60))  # the index tells frames apart
    return Frame(
        sid=draw(st.sampled_from([ROUTED, ROUTED, QUEUED, OTHER, NOBODY])),
        subject=draw(names),
        reply=reply,
        headers=draw(header_blocks(bool(reply))),
        payload=payload,
    )


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Frame], list[int]]:
    n = draw(st.integers(min_value=1, max_value=12))
    fs = [draw(frames(i)) for i in range(n)]
    size = sum(len(f.wire()) for f in fs)
    cuts = sorted(set(draw(st.lists(st.integers(min_value=1, max_value=max(1, size - 1)), max_size=8))))
    return fs, cuts


def _chunks(wire: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *[c for c in cuts if 0 < c < len(wire)], len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


async def _reference(fs: list[Frame]) -> tuple[list[Seen], set[int]]:
    """What plain nats-py 2.16 delivers, frame by frame; the indexes of the frames it could take."""
    nc = Client()
    seen: list[Seen] = []
    taken: set[int] = set()

    async def capture(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        hdr = await nc._process_headers(headers)
        msg = nc._build_message(sid, subject, reply, data, hdr)
        seen.append((sid, msg.subject, msg.reply, msg.data, msg.headers))

    nc._process_msg = capture  # type: ignore[method-assign]
    for i, frame in enumerate(fs):
        before = len(seen)
        wire = frame.wire()
        eol = wire.index(b"\r\n") + 2
        try:
            await nc._ps.parse(wire[:eol])
            await nc._ps.parse(wire[eol:])
        except Exception:  # what ends nats-py's read loop
            nc._ps.reset()
            continue
        if len(seen) > before and frame.sid != NOBODY:
            taken.add(i)
    return [s for s in seen if s[0] != NOBODY], taken


async def _expected(fs: list[Frame]) -> list[Seen]:
    """The guard's contract: a frame whose header block nats-py cannot parse is dropped (a
    JetStream delivery is delivered marked :data:`~bus.messages.HDR_UNREADABLE`); one
    whose subject or reply is not UTF-8 is delivered with replacement characters; every other
    frame exactly as nats-py delivers it."""
    nc = Client()
    out: list[Seen] = []
    for f in fs:
        if f.sid == NOBODY:
            continue
        try:
            hdr = await nc._process_headers(f.headers)
        except Exception:
            if not f.reply.startswith(b"$JS.ACK."):
                continue
            hdr = {HDR_UNREADABLE: "1"}
        subject, reply = f.subject.decode("utf-8", "replace"), f.reply.decode("utf-8", "replace")
        out.append((f.sid, subject, reply, f.payload, hdr))
    return out


async def _ours(cls: type[GuardedClient], wire_chunks: list[bytes]) -> list[Seen]:
    nc = cls()
    routed: list[Msg] = []
    subs = {sid: Subscription(nc, sid, "s", pending_msgs_limit=0, pending_bytes_limit=0) for sid in (1, 2, 3)}
    nc._subs.update(subs)
    if isinstance(nc, FastClient):
        nc._routes[ROUTED] = routed.append
    for chunk in wire_chunks:
        await nc._ps.parse(chunk)  # must never raise
    assert not nc._ps.buf, "a whole stream leaves nothing half-parsed"
    out: list[Seen] = [(ROUTED, m.subject, m.reply, m.data, m.headers) for m in routed]
    for sid, sub in subs.items():
        while not sub._pending_queue.empty():
            m = sub._pending_queue.get_nowait()
            out.append((sid, m.subject, m.reply, m.data, m.headers))
    return out


def _index(seen: Seen) -> int:
    return int(seen[3].split(b"|", 1)[0])


def _by_sid(seen: list[Seen], keep: set[int]) -> dict[int, list[Seen]]:
    out: dict[int, list[Seen]] = {}
    for s in seen:
        if _index(s) in keep:
            out.setdefault(s[0], []).append(s)
    return out


@settings(
    max_examples=1500,
    deadline=None,  # a shared CI machine: the bound is the example count, not wall time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(streams())
# the control line "HMSG 0 1 3 5" and the block "0\r\n" in one read: nats-py's regex read 3
# as a reply and the block as the sizes, and the guard raised "protocol error"
@example(([Frame(sid=ROUTED, subject=b"0", reply=b"", headers=b"0\r\n", payload=b"0|")], []))
def test_the_fast_path_and_the_guard_deliver_what_nats_py_delivers(
    stream: tuple[list[Frame], list[int]],
) -> None:
    fs, cuts = stream
    wire = b"".join(f.wire() for f in fs)

    async def run() -> None:
        want, taken = await _reference(fs)
        expected = await _expected(fs)
        assert _by_sid(expected, taken) == _by_sid(want, taken)  # the contract agrees with nats-py
        for cls in (FastClient, GuardedClient):
            got = await _ours(cls, _chunks(wire, cuts))
            assert _by_sid(got, taken) == _by_sid(want, taken), cls.__name__
            everything = set(range(len(fs)))
            assert _by_sid(got, everything) == _by_sid(expected, everything), cls.__name__

    asyncio.run(run())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=80), min_size=1, max_size=6), st.integers(0, 2), st.integers(0, 200))
def test_odd_header_sizes_and_blocks_never_raise_out_of_the_parser(
    blocks: list[bytes], sid_pick: int, extra: int
) -> None:
    """Header sizes past the block (a server never sends them; nats-py reads into the next
    frame's bytes) and arbitrary blocks: nothing raises, the stream stays in step."""

    async def run() -> None:
        for cls in (FastClient, GuardedClient):
            nc = cls()
            sub = Subscription(nc, 2, "s", pending_msgs_limit=0, pending_bytes_limit=0)
            nc._subs[2] = sub
            wire = b""
            for block in blocks:
                payload = b"p" * extra
                hsize = len(block) + (2 * extra + 1 if sid_pick == 0 else 0)  # sometimes past the frame
                wire += b"HMSG s.x %d r %d %d\r\n%s%s\r\n" % (
                    [2, 9, 2][sid_pick],
                    hsize,
                    len(block) + extra,
                    block,
                    payload,
                )
            wire += b"MSG s.end 2 3\r\nend\r\n"
            await nc._ps.parse(wire)
            assert not nc._ps.buf
            datas = []
            while not sub._pending_queue.empty():
                datas.append(sub._pending_queue.get_nowait().data)
            assert datas[-1:] == [b"end"], cls.__name__

    asyncio.run(run())
