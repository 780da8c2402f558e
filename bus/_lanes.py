"""The lanes of :mod:`bus.fair`: one tenant's consumer of a kind as a worker sees it, and how
the lanes are found (the stream's backlogged subjects, the existing tenant consumers).

Everything read here comes from the server's JSON API; a subject in it was written by a
client, so it is only used after checks (a dict of positive counts, three tokens).
"""

from __future__ import annotations

import json
import time
from collections import deque

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bus.subjects import TASKS_PREFIX
from bus.topology import tasks_consumers, tenant_consumer_name

__all__ = ["Lane", "backlogged", "pending_of", "tenant_consumers"]

_TIMEOUT_S = 2.0


class Lane:
    """One tenant's consumer of this kind, as the worker sees it."""

    __slots__ = (
        "active_at",
        "ahead",
        "credit",
        "deficit",
        "gone",
        "held",
        "idle_queued",
        "inbox",
        "next_subject",
        "pending",
        "queued",
        "standing",
        "subject",
        "tenant",
        "wanting",
        "weight",
    )

    def __init__(self, tenant: str, subject: str, next_subject: str, inbox: str, weight: int) -> None:
        self.tenant = tenant
        self.subject = subject
        self.next_subject = next_subject
        self.inbox = inbox
        self.weight = weight
        self.credit = 0  # messages asked for by regular requests, not yet delivered or expired
        self.standing = False  # a one-message standing request is out (never together with credit)
        self.held = 0
        self.ahead: deque[tuple[float, Msg]] = deque()
        self.pending = 0  # undelivered messages on the server, as the last delivery said
        self.deficit = 0
        self.queued = False  # in the ready ring (has messages ahead)
        self.wanting = False  # in the wanting ring (the server has more than asked for)
        self.idle_queued = False  # waiting for a standing request
        self.gone = False
        self.active_at = time.monotonic()


def pending_of(reply: str) -> int:
    """The consumer's undelivered count, the last token of a delivery's ack subject."""
    tail = reply[reply.rfind(".") + 1 :]
    return int(tail) if tail.isascii() and tail.isdigit() and len(tail) < 19 else 0


async def backlogged(nc: Client, stream: str, subjects_filter: str) -> list[str]:
    """The subjects matching ``subjects_filter`` that hold messages (on a work queue: the
    tenants with queued or unacknowledged tasks), from the stream's info."""
    request = json.dumps({"subjects_filter": subjects_filter}).encode()
    reply = await nc.request(f"$JS.API.STREAM.INFO.{stream}", request, timeout=_TIMEOUT_S)
    subjects = json.loads(reply.data)["state"].get("subjects") or {}
    if not isinstance(subjects, dict):
        return []
    return [s for s, n in subjects.items() if isinstance(s, str) and isinstance(n, int) and n > 0]


async def tenant_consumers(js: JetStreamContext, kind: str, *, active_s: float) -> list[tuple[str, str, str]]:
    """``(tenant, subject, consumer)`` of the tenant consumers of ``kind`` on ``TASKS`` created
    or delivering within ``active_s`` (older ones are left to expire: a standing request would
    keep them forever)."""
    out = []
    since = time.time() - active_s
    for info in await tasks_consumers(js):
        tokens = (info.config.filter_subject or "").split(".")
        if len(tokens) != 3 or tokens[0] != TASKS_PREFIX or tokens[2] != kind:
            continue
        stamps = (info.delivered.last_active if info.delivered else None, info.created)
        if max((t.timestamp() for t in stamps if t is not None), default=0.0) < since:
            continue
        if info.name == tenant_consumer_name(kind, tokens[1]):
            out.append((tokens[1], ".".join(tokens), info.name))
    return out
