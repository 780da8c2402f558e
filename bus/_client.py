"""The nats-py ``Client`` agentbus connects with: a frame guard, and an optional fast path.

Both subclass nats-py 2.16's ``Client`` and borrow its internals, so
:func:`client_class` uses them only with the exact version they were tested with
(:data:`SUPPORTED`); with any other it returns nats-py's own ``Client``.

**The guard** (:class:`GuardedClient`, always used). nats-py 2.16 ends its read loop
for good on any exception raised while a message is processed: a subject or reply
that is not UTF-8, a header block of 8 bytes or fewer, a status line that is not
UTF-8 (docs/nats-py-read-loop.md has the reproducers). Any client allowed to publish
on a subject a worker subscribes to could stop that worker; one ``HPUB`` on the gossip
subject stopped all of them. Here subjects and replies decode with replacement, a
message whose header block cannot be parsed is dropped (a JetStream delivery is handed
on marked instead, so the worker dead-letters it rather than see it redelivered
forever), a failing handler is logged, each is counted in
:attr:`GuardedClient.bad_frames`, and the read loop carries on. nats-py's parser is fed
one control line at a time (:class:`_LineParser`): its regular expressions would read a
header block starting with digits and CRLF as the line's sizes, and cut the stream where
the publisher chose (a protocol error, or a message smuggled into another subscription).
``flush()`` is a barrier again: nats-py writes its PING ahead of the commands still pending
(a ``SUB`` just made), so the server could answer it before it had the subscription.

**The fast path** (:class:`FastClient`, ``connect(fast_path=True)``), for the
worker's hot path, with the same guard:

- :func:`route` hands one subscription's messages to a plain function straight from
  the read loop, in arrival order. nats-py puts each message on an ``asyncio.Queue``
  that a task per subscription awaits (a put, a get, a wake-up and a coroutine, after a
  general header parser, after a regular expression or two): about a tenth of the LLM
  benchmark's worker CPU for the pull inbox. A fast lane in front of nats-py's parser
  cuts whole ``MSG``/``HMSG`` frames while that parser holds nothing, hands it every
  other op and any partial frame, and resumes after it. Deliveries (with a reply) get their
  ``Name: value`` lines parsed here; statuses (inline status lines) and any block not
  starting ``NATS/1.0\r\n`` go through nats-py's header parsing (so what is delivered is
  what nats-py would deliver: tests/property/test_frame_fuzz.py). A handler must not block.
- :func:`publish_now` appends exactly the bytes ``Client.publish`` would to the same
  pending buffer, in call order, and nudges the same flusher, synchronously:
  ``Client.publish`` costs three coroutines and a flush future per message, an eighth
  of the LLM benchmark's worker CPU (about seven publishes per LLM task). Only in the
  plain case (connected, flusher running, no headers, payload within
  ``max_payload``, buffer below its limit, a plain subject); otherwise it returns False
  and :func:`publish` calls ``Client.publish``.

The upstream use case (for nats-py's maintainers): a callback that runs synchronously
in the read loop (``subscribe(..., sync_cb=...)``) and a synchronous
``publish_nowait``; and a read loop that survives a malformed message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.client import __version__ as _nats_version
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.parser import AWAITING_CONTROL_LINE, CRLF_SIZE, Parser

from agentbus.errors import UnsafeSubjectError
from bus.messages import HDR_UNREADABLE

__all__ = [
    "BAD_FRAME_REASONS",
    "MAX_NAMES_BYTES",
    "SUPPORTED",
    "FastClient",
    "GuardedClient",
    "Handler",
    "check_names",
    "client_class",
    "parse_headers",
    "publish",
    "publish_now",
    "route",
    "unroute",
    "unsubscribe",
    "withdraw",
]

log = logging.getLogger("agentbus.bus")

SUPPORTED = _nats_version.startswith("2.16.")
"""Whether this nats-py is the one the guard and the fast path were tested with."""

BAD_FRAME_REASONS = ("subject", "headers", "handler", "other")
"""Why a frame was counted: a subject or reply that is not UTF-8 (delivered with
replacement characters), a header block nats-py cannot parse (dropped), a routed
handler that raised, anything else raised while processing a message (dropped)."""

MAX_NAMES_BYTES = 4000
"""Bytes of subject plus reply a publish may carry: nats-server closes the connection of a
client whose control line (``HPUB <subject> <reply> <sizes>``) exceeds its
``max_control_line``, 4,096 bytes by default; the rest is room for the op and sizes."""

Handler = Callable[[Msg], None]


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class GuardedClient(Client):
    """nats-py's ``Client`` whose read loop no single message can end."""

    def __init__(self) -> None:
        super().__init__()
        self.bad_frames: dict[str, int] = dict.fromkeys(BAD_FRAME_REASONS, 0)
        """Frames counted by reason (see :data:`BAD_FRAME_REASONS`), for /metrics."""
        self._ps = _LineParser(self)

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        """nats-py's, behind every command already queued: nats-py 2.16 writes the PING straight
        to the socket while a ``SUB`` or ``PUB`` just queued waits for the flusher task, so the
        server could answer ``flush()``'s PING before it had the subscription, and a message
        another client published once ``flush()`` returned could miss it. The pending commands
        go out first here, as the flusher would write them (not while disconnected: they wait
        for the reconnect, as in nats-py)."""
        transport = self._transport
        if self._pending and transport is not None and self.is_connected:
            transport.writelines(self._pending)
            self._pending = []
            self._pending_data_size = 0
        await super()._send_ping(future)

    def _bad_frame(self, reason: str, subject: bytes, exc: BaseException | None) -> None:
        n = self.bad_frames[reason] = self.bad_frames[reason] + 1
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th...: a peer can send these at any rate
            log.warning(
                "bad nats frame #%d (%s) on %r: %s: %s",
                *(n, reason, subject[:200], type(exc).__name__, exc),
                exc_info=exc if reason == "handler" else None,  # our bug: the traceback
            )

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        try:
            await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        except _BadHeaders as bad:
            self._bad_frame("headers", subject, bad.__cause__)
            if reply.startswith(_JS_ACK):  # a stored task: marked, so its fate is a dead letter
                await self._process_marked(sid, subject, reply, data)
        except Exception as exc:
            self._bad_frame("other", subject, exc)

    async def _process_marked(self, sid: int, subject: bytes, reply: bytes, data: bytes) -> None:
        """Deliver a JetStream delivery whose header block was unreadable with the header
        :data:`~bus.messages.HDR_UNREADABLE` instead: dropped, it would be redelivered forever."""
        try:
            await super()._process_msg(sid, subject, reply, data, _UNREADABLE_BLOCK)
        except Exception as exc:
            self._bad_frame("other", subject, exc)

    async def _process_headers(self, headers: bytes | None) -> dict[str, str] | None:
        try:
            return await super()._process_headers(headers)
        except Exception as exc:
            raise _BadHeaders from exc

    def _build_message(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None
    ) -> Msg:
        try:
            return super()._build_message(sid, subject, reply, data, headers)  # type: ignore[no-any-return]
        except UnicodeDecodeError as exc:
            self._bad_frame("subject", subject, exc)
            return self.msg_class(
                subject=_text(subject), reply=_text(reply), data=data, headers=headers, _client=self, _sid=sid
            )


