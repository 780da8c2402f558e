"""A credit-based pull consumer: the worker only ever asks for messages it has room for.

This is the backpressure of agentbus. The consumer keeps ``credit``, the number of
messages requested from JetStream and not yet delivered or expired, ``held``, the
messages handed to the worker and not yet released, and up to ``prefetch`` messages
delivered ahead, waiting in order for a slot. It maintains::

    held <= slots
    held + prefetched + credit <= slots + prefetch

and asks for more (one pull request for the free amount) only when at least
``threshold`` places are free, or when no request is outstanding at all (credit 0:
the queue had more than was asked for) and any place is free, so a deep queue keeps
every slot busy while an idle one is not pestered with small requests. A worker
with 8 slots and no prefetch therefore never holds more than 8 unacked messages,
however deep the queue (FastStream #2563 is what happens without this).

Prefetch hides the refill: a pull request takes a flush, the server and a read
(milliseconds on a busy worker) to come back, and without messages in hand a freed
slot stays empty all that time; with them the next task starts as the previous one
ends. It is bounded (the worker's default, ``WorkerConfig.prefetch_for``, is
``slots // 8`` up to 256 from 64 slots on, none below; Celery's is four times the
slots). What it costs is a short wait for the prefetched messages: their ack-wait
clock runs (heartbeats cover them), and on a drain they are handed back.

Pull requests carry an expiry and an idle heartbeat. Credit is returned by the
server's 408/409 status replies (header ``Nats-Pending-Messages``), reset after a
reconnect (the server forgets a disconnected client's pull requests: the trap of
nats.py #504), and reset when heartbeats stop arriving, so the loop can never
wedge waiting on a request the server no longer has. A drain withdraws the
outstanding requests (see :meth:`PullConsumer.stop_fetching`).

Messages are delivered to the ``on_message`` callback, synchronously, in order;
the worker calls :meth:`release` (or :meth:`ack_next`) once per message when it has
acked, nakked or terminated it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus._client import check_names, publish_now, route, unsubscribe, withdraw

__all__ = ["AckKind", "PullConsumer", "TaskConsumer", "ack", "delivery_count", "delivery_id", "stream_seq"]

log = logging.getLogger("agentbus.bus")

_STATUS = "Status"
_PENDING_MSGS = "Nats-Pending-Messages"


class AckKind:
    """The JetStream acknowledgement payloads."""

    ACK = b"+ACK"
    IN_PROGRESS = b"+WPI"
    TERM = b"+TERM"

    @staticmethod
    def nak(delay_s: float) -> bytes:
        """``-NAK`` with a redelivery delay (exact only on a consumer without BackOff: see ConsumerSpec)."""
        if delay_s <= 0:
            return b"-NAK"
        return b'-NAK {"delay": %d}' % int(delay_s * 1e9)


async def ack(nc: Client, msg: Msg, kind: bytes) -> None:
    """Send an acknowledgement of ``kind`` for ``msg`` (fire and forget, like ``msg.ack()``)."""
    if not publish_now(nc, msg.reply, kind):  # inline, not through publish(): one coroutine less per ack
        check_names(msg.reply)
        await nc.publish(msg.reply, kind)


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered this message (1 on the first delivery)."""
    tokens = msg.reply.split(".")
    # v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    # v2: $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>... (11 or 12 tokens)
    return int(tokens[4] if len(tokens) == 9 else tokens[6])


def delivery_id(ack_subject: str) -> str:
    """One delivery among all of a message's: ``<consumer>:<consumer sequence>`` from its ack
    subject ("" if it is not one). A redelivery after a consumer leader change may repeat the
    delivery count, never this."""
    tokens = ack_subject.split(".")
    if len(tokens) == 9:
        return f"{tokens[3]}:{tokens[6]}"
    return f"{tokens[5]}:{tokens[8]}" if len(tokens) >= 11 else ""


def stream_seq(msg: Msg) -> int:
    """The message's sequence in the stream."""
    tokens = msg.reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


class TaskConsumer(Protocol):
    """What a worker's kind runner needs of a consumption strategy (:class:`PullConsumer`,
    :class:`bus.fair.FairConsumer`): messages in ``on_message``, one release per message."""

    held: int
    fetching: bool

    @property
    def prefetched(self) -> int: ...

    async def start(self) -> None: ...

    def release(self, msg: Msg | None) -> None: ...

    async def ack_next(self, msg: Msg) -> None: ...

    def ack_next_now(self, msg: Msg) -> bool: ...

    def waiting_since(self, before: float) -> Iterator[Msg]: ...

    async def stop_fetching(self) -> None: ...

    def reset_credit(self) -> None: ...

    async def close(self) -> None: ...


