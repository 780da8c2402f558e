"""Fair share between tenants: one pull consumer per tenant of a kind, served by deficit round robin.

:class:`FairConsumer` pulls each tenant's tasks from that tenant's own durable consumer (a
*lane*, ``tasks.<tenant>.<kind>``) and decides twice which tenant comes next: which lane may
ask for messages (free places round robin to the lanes the server says have more, each up to
its weighted share; a lone lane gets the per-kind consumer's batching), and which ready
message takes a freed slot (deficit round robin, ``weight`` per turn, no tenant above
``tenant_cap`` while others are known). Every known lane without credit keeps one *standing*
one-message request, so a quiet tenant's task is in hand when a slot frees; lanes are found
from the stream's backlogged subjects every ``discover_s`` (:mod:`bus._discovery`). The bound::

    held <= slots
    held + prefetched + credit <= slots + prefetch + standing lanes (<= max_standing)

Credit is returned by 408/409 statuses and reset after a reconnect or when heartbeats stop
(a lane's alone when only its requests went silent); a lane whose consumer is gone is
dropped and rediscovered. The design, its costs and its figures: docs/fairness.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus._client import check_names, publish_now, route, unsubscribe, withdraw
from bus._discovery import _Discovery
from bus._lanes import (
    Lane,
    pending_of,
    shared_batch,
    silent_lanes,
)
from bus.consumer import AckKind, ack
from bus.subjects import TASKS_PREFIX

__all__ = ["FairConsumer"]

log = logging.getLogger("agentbus.bus")

_STATUS = "Status"
_PENDING_MSGS = "Nats-Pending-Messages"
_MAX_SCAN = 32  # wanting lanes looked at per pull request


class FairConsumer(_Discovery):
    """Pulls one kind's tasks from per-tenant consumers into at most ``slots`` held messages."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        kind: str,
        slots: int,
        on_message: Callable[[Msg], None],
        provision: Callable[[str], Awaitable[str]],
        on_invalid: Callable[[], Awaitable[object]] | None = None,
        prefetch: int = 0,
        tenant_cap: int | None = None,
        weights: Mapping[str, int] | None = None,
        discover_s: float = 0.2,
        idle_s: float = 60.0,
        max_lanes: int = 10_000,
        max_standing: int = 1024,
        expires_s: float = 30.0,
        heartbeat_s: float = 5.0,
        shared_expires_s: float = 2.0,
        max_batch: int = 256,
    ) -> None:
        if slots < 1 or prefetch < 0 or max_standing < 0:
            raise ValueError("slots must be >= 1, prefetch and max_standing >= 0")
        self._nc = nc
        self._stream = stream
        self._kind = kind
        self._filter = f"{TASKS_PREFIX}.*.{kind}"
        self.slots = slots
        self._on_message = on_message
        self._provision = provision
        self._on_invalid = on_invalid
        self._places = places = slots + prefetch
        self._cap = max(1, tenant_cap if tenant_cap is not None else slots - slots // 8)
        self._weights = dict(weights or {})
        self._discover_s = discover_s
        self._idle_s = idle_s
        self._max_lanes = max_lanes
        self._max_standing = max_standing
        self._long = self._request_bytes(expires_s, heartbeat_s)
        self._shared = self._request_bytes(shared_expires_s, min(heartbeat_s, shared_expires_s / 2))
        self._heartbeat_s = heartbeat_s
        self._max_batch = max_batch
        self._threshold = max(1, min(places // 2, max_batch))
        self._busy_threshold = max(1, min(self._threshold, places // 32))
        self._busy_credit = places // 4
        self.held = 0
        self.credit = 0
        self._ahead_n = 0
        self._standing_n = 0
        self._lanes: dict[str, Lane] = {}  # by subject
        self._alone = False  # one lane: the per-kind consumer's rules and costs
        self._by_token: dict[str, Lane] = {}  # by the last token of the lane's inbox
        self._next_token = 0
        self._ready: deque[Lane] = deque()  # lanes with messages ahead, in DRR order
        self._wanting: deque[Lane] = deque()  # lanes the server has more of, round robin
        self._wanting_weight = 0
        self._idle: deque[Lane] = deque()  # lanes waiting for a standing request
        self._handing = False
        self.fetching = False
        self._prefix = ""
        self._sub: Subscription | None = None
        self._last_seen = time.monotonic()
        self._tasks: list[asyncio.Task[None]] = []
        self._pull_task: asyncio.Task[None] | None = None

    @staticmethod
    def _request_bytes(expires_s: float, heartbeat_s: float) -> bytes:
        return b',"expires":%d,"idle_heartbeat":%d}' % (int(expires_s * 1e9), int(heartbeat_s * 1e9))

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe the lanes' inboxes, find the tenants with a backlog and start pulling."""
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_inbox, pending_msgs_limit=-1)
        route(self._nc, self._sub, self._on_inbox_now)
        self.fetching = True
        await self._open_existing()
        await self.discover()
        self._tasks = [
            asyncio.create_task(self._discover_forever(), name=f"agentbus-discover-{self._kind}"),
            asyncio.create_task(self._watch(), name=f"agentbus-fair-watchdog-{self._kind}"),
        ]

    async def stop_fetching(self) -> None:
        """Ask for nothing more (drain), withdraw every lane's requests, hand over what arrived."""
        self.fetching = False
        sub, self._sub = self._sub, None
        if sub is not None:
            await withdraw(self._nc, sub)
        for lane in list(self._lanes.values()):  # all of them, slots or not: the worker hands them back
            while lane.ahead:
                self._ahead_n -= 1
                self._start(lane, lane.ahead.popleft()[1])
        self._ready.clear()

    async def close(self) -> None:
        """Stop pulling and unsubscribe; undelivered requested messages return after ack_wait."""
        self.fetching = False
        for task in (*self._tasks, self._pull_task):
            if task is not None:
                task.cancel()
        for lane in self._lanes.values():
            lane.ahead.clear()
        self._ahead_n = 0
        if self._sub is not None:
            await unsubscribe(self._nc, self._sub)
            self._sub = None

    def reset_credit(self, lanes: Iterable[Lane] | None = None) -> None:
        """Forget outstanding pull requests (all after a reconnect, or ``lanes``') and ask again."""
        for lane in self._lanes.values() if lanes is None else lanes:
            self.credit -= lane.credit
            self._standing_n -= lane.standing
            lane.credit = 0
            lane.standing = False
            self._settle(lane)
        if lanes is None:
            self.credit = self._standing_n = 0
            self._last_seen = time.monotonic()
        if self.fetching:
            self._schedule_pull()

    # -- what the worker reads --------------------------------------------------------------

    @property
    def prefetched(self) -> int:
        """Messages delivered ahead, waiting for a slot."""
        return self._ahead_n

    @property
    def lanes(self) -> int:
        """Tenants this worker currently serves for the kind."""
        return len(self._lanes)

    def held_by(self, tenant: str) -> int:
        """Slots ``tenant`` holds now."""
        lane = self._lanes.get(f"{TASKS_PREFIX}.{tenant}.{self._kind}")
        return lane.held if lane is not None else 0

    def waiting_since(self, before: float) -> Iterator[Msg]:
        """The prefetched messages that arrived before ``before`` (monotonic), for heartbeats."""
        return (msg for lane in list(self._lanes.values()) for at, msg in lane.ahead if at < before)

    # -- slots ------------------------------------------------------------------------------

    def release(self, msg: Msg | None) -> None:
        """The worker finished with ``msg`` (None: unknown, only the slot is counted): its slot is free."""
        self._freed(msg)
        if self.fetching and self._free() > 0:
            self._schedule_pull()

    async def ack_next(self, msg: Msg) -> None:
        """Ack ``msg`` and free its slot; with one lane wanting more, ask for it in the same message."""
        lane = self._freed(msg)
        request = self._next_for(lane)
        if request is not None and lane is not None:
            try:
                if not publish_now(self._nc, msg.reply, request, lane.inbox):
                    check_names(msg.reply, lane.inbox)
                    await self._nc.publish(msg.reply, request, reply=lane.inbox)
            except Exception:
                self._ungrant(lane, request)
                raise
            return
        await ack(self._nc, msg, AckKind.ACK)
        if self.fetching and self._free() > 0:
            self._schedule_pull()

    def ack_next_now(self, msg: Msg) -> bool:
        """:meth:`ack_next` done synchronously when the fast path can queue its message; False,
        and nothing done, when it cannot."""
        lane = self._lanes.get(msg.subject)
        if lane is not None and ((self._alone and self.fetching) or self._sole(lane)):
            batch = self._batch(lane, self._places - self.held - self._ahead_n - self.credit + 1)
            if batch:
                request = b'+NXT {"batch":%d%s' % (batch, self._long if self._alone else self._shared)
                if not publish_now(self._nc, msg.reply, request, lane.inbox):
                    return False
                self._freed_in(lane)
                lane.credit += batch
                self.credit += batch
                return True
        if not publish_now(self._nc, msg.reply, AckKind.ACK):
            return False
        self._freed_in(lane)
        if self.fetching and self._free() > 0:
            self._schedule_pull()
        return True

    def _freed(self, msg: Msg | None) -> Lane | None:
        lane = self._lanes.get(msg.subject) if msg is not None else None
        self._freed_in(lane)
        return lane

    def _freed_in(self, lane: Lane | None) -> None:
        """A slot of ``lane`` (None: unknown) is free again."""
        self.held -= 1
        if lane is not None:
            lane.held -= 1
            if lane.ahead and not lane.queued:  # it was at its cap
                lane.queued = True
                self._ready.append(lane)
            elif lane.gone and not lane.held and not lane.ahead:
                self._forget(lane)
        if self._ahead_n and not self._handing:
            # not inline: a handler's first step must not run inside the finishing task
            self._handing = True
            asyncio.get_running_loop().call_soon(self._hand_over)

    def _hand_over(self) -> None:
        """Start ready messages in free slots, deficit round robin over the lanes."""
        self._handing = False
        ready = self._ready
        cap = self.slots if self._alone else self._cap
        while ready and self.held < self.slots:
            lane = ready[0]
            if not lane.ahead or lane.held >= cap:  # re-queued when a slot of its own frees
                ready.popleft()
                lane.queued = False
                lane.deficit = 0
                continue
            if lane.deficit <= 0:
                lane.deficit = lane.weight
            lane.deficit -= 1
            self._ahead_n -= 1
            self._start(lane, lane.ahead.popleft()[1])
            if lane.deficit <= 0 and ready and ready[0] is lane:
                ready.rotate(-1)  # the next tenant's turn

    def _start(self, lane: Lane, msg: Msg) -> None:
        lane.held += 1
        self.held += 1
        self._on_message(msg)

    # -- credit -----------------------------------------------------------------------------

    def _free(self) -> int:
        return self._places - self.held - self._ahead_n - self.credit

    def _sole(self, lane: Lane | None) -> bool:
        """Whether the place ``lane`` frees goes back to it, so its ack carries the pull request
        (``+NXT``) as the per-kind consumer's does: while every wanting lane has a share of the
        places (each is held to it by :meth:`_batch`), or when its turn has come.

        A separate ack and pull request, to two consumers, are applied by the server in either
        order, so its summed ``num_ack_pending`` can read a few above the places for an
        instant: only with more wanting tenants than places."""
        if self._alone:
            return self.fetching
        if lane is None or not lane.wanting or not self.fetching:
            return False
        wanting = self._wanting
        if len(wanting) <= self._places:  # every wanting lane has a share: each keeps its own places
            return True
        if wanting[0] is lane:  # more lanes than places: the places go round
            wanting.rotate(-1)  # granted below, if worth a request: the next lane's turn
            return True
        return False

    def _share(self, lane: Lane) -> int:
        """The places ``lane`` may fill: all of them alone, its weighted part among the wanting."""
        total = self._wanting_weight if lane.wanting else self._wanting_weight + lane.weight
        return max(1, -(-self._places * lane.weight // max(total, lane.weight)))  # rounded up: no place idle

    def _batch(self, lane: Lane, free: int) -> int:
        """How many ``lane`` should ask for now with ``free`` places (0: not worth a request)."""
        if self._alone:  # PullConsumer._wants: batches, a request only when worth it
            if free >= self._threshold or (free > 0 and lane.credit == 0):
                return min(free, self._max_batch)
            worth = free >= self._busy_threshold and lane.credit <= self._busy_credit
            return min(free, self._max_batch) if worth else 0
        return shared_batch(lane, free, self._share(lane), self._max_batch)

    def _next_for(self, lane: Lane | None) -> bytes | None:
        """The ``+NXT`` request to send with the ack of a message of ``lane``, credit granted."""
        if lane is None or not self._sole(lane) or self._sub is None:
            return None
        batch = self._batch(lane, self._free())
        if not batch:
            return None
        lane.credit += batch
        self.credit += batch
        return b"+NXT " + self._request(batch, lane)

    def _ungrant(self, lane: Lane, request: bytes) -> None:
        batch = int(request.split(b":", 1)[1].split(b",", 1)[0])
        lane.credit -= batch
        self.credit -= batch

    def _request(self, batch: int, lane: Lane) -> bytes:
        return b'{"batch":%d%s' % (batch, self._long if self._alone else self._shared)

    def _settle(self, lane: Lane) -> None:
        """Put ``lane`` where its credit says: wanting more, or idle (a standing request)."""
        if lane.gone or not self.fetching:
            return
        if lane.pending > lane.credit and not lane.standing:
            if not lane.wanting:
                lane.wanting = True
                self._wanting_weight += lane.weight
                self._wanting.append(lane)
        elif lane.credit == 0 and not lane.standing and not lane.idle_queued:
            lane.idle_queued = True
            self._idle.append(lane)

    def _unwant(self, lane: Lane) -> None:
        if lane.wanting:
            lane.wanting = False
            self._wanting_weight -= lane.weight

    def _next_request(self) -> tuple[Lane, bytes] | None:
        """The next pull request to send, credit granted: round robin over the wanting lanes
        while places are free, then standing requests for idle lanes."""
        free = self._free()
        wanting = self._wanting
        tries = min(len(wanting), _MAX_SCAN)  # lanes at their share rotate on: O(1) a request
        while wanting and free > 0 and tries > 0:
            lane = wanting[0]
            if lane.gone or lane.standing or lane.pending <= lane.credit:
                wanting.popleft()
                self._unwant(lane)
                continue
            tries -= 1
            wanting.rotate(-1)
            batch = self._batch(lane, free)
            if batch:
                lane.credit += batch
                self.credit += batch
                return lane, self._request(batch, lane)
        idle = self._idle
        while idle and self._standing_n < self._max_standing:
            lane = idle.popleft()
            lane.idle_queued = False
            if lane.gone or lane.credit or lane.standing or lane.wanting:
                continue
            lane.standing = True
            self._standing_n += 1
            return lane, b'{"batch":1%s' % self._long
        return None

    def _schedule_pull(self) -> None:
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = asyncio.get_running_loop().create_task(self._pull())

    async def _pull(self) -> None:
        while self.fetching and self._nc.is_connected:
            nxt = self._next_request()
            if nxt is None:
                return
            lane, request = nxt
            try:
                if not publish_now(self._nc, lane.next_subject, request, lane.inbox):
                    await self._nc.publish(lane.next_subject, request, reply=lane.inbox)
            except Exception as exc:
                if lane.standing:
                    lane.standing = False
                    self._standing_n -= 1
                else:
                    self._ungrant(lane, request)
                log.warning("pull request failed: %s", exc)
                return

    # -- deliveries -------------------------------------------------------------------------

    async def _on_inbox(self, msg: Msg) -> None:  # without the fast path (bus._client)
        self._on_inbox_now(msg)

    def _on_inbox_now(self, msg: Msg) -> None:
        """A delivery, a heartbeat or a pull status of some lane (straight from the read loop)."""
        if msg.reply:  # a delivery comes with its task's subject, a status with the inbox's
            lane = self._lanes.get(msg.subject)
        else:
            lane = self._by_token.get(msg.subject[len(self._prefix) + 1 :])
        if lane is None:
            return  # a lane forgotten (its requests expired) or a stray message: not ours
        self._last_seen = lane.heard_at = now = time.monotonic()
        if msg.reply:
            lane.active_at = now
            if lane.standing:
                lane.standing = False
                self._standing_n -= 1
            elif lane.credit:
                lane.credit -= 1
                self.credit -= 1
            if not self._alone or not lane.credit:  # alone, it asks like the per-kind consumer
                lane.pending = left = pending_of(msg.reply)
                if left > lane.credit and not lane.wanting:  # more than asked for: it wants a share
                    self._settle(lane)
            if self.held < self.slots and not self._ready and (lane.held < self._cap or self._alone):
                lane.held += 1  # _start, inline: the hot path
                self.held += 1
                self._on_message(msg)
            else:
                lane.ahead.append((now, msg))
                self._ahead_n += 1
                if not lane.queued:
                    lane.queued = True
                    self._ready.append(lane)
                if self.held < self.slots and not self._handing:
                    self._handing = True
                    asyncio.get_running_loop().call_soon(self._hand_over)
            if lane.credit == 0:  # the last asked for: more, or a standing request
                self._settle(lane)
                self._schedule_pull()
            return
        headers = msg.headers or {}
        status = headers.get(_STATUS, "")
        if status == "100":  # idle heartbeat: the request is alive
            return
        if status in ("408", "409", "404"):
            pending = headers.get(_PENDING_MSGS)
            if lane.standing and not lane.credit:
                lane.standing = False
                self._standing_n -= 1
                if now - lane.active_at > self._idle_s and not (lane.held or lane.ahead):
                    self._forget(lane)  # idle: its consumer goes after inactive_threshold
                    return
            elif pending is not None and pending.isascii() and pending.isdigit() and len(pending) < 19:
                returned = min(lane.credit, int(pending))
                lane.credit -= returned
                self.credit -= returned
            else:
                self.credit -= lane.credit
                lane.credit = 0
            if status == "409" and "Deleted" in headers.get("Description", ""):
                self._forget(lane)
            else:
                lane.pending = (
                    0  # the request ended short: the server had no more (a standing request follows)
                )
                self._settle(lane)
        elif status == "503":  # the consumer is gone: discovery creates it again
            self._forget(lane)
        else:
            log.warning("unexpected message on a pull inbox: status=%r", status)
            return
        if self.fetching:
            self._schedule_pull()

    def _forget(self, lane: Lane) -> None:
        """Drop ``lane`` (its requests are done or void); its messages ahead still run."""
        lane.gone = True
        self.credit -= lane.credit
        lane.credit = 0
        if lane.standing:
            lane.standing = False
            self._standing_n -= 1
        self._unwant(lane)
        if not lane.held and not lane.ahead:
            self._lanes.pop(lane.subject, None)
            self._alone = len(self._lanes) == 1
            self._by_token.pop(lane.inbox.rsplit(".", 1)[1], None)

    async def _watch(self) -> None:
        """Reset credit when the server went silent for three heartbeats (lost requests), or a
        lane's alone when its requests went silent while others' deliveries go on."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            silent_s = time.monotonic() - self._last_seen
            if (self.credit > 0 or self._standing_n > 0) and silent_s > 3 * self._heartbeat_s:
                log.warning("no heartbeat for %.1fs: re-issuing pull requests", silent_s)
                self.reset_credit()
            elif lost := silent_lanes(self._lanes.values()):
                log.warning("no word on %d tenants' pull requests for 3 heartbeats: asking again", len(lost))
                self.reset_credit(lost)
            elif self.fetching:
                self._schedule_pull()