_JS_ACK = b"$JS.ACK."
_UNREADABLE_BLOCK = f"NATS/1.0\r\n{HDR_UNREADABLE}: 1\r\n\r\n".encode()


class _BadHeaders(Exception):
    """nats-py could not parse a message's header block (the cause says why)."""


# Subjects and header names repeat from message to message: decoded once, the same str
# objects are shared by every message in flight (and hash once; bounded for safety).
_subject = functools.lru_cache(maxsize=4096)(bytes.decode)


@functools.lru_cache(maxsize=256)
def _header_name(name: bytes) -> str | None:
    """A header line's name as nats-py reads it (stripped, ASCII, no inner whitespace), or None."""
    if not name.isascii():
        return None
    key = name.strip().decode("ascii")
    return None if key and key.split() != [key] else key


_NOT_PLAIN: dict[str, str] = {}
"""What :func:`_fields` returns for a block with an inline status or no ``NATS/1.0`` line
(compared by identity): nats-py's header parsing reads those (and the guard drops what it cannot)."""


def _fields(block: bytes) -> dict[str, str] | None:
    """The fields of a header block of plain ``Name: value`` lines, or :data:`_NOT_PLAIN`."""
    lines = block.split(b"\r\n")
    if lines[0] != b"NATS/1.0" or len(lines) == 1:
        return _NOT_PLAIN
    out: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and (key := _header_name(name)) is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out or None


