"""The lanes of :mod:`bus.fair`: one tenant's consumer of a kind as a worker sees it, and how
the lanes are found (the stream's backlogged subjects, the existing tenant consumers).

Everything read here comes from the server's JSON API; a subject in it was written by a
client, so it is only used after checks (a dict of positive counts, three tokens).
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from bus.subjects import TASKS_PREFIX
from bus.topology import tasks_consumers, tenant_consumer_name

__all__ = [
    "Lane",
    "backlogged",
    "pending_of",
    "shared_batch",
    "silent_lanes",
    "sort_backlogged",
    "tenant_consumers",
]

_TIMEOUT_S = 2.0


class Lane:
    """One tenant's consumer of this kind, as the worker sees it."""

    __slots__ = (
        "active_at",
        "ahead",
        "credit",
        "deficit",
        "gone",
        "heard_at",
        "heard_before",
        "held",
        "idle_queued",
        "inbox",
        "next_subject",
        "pending",
        "queued",
        "silent_ticks",
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
        self.active_at = self.heard_at = self.heard_before = time.monotonic()
        self.silent_ticks = 0  # heartbeat periods with a request out and no word on its inbox


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


def sort_backlogged(
    subjects: list[str], lanes: dict[str, Lane], kind: str, room: int
) -> tuple[list[Lane], list[tuple[str, str]], bool]:
    """Sort the backlogged ``subjects`` of ``kind`` (:func:`backlogged`): the open lanes among
    them, up to ``room`` new ``(tenant, subject)`` pairs to open, and whether one had a tenant
    no consumer can name (invalid UTF-8 reads as U+FFFD: it goes to the DLQ instead)."""
    known: list[Lane] = []
    new: list[tuple[str, str]] = []
    invalid = False
    for subject in subjects:
        lane = lanes.get(subject)
        if lane is not None and not lane.gone:
            known.append(lane)
            continue
        if len(new) >= room:
            continue
        tokens = subject.split(".")
        if len(tokens) != 3 or tokens[2] != kind:
            continue
        if "\ufffd" in tokens[1]:
            invalid = True
            continue
        new.append((tokens[1], subject))
    return known, new, invalid


def shared_batch(lane: Lane, free: int, share: int, max_batch: int) -> int:
    """How many messages ``lane`` asks for among other wanting lanes: what it wants, within its
    ``share`` of the places and the ``free`` ones; a request only when worth a round trip
    (half its share, or none outstanding, or a few while little is outstanding)."""
    want = lane.pending - lane.credit
    room = min(free, share - lane.held - len(lane.ahead) - lane.credit, want, max_batch)
    if room <= 0:
        return 0
    threshold = max(1, min(share // 2, max_batch))
    if room >= threshold or lane.credit == 0:
        return room
    busy = max(1, min(threshold, share // 32))
    return room if room >= busy and lane.credit <= share // 4 else 0


def silent_lanes(lanes: Iterable[Lane], periods: int = 3) -> list[Lane]:
    """The lanes that had a request out and heard nothing on their inbox (no delivery, heartbeat
    or status) for ``periods`` heartbeat periods in a row; called once a period. A live request
    brings a heartbeat every period, so that silence is a lost request: a consumer whose
    leader was lost (a node killed, paused or cut off) may never answer or expire it."""
    silent = []
    for lane in lanes:
        if (lane.credit or lane.standing) and lane.heard_at == lane.heard_before:
            lane.silent_ticks += 1
            if lane.silent_ticks >= periods:
                lane.silent_ticks = 0
                silent.append(lane)
        else:
            lane.silent_ticks = 0
        lane.heard_before = lane.heard_at
    return silent