class PullConsumer:
    """Pulls from one durable consumer into at most ``slots`` concurrently held messages."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        slots: int,
        on_message: Callable[[Msg], None],
        expires_s: float = 30.0,
        heartbeat_s: float = 5.0,
        max_batch: int = 256,
        prefetch: int = 0,
    ) -> None:
        if slots < 1 or prefetch < 0:
            raise ValueError("slots must be >= 1 and prefetch >= 0")
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.slots = slots
        self._on_message = on_message
        self._expires_ns = int(expires_s * 1e9)
        self._heartbeat_ns = int(heartbeat_s * 1e9)
        self._heartbeat_s = heartbeat_s
        self._places = places = slots + prefetch
        self._threshold = max(1, min(places // 2, max_batch))
        self._busy_threshold = max(1, min(self._threshold, places // 32))
        self._busy_credit = places // 4
        self._max_batch = max_batch
        self.held = 0
        self.credit = 0
        self._ahead: deque[tuple[float, Msg]] = deque()  # prefetched: (arrival, message)
        self._handing = False  # a hand-over of prefetched messages is scheduled
        self.fetching = False
        self._inbox = ""
        self._sub: Subscription | None = None
        self._last_seen = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._pull_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe the delivery inbox and start pulling."""
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_inbox, pending_msgs_limit=-1)
        route(self._nc, self._sub, self._on_inbox_now)  # no request is out yet: nothing queued
        self.fetching = True
        self._watchdog = asyncio.create_task(self._watch(), name="agentbus-pull-watchdog")
        await self._pull()

    @property
    def prefetched(self) -> int:
        """Messages delivered ahead, waiting for a slot."""
        return len(self._ahead)

    def waiting_since(self, before: float) -> Iterator[Msg]:
        """The prefetched messages that arrived before ``before`` (monotonic), for heartbeats."""
        return (msg for arrived, msg in self._ahead if arrived < before)

    def release(self, msg: Msg | None = None) -> None:
        """The worker finished with a message: its slot is free again."""
        self.held -= 1
        if self._ahead:
            self._hand_over_soon()
        if self.fetching and self._wants(self._free()):
            self._schedule_pull()

    def _free(self) -> int:
        return self._places - self.held - len(self._ahead) - self.credit

    def _hand_over_soon(self) -> None:
        """Start prefetched messages in freed slots at the loop's next turn.

        Not inline: ``release`` and ``ack_next`` run inside the finishing task, and a
        handler's first step must not run inside another task.
        """
        if not self._handing:
            self._handing = True
            asyncio.get_running_loop().call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._handing = False
        self._start_ahead(self.slots)

    def _start_ahead(self, up_to: int) -> None:
        """Hand prefetched messages to ``on_message``, in order, while fewer than ``up_to`` are held."""
        ahead = self._ahead
        while ahead and self.held < up_to:
            self.held += 1
            self._on_message(ahead.popleft()[1])

    async def ack_next(self, msg: Msg) -> None:
        """Ack ``msg``, free its slot and, if more are wanted, ask for them in the same message.

        ``+NXT <pull request>`` makes the server apply the ack before it serves the new
        request. A separate ``+ACK`` and pull request are applied on two server queues, so
        a pull could be served while acks sent before it were still queued, and the
        consumer's ``num_ack_pending`` would read above ``slots`` for an instant.
        """
        self.held -= 1
        if self._ahead:
            self._hand_over_soon()
        free = self._free()
        if self.fetching and self._sub is not None and self._wants(free):
            batch = min(free, self._max_batch)
            self.credit += batch
            request = b"+NXT " + self._request(batch)
            try:
                if not publish_now(self._nc, msg.reply, request, self._inbox):
                    check_names(msg.reply, self._inbox)
                    await self._nc.publish(msg.reply, request, reply=self._inbox)
            except Exception:
                self.credit -= batch
                raise
            return
        await ack(self._nc, msg, AckKind.ACK)

    def ack_next_now(self, msg: Msg) -> bool:
        """:meth:`ack_next` done synchronously when the fast path can queue its message
        (:func:`~bus._client.publish_now`); False, and nothing done, when it cannot."""
        free = self._free() + 1  # with msg's slot freed, as ack_next counts it
        if self.fetching and self._sub is not None and self._wants(free):
            batch = min(free, self._max_batch)
            if not publish_now(self._nc, msg.reply, b"+NXT " + self._request(batch), self._inbox):
                return False
            self.credit += batch
        elif not publish_now(self._nc, msg.reply, AckKind.ACK):
            return False
        self.held -= 1
        if self._ahead:
            self._hand_over_soon()
        return True

    def _request(self, batch: int) -> bytes:
        return b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
            batch,
            self._expires_ns,
            self._heartbeat_ns,
        )

    def _wants(self, free: int) -> bool:
        """Whether ``free`` slots are worth a pull request now."""
        if free >= self._threshold or (free > 0 and self.credit == 0):
            return True
        return free >= self._busy_threshold and self.credit <= self._busy_credit

    async def stop_fetching(self) -> None:
        """Ask for nothing more (drain) and withdraw the pull requests the server still holds.

        The server serves a pull request only while its reply inbox has interest, so
        unsubscribing the inbox withdraws them. Without that it keeps delivering to a
        draining worker, which hands each task back to be delivered to it again: every
        bounce burns a delivery, and a lone draining worker dead-letters the tasks
        published during its drain as ``max_deliveries``. ``drain`` flushes the
        unsubscribe, so whatever the server sent before it still reaches ``on_message``.
        """
        self.fetching = False
        sub, self._sub = self._sub, None
        if sub is not None:
            await withdraw(self._nc, sub)
        self._start_ahead(self.held + len(self._ahead))  # all of them, slots or not

    def reset_credit(self) -> None:
        """Forget outstanding pull requests (after a reconnect) and ask again."""
        self.credit = 0
        self._last_seen = time.monotonic()
        if self.fetching:
            self._schedule_pull()

    async def close(self) -> None:
        """Stop pulling and unsubscribe; undelivered requested messages return after ack_wait."""
        self.fetching = False
        self._ahead.clear()  # redelivered after ack_wait, like requested ones never delivered
        for task in (self._watchdog, self._pull_task):
            if task is not None:
                task.cancel()
        if self._sub is not None:
            await unsubscribe(self._nc, self._sub)
            self._sub = None

    def _schedule_pull(self) -> None:
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = asyncio.get_running_loop().create_task(self._pull())

    async def _pull(self) -> None:
        while self.fetching and self._nc.is_connected:
            free = self._free()
            if not self._wants(free):
                return
            batch = min(free, self._max_batch)
            self.credit += batch
            try:
                await self._nc.publish(self._next_subject, self._request(batch), reply=self._inbox)
            except Exception as exc:
                self.credit -= batch
                log.warning("pull request failed: %s", exc)
                return

    async def _on_inbox(self, msg: Msg) -> None:  # without the fast path (bus._client)
        self._on_inbox_now(msg)

    def _on_inbox_now(self, msg: Msg) -> None:
        """A delivery, a heartbeat or a pull status (routed here straight from the read loop)."""
        self._last_seen = time.monotonic()
        if msg.reply:
            self.credit = max(0, self.credit - 1)
            if self.held < self.slots and not self._ahead:
                self.held += 1
                self._on_message(msg)
            else:
                self._ahead.append((self._last_seen, msg))
            return
        headers = msg.headers or {}
        status = headers.get(_STATUS, "")
        if status == "100":  # idle heartbeat: the request is alive
            return
        if status in ("408", "409", "404"):
            pending = headers.get(_PENDING_MSGS)
            if pending is not None:
                self.credit = max(0, self.credit - int(pending))
            elif status == "409":
                log.warning("pull request refused: %s", headers.get("Description", ""))
                self.credit = 0
            if self.fetching:
                self._schedule_pull()
            return
        log.warning("unexpected message on pull inbox: status=%r %r", status, _short(msg.data))

    async def _watch(self) -> None:
        """Reset credit when the server went silent for three heartbeats (lost requests)."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            silent_s = time.monotonic() - self._last_seen
            if self.credit > 0 and silent_s > 3 * self._heartbeat_s:
                log.warning("no heartbeat for %.1fs: re-issuing pull requests", silent_s)
                self.reset_credit()
            elif self.fetching and self.credit == 0 and self._free() > 0:
                self._schedule_pull()


def _short(data: bytes) -> str:
    try:
        return json.dumps(data[:120].decode("utf-8", "replace"))
    except Exception:
        return repr(data[:120])