def parse_headers(block: bytes) -> dict[str, str] | None:
    """The fields of a NATS header block with no inline status (``NATS/1.0\\r\\nName: value\\r\\n...``),
    read as nats-py reads them (names stripped, ASCII, no inner whitespace; values stripped);
    None for any other block. Never raises: lines that are not ``Name: value`` are skipped."""
    fields = _fields(block)
    return None if fields is _NOT_PLAIN else fields


class FastClient(GuardedClient):
    """:class:`GuardedClient` with routed subscriptions and a fast lane in its parser."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[int, Handler] = {}
        self._ps = _FastParser(self)

    def _deliver(
        self,
        sub: Subscription,
        handler: Handler,
        subject: bytes,
        reply: bytes,
        data: bytes,
        fields: dict[str, str] | None,
    ) -> None:
        """Count a routed message as nats-py would, then hand it to ``handler``."""
        sub._received += 1
        stats = self.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        try:
            msg = Msg(self, _subject(subject), reply.decode(), data, fields, _sid=sub._id)
        except UnicodeDecodeError as exc:
            self._bad_frame("subject", subject, exc)
            msg = Msg(self, _text(subject), _text(reply), data, fields, _sid=sub._id)
        try:
            handler(msg)
        except Exception as exc:
            self._bad_frame("handler", subject, exc)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        handler = self._routes.get(sid)
        sub = self._subs.get(sid)
        if handler is None or sub is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        fields = _fields(headers) if reply and headers else None  # a delivery's plain header lines
        if not reply or fields is _NOT_PLAIN:  # a status (heartbeat, expired or refused pull), an odd block
            try:
                fields = await self._process_headers(headers)  # nats-py's parsing
            except _BadHeaders as bad:
                self._bad_frame("headers", subject, bad.__cause__)
                if not reply.startswith(_JS_ACK):
                    return
                fields = {HDR_UNREADABLE: "1"}  # a stored task: its fate is a dead letter (see above)
        self._deliver(sub, handler, subject, reply, data, fields)


class _LineParser(Parser):
    """nats-py's parser fed one control line, or one message's bytes, at a time.

    nats-py's ``MSG_RE``/``HMSG_RE`` separate the fields of a control line with ``\\s+``,
    which matches CRLF: given ``HMSG <subject> <sid> <hsize> <size>\\r\\n`` followed by a
    header block that starts with digits and CRLF (the publisher writes the block, and
    nats-server relays any), the regular expression reads ``<hsize>`` as a reply and takes its
    sizes from the block, and the parser cuts the stream where the publisher chose: a message
    written inside the block is delivered to any subscription of the connection, or the
    parser ends the read loop with a protocol error (docs/nats-py-read-loop.md). Here its
    buffer never holds more than one control line when it matches one."""

    async def parse(self, data: bytes = b"") -> None:
        await self._feed(data, 0, until_idle=False)

    async def _feed(self, data: bytes, pos: int, *, until_idle: bool) -> int:
        """Feed ``data[pos:]`` to nats-py's parser up to the next control line's CRLF (or the
        end of the message it awaits), again and again; return where it stopped: the end, or
        with ``until_idle`` the first point where nats-py's parser holds nothing; -1 when the
        parser was reset meanwhile (a reconnect: the rest is dropped, as nats-py drops it)."""
        parse = super().parse
        end = len(data)
        while pos < end:
            buf = self.buf
            if self.state != AWAITING_CONTROL_LINE:  # the message's bytes and its CRLF,
                cut = pos + max(self.needed + CRLF_SIZE - len(buf), 1)
                eol = -1 if cut >= end or until_idle else data.find(b"\r\n", cut)
                cut = min(end, cut) if eol < 0 else eol + 2  # and the next control line: alone then
            elif buf and buf[-1] == 13 and data[pos] == 10:  # the line's CR came with the last read
                cut = pos + 1
            else:
                eol = data.find(b"\r\n", pos)
                cut = end if eol < 0 else eol + 2  # no CRLF yet: nats-py's parser buffers the part
            await parse(data[pos:cut] if pos or cut < end else data)
            if self.buf is not buf:
                return -1
            pos = cut
            if until_idle and not buf and self.state == AWAITING_CONTROL_LINE:
                break
        return pos


_Frame = tuple[int, bytes, bytes, bytes | None, bytes, int]


def _whole_frame(data: bytes, pos: int) -> _Frame | None:
    """The whole ``MSG``/``HMSG`` frame at ``pos`` as (sid, subject, reply, header block or
    None, payload, where the next frame starts), or None: another op, a partial or odd frame."""
    if data.startswith(b"HMSG ", pos):
        skip = 5
    elif data.startswith(b"MSG ", pos):
        skip = 4
    else:
        return None
    eol = data.find(b"\r\n", pos)
    if eol < 0:
        return None
    args = data[pos + skip : eol].split(b" ")
    try:
        if skip == 5:  # subject sid [reply] header-size total-size
            if len(args) == 4:
                args.insert(2, b"")
            if len(args) != 5 or not (args[3].isdigit() and args[4].isdigit()):
                return None
            hsize, size = int(args[3]), int(args[4])
        else:  # subject sid [reply] size
            if len(args) == 3:
                args.insert(2, b"")
            if len(args) != 4 or not args[3].isdigit():
                return None
            hsize, size = 0, int(args[3])
        start = eol + 2
        if start + size + 2 > len(data) or hsize > size or not args[1].isdigit() or not args[0]:
            return None
        sid = int(args[1])
    except ValueError:  # digits past int()'s limit: nats-py's parser reports the protocol error
        return None
    headers = data[start : start + hsize] if hsize else None  # None, as nats-py's parser passes
    return sid, args[0], args[2], headers, data[start + hsize : start + size], start + size + 2


class _FastParser(_LineParser):
    """nats-py's parser with a fast lane: whole ``MSG``/``HMSG`` frames are cut here while
    nats-py's parser holds nothing, and a routed delivery goes to its handler without the
    parser's regular expressions and coroutine; a frame this lane does not take (another op,
    a partial or odd frame) goes to nats-py's, and the lane resumes after it."""

    nc: FastClient

    async def parse(self, data: bytes = b"") -> None:
        pos, end = 0, len(data)
        if self.buf or self.state != AWAITING_CONTROL_LINE:  # the frame the last read left
            pos = await self._feed(data, 0, until_idle=True)
        nc = self.nc
        routes, subs, deliver, not_plain = nc._routes, nc._subs, nc._deliver, _NOT_PLAIN  # per read
        while 0 <= pos < end:
            frame = _whole_frame(data, pos)
            if frame is None:
                pos = await self._feed(data, pos, until_idle=True)
                continue
            sid, subject, reply, headers, payload, pos = frame
            handler = routes.get(sid)
            if handler is not None and reply and (sub := subs.get(sid)) is not None:
                fields = _fields(headers) if headers else None
                if fields is not not_plain:
                    deliver(sub, handler, subject, reply, payload, fields)
                    continue
            await nc._process_msg(sid, subject, reply, payload, headers)


