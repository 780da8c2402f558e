"""Publishing on the worker's hot path without nats-py's three coroutines per message.

``Client.publish`` validates the subject with a regular expression, then awaits
``_send_publish``, which awaits ``_send_command`` and ``_flush_pending``: per message
three coroutines and a flush future, for what ends as one ``PUB`` line appended to
the client's pending buffer and a nudge to its flusher task. An LLM task publishes
about seven messages (ack, result, stream events); in the LLM benchmark those
publishes were an eighth of the worker's CPU.

:func:`publish_now` appends exactly the bytes ``Client.publish`` would (``PUB
<subject> <reply> <size>``, the payload, CRLF) to the same buffer, in call order with
every other publish, and nudges the same flusher, synchronously. It relies on
nats-py internals, so it is used only with the version it was checked against
(``nats-py`` is pinned) and only in the plain case: connected, flusher running, no
headers, payload within ``max_payload``, buffer below its limit, a subject with no
whitespace or control characters. Otherwise it returns False and the caller uses
``Client.publish``, which buffers while reconnecting and raises its usual errors.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.client import __version__ as _nats_version

__all__ = ["SUPPORTED", "publish", "publish_now"]

SUPPORTED = _nats_version.startswith("2.16.")
"""Whether this nats-py is the one the fast path was checked against (else it never applies)."""


def _plain(subject: str) -> bool:
    return bool(subject) and subject.isprintable() and " " not in subject


def publish_now(nc: Client, subject: str, payload: bytes, reply: str = "") -> bool:
    """Queue a message as ``await nc.publish(subject, payload, reply=reply)`` would; False
    (nothing queued) when the plain case does not hold: then call ``nc.publish``."""
    if not SUPPORTED or not nc.is_connected or len(payload) > nc._max_payload:
        return False
    flusher = nc._flusher_task
    if flusher is None or flusher.done() or not _plain(subject) or (reply and not _plain(reply)):
        return False
    cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
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
    """``await nc.publish(subject, payload, reply=reply)``, through :func:`publish_now` when it applies."""
    if not publish_now(nc, subject, payload, reply):
        await nc.publish(subject, payload, reply=reply)
