"""Receiving the worker's pull deliveries without nats-py's per-subscription queue.

nats-py puts every message of a callback subscription on an ``asyncio.Queue``; a
task per subscription takes it off and awaits the callback. Per message that is a
put, a get, a task wake-up and a coroutine, after the header block was parsed into
a dict by a general parser, and before that its protocol parser tried a regular
expression or two and awaited a coroutine. For the worker's pull inbox, one message
per task, that was about a tenth of the LLM benchmark's worker CPU.

:func:`route` hands the messages of one subscription to a plain function at once,
from the client's read loop, in the order they arrived (a fast lane in front of
nats-py's parser cuts whole ``MSG``/``HMSG`` frames itself and leaves every other op
and any partial frame to nats-py's): the task deliveries with their headers parsed
here (``Name: value`` lines), everything else (heartbeats and pull statuses, which
carry inline status lines) after nats-py's own header parsing.
A handler must not block and must not raise (an exception is logged, never passed
to the read loop). It relies on nats-py internals, so it applies only with the
version :mod:`bus.fastpub` was checked against; otherwise :func:`route` returns
False and the subscription's callback gets the messages as usual.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.protocol.parser import AWAITING_CONTROL_LINE

from bus.fastpub import SUPPORTED

__all__ = ["Handler", "parse_headers", "route", "unroute"]

log = logging.getLogger("agentbus.bus")

Handler = Callable[[Msg], None]
_ROUTES = "_agentbus_routes"  # the client's sid -> handler table, set by the first route()


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


def parse_headers(block: bytes) -> dict[str, str] | None:
    """The fields of a NATS header block with no inline status (``NATS/1.0\\r\\nName: value\\r\\n...``),
    read as nats-py reads them (names stripped, ASCII, no inner whitespace; values stripped)."""
    out: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and (key := _header_name(name)) is not None:
            out[key] = value.strip().decode("utf-8", "replace")
    return out or None


def route(nc: Client, sub: Subscription, handler: Handler) -> bool:
    """Deliver ``sub``'s messages to ``handler`` straight from the read loop; False when this
    nats-py is not the supported one or ``sub`` unsubscribes itself after a number of
    messages (then ``sub``'s callback keeps receiving them)."""
    if not SUPPORTED or sub._max_msgs > 0:
        return False
    routes: dict[int, Handler] | None = getattr(nc, _ROUTES, None)
    if routes is None:
        routes = {}
        setattr(nc, _ROUTES, routes)
        nc._process_msg = _dispatcher(nc, routes, nc._process_msg)  # type: ignore[method-assign,assignment]
        nc._ps.parse = _parser(nc, routes, nc._ps.parse)  # type: ignore[method-assign,assignment]
    routes[sub._id] = handler
    return True


def unroute(nc: Client, sub: Subscription) -> None:
    """Stop routing ``sub``'s messages (after it is unsubscribed or drained)."""
    routes: dict[int, Handler] | None = getattr(nc, _ROUTES, None)
    if routes is not None:
        routes.pop(sub._id, None)


def _deliver(
    nc: Client,
    sub: Subscription,
    handler: Handler,
    subject: bytes,
    reply: bytes,
    data: bytes,
    fields: dict[str, str] | None,
) -> None:
    """Count a routed message as nats-py would, then hand it to ``handler``."""
    sub._received += 1
    stats = nc.stats
    stats["in_msgs"] += 1
    stats["in_bytes"] += len(data)
    msg = Msg(nc, _subject(subject), reply.decode(), data, fields, _sid=sub._id)
    try:
        handler(msg)
    except Exception:
        log.exception("handler of %s failed", msg.subject)


def _dispatcher(
    nc: Client, routes: dict[int, Handler], original: Callable[..., Awaitable[None]]
) -> Callable[..., Awaitable[None]]:
    async def process(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = routes.get(sid)
        sub = nc._subs.get(sid)
        if handler is None or sub is None:
            return await original(sid, subject, reply, data, headers)
        if reply:  # a delivery: plain header lines
            fields = parse_headers(headers) if headers else None
        else:  # a status (heartbeat, expired or refused pull): nats-py parses the inline status
            fields = await nc._process_headers(headers)
        _deliver(nc, sub, handler, subject, reply, data, fields)

    return process


def _parser(
    nc: Client, routes: dict[int, Handler], original: Callable[[bytes], Awaitable[None]]
) -> Callable[[bytes], Awaitable[None]]:
    """nats-py's parser with a fast lane: whole ``MSG``/``HMSG`` frames at the start of a read
    (nothing left over from the last one) are cut here, and a routed delivery goes to its
    handler without the parser's regular expressions and coroutine; everything else, from the
    first frame this lane does not take (another op, a partial frame), goes to nats-py's."""
    ps = nc._ps

    async def parse(data: bytes = b"") -> None:
        if ps.buf or ps.state != AWAITING_CONTROL_LINE:
            return await original(data)
        pos, end = 0, len(data)
        while pos < end:
            if data.startswith(b"HMSG ", pos):
                skip = 5
            elif data.startswith(b"MSG ", pos):
                skip = 4
            else:
                break
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            args = data[pos + skip : eol].split(b" ")
            if skip == 5:  # subject sid [reply] header-size total-size
                if len(args) == 4:
                    args.insert(2, b"")
                if len(args) != 5 or not (args[3].isdigit() and args[4].isdigit()):
                    break
                hsize, size = int(args[3]), int(args[4])
            else:  # subject sid [reply] size
                if len(args) == 3:
                    args.insert(2, b"")
                if len(args) != 4 or not args[3].isdigit():
                    break
                hsize, size = 0, int(args[3])
            start = eol + 2
            if start + size + 2 > end or hsize > size or not args[1].isdigit() or not all(args[:2]):
                break  # partial (or odd): nats-py's parser buffers it
            subject, sid, reply = args[0], int(args[1]), args[2]
            headers = data[start : start + hsize] if hsize else None  # None, as nats-py's parser passes
            payload = data[start + hsize : start + size]
            pos = start + size + 2
            handler = routes.get(sid)
            sub = nc._subs.get(sid) if handler is not None else None
            if handler is not None and sub is not None and reply:
                fields = parse_headers(headers) if headers else None
                _deliver(nc, sub, handler, subject, reply, payload, fields)
            else:
                await nc._process_msg(sid, subject, reply, payload, headers)  # type: ignore[arg-type]
        if pos < end:
            await original(data[pos:] if pos else data)

    return parse