def client_class(*, fast_path: bool) -> type[Client]:
    """The class ``bus.connection.connect`` instantiates: nats-py's own with an untested nats-py."""
    if not SUPPORTED:
        log.warning("nats-py %s is not the tested 2.16: no frame guard, no fast path", _nats_version)
        return Client
    return FastClient if fast_path else GuardedClient


def route(nc: Client, sub: Subscription, handler: Handler) -> bool:
    """Deliver ``sub``'s messages to ``handler`` straight from the read loop; False when ``nc``
    has no fast path or ``sub`` unsubscribes itself after a number of messages (then ``sub``'s
    callback keeps receiving them)."""
    if not isinstance(nc, FastClient) or sub._max_msgs > 0:
        return False
    nc._routes[sub._id] = handler
    return True


def unroute(nc: Client, sub: Subscription) -> None:
    """Stop routing ``sub``'s messages (after it is unsubscribed or drained)."""
    if isinstance(nc, FastClient):
        nc._routes.pop(sub._id, None)


async def withdraw(nc: Client, sub: Subscription) -> None:
    """Drain a pull consumer's inbox: the server drops the pull requests it still holds for it,
    and whatever it sent before still reaches the callback. A closed connection has none left."""
    try:
        await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    except Exception as exc:
        log.debug("withdrawing pull requests failed: %s", exc)
    finally:
        unroute(nc, sub)


async def unsubscribe(nc: Client, sub: Subscription) -> None:
    """Unsubscribe and stop routing ``sub``; a closed connection has nothing to unsubscribe."""
    try:
        await sub.unsubscribe()
    except Exception as exc:
        log.debug("unsubscribe failed: %s", exc)
    unroute(nc, sub)


def _plain(name: str) -> bool:
    return bool(name) and name.isprintable() and " " not in name


def check_names(subject: str, reply: str = "") -> None:
    """Raise :class:`~agentbus.errors.UnsafeSubjectError` for a subject or reply that would make
    nats-server close the connection: empty subject, whitespace or control characters, or
    together longer than :data:`MAX_NAMES_BYTES`."""
    if not _plain(subject):
        raise UnsafeSubjectError("subject", subject, "empty, or holds whitespace or control characters")
    if reply and not _plain(reply):
        raise UnsafeSubjectError("reply", reply, "holds whitespace or control characters")
    size = len(subject.encode()) + len(reply.encode())
    if size > MAX_NAMES_BYTES:
        field, value = ("reply", reply) if len(reply) > len(subject) else ("subject", subject)
        raise UnsafeSubjectError(field, value, f"makes {size} bytes with its pair, over {MAX_NAMES_BYTES}")


def publish_now(nc: Client, subject: str, payload: bytes, reply: str = "") -> bool:
    """Queue a message as ``await nc.publish(subject, payload, reply=reply)`` would; False
    (nothing queued) when ``nc`` has no fast path or the plain case does not hold."""
    if not isinstance(nc, FastClient) or not nc.is_connected or len(payload) > nc._max_payload:
        return False
    flusher = nc._flusher_task
    if flusher is None or flusher.done() or not _plain(subject) or (reply and not _plain(reply)):
        return False
    subject_b, reply_b = subject.encode(), reply.encode()
    if len(subject_b) + len(reply_b) > MAX_NAMES_BYTES:
        return False  # publish() refuses it
    cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject_b, reply_b, len(payload), payload)
    size = nc._pending_data_size + len(cmd)
    if nc._max_pending_size > 0 and size > nc._max_pending_size:
        return False  # Client.publish flushes synchronously first
    nc._pending.append(cmd)
    nc._pending_data_size = size
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += len(payload)
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())
    return True


async def publish(nc: Client, subject: str, payload: bytes, reply: str = "") -> None:
    """``await nc.publish(subject, payload, reply=reply)``, through :func:`publish_now` when it
    applies; a subject or reply the server would close the connection for raises
    :class:`~agentbus.errors.UnsafeSubjectError` and nothing is sent."""
    if not publish_now(nc, subject, payload, reply):
        check_names(subject, reply)
        await nc.publish(subject, payload, reply=reply)
