"""The workload of ``agentbus demo``: what is published, what each task should become, and the tally.

Every planned task carries its expected fate: ``completed``, ``retried`` (completed
on a later attempt) or a :class:`~bus.messages.DlqReason`. The :class:`Tally`
follows results and dead letters as they arrive on core NATS (for the progress
bar); the final count of dead letters is read back from the ``DLQ`` stream.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from agentbus.errors import BusError, PublishError
from bus.messages import HDR_MSG_ID, DeadLetter, DlqReason, Result
from bus.publisher import Publisher, TaskRef, map_publish_error
from bus.subjects import task_subject
from bus.topology import DLQ_STREAM

__all__ = [
    "COMPLETED",
    "RETRIED",
    "TENANTS",
    "Planned",
    "Tally",
    "by_expectation",
    "expected_counts",
    "percentile",
    "plan",
    "publish",
    "read_dead_letters",
]

COMPLETED = "completed"
RETRIED = "retried"
"""Completed, but only on a later attempt (``echo`` with ``fail="once"``)."""

TENANTS = ("acme", "globex", "initech")
UNKNOWN_KIND = "translate"  # no agent serves it: the unrouted sweeper dead-letters it
OVERSIZED_BYTES = 300 * 1024  # > the agents' 256 KiB max_payload_bytes, < the stream's 1 MiB

_SENTENCES = (
    "The quarterly report shows revenue growth in every region.",
    "Customers asked for faster delivery and clearer invoices.",
    "Inventory of the main product line stayed above the safety stock.",
    "Support tickets fell after the new onboarding guide shipped.",
    "The team plans to automate order intake with task agents.",
    "Latency of the order pipeline dropped below one second.",
    "Three tenants share the cluster without seeing each other's data.",
)


@dataclass(frozen=True, slots=True)
class Planned:
    """One task of the workload and the fate it should meet."""

    task_id: str
    tenant: str
    kind: str
    expect: str
    """``completed``, ``retried`` or a DlqReason value."""
    payload: Any = None
    raw: bytes | None = None
    """Published as is (not a task envelope) when set."""


def plan(total: int, *, seed: int) -> list[Planned]:
    """``total`` tasks over three tenants: mostly good work, a few of every kind of trouble, shuffled."""
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    out: list[Planned] = []

    def add(kind: str, expect: str, payload: Any = None, raw: bytes | None = None) -> None:
        tenant = TENANTS[len(out) % len(TENANTS)]
        out.append(Planned(f"demo-{run}-{len(out):06d}", tenant, kind, expect, payload, raw))

    trouble = {
        RETRIED: max(3, total // 30),
        DlqReason.MAX_DELIVERIES: max(3, total // 100),
        DlqReason.INVALID_PAYLOAD: max(3, total // 300),
        DlqReason.REJECTED: max(3, total // 300),
        DlqReason.MALFORMED: 3,
        DlqReason.UNKNOWN_KIND: 3,
        DlqReason.OVERSIZED: 3,
    }
    if sum(trouble.values()) * 2 > total:
        raise ValueError(f"--tasks must be at least {sum(trouble.values()) * 2}")
    for _ in range(trouble[RETRIED]):
        add("echo", RETRIED, {"text": "flaky downstream", "fail": "once"})
    for _ in range(trouble[DlqReason.MAX_DELIVERIES]):
        add("echo", DlqReason.MAX_DELIVERIES, {"text": "poison", "fail": "always"})
    for _ in range(trouble[DlqReason.INVALID_PAYLOAD]):
        add("summarize", DlqReason.INVALID_PAYLOAD, {"body": "no text field", "max_words": "many"})
    for _ in range(trouble[DlqReason.REJECTED]):
        add("order", DlqReason.REJECTED, {"request": "please send whatever is cheapest"})
    for _ in range(trouble[DlqReason.MALFORMED]):
        add("echo", DlqReason.MALFORMED, raw=b"\x00\xffthis is not a task envelope{")
    for _ in range(trouble[DlqReason.UNKNOWN_KIND]):
        add(UNKNOWN_KIND, DlqReason.UNKNOWN_KIND, {"text": "bonjour", "to": "en"})
    for _ in range(trouble[DlqReason.OVERSIZED]):
        add("echo", DlqReason.OVERSIZED, {"text": "x" * OVERSIZED_BYTES})
    while len(out) < total:
        roll = rng.random()
        if roll < 0.4:
            add("echo", COMPLETED, {"text": f"hello {len(out)}", "sleep_s": rng.choice((0, 0, 0.005, 0.02))})
        elif roll < 0.7:
            text = " ".join(rng.sample(_SENTENCES, rng.randint(2, 5)))
            add("summarize", COMPLETED, {"text": text, "max_words": rng.randint(5, 12)})
        else:
            sku = rng.choices(("PROD-001", "PROD-002", "PROD-003"), (10, 10, 1))[0]
            request = f"customer U{rng.randint(100, 999)} buys {rng.randint(1, 20)} of {sku}"
            add("order", COMPLETED, {"request": request})
    rng.shuffle(out)
    return out


_result_decoder = msgspec.json.Decoder(Result[Any])
_letter_decoder = msgspec.json.Decoder(DeadLetter)


@dataclass
class Tally:
    """What has been published and what has come back, by task id."""

    published: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    """Task id -> publish error."""
    completed: dict[str, Result[Any]] = field(default_factory=dict)
    """The first ok result of each task."""
    dead_seen: set[str] = field(default_factory=set)
    """Dead letters seen live on ``dlq.>`` (the summary reads the stream instead)."""
    publishing_done: bool = False
    last_completion: float = 0.0
    """Event-loop time of the last new completion."""
    last_outcome: float = 0.0
    """Event-loop time of the last new completion or dead letter."""

    def finished(self) -> int:
        """Published tasks that completed or were dead-lettered."""
        return len(self.published & (self.completed.keys() | self.dead_seen))

    def missing(self) -> set[str]:
        """Published tasks with no outcome yet."""
        return self.published - self.completed.keys() - self.dead_seen

    def all_done(self) -> bool:
        """Publishing is over and every published task has an outcome."""
        return self.publishing_done and not self.missing()

    async def on_result(self, msg: Msg) -> None:
        """Core-NATS callback of ``results.>``."""
        if msg.subject.count(".") != 2:  # results.<tenant>.<id>.stream: partial output
            return
        try:
            result = _result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        if result.ok and result.task_id not in self.completed:
            self.completed[result.task_id] = result
            self.last_completion = self.last_outcome = asyncio.get_running_loop().time()

    async def on_dead_letter(self, msg: Msg) -> None:
        """Core-NATS callback of ``dlq.>``."""
        try:
            task_id = _letter_decoder.decode(msg.data).task_id
        except msgspec.DecodeError:
            return
        if task_id not in self.dead_seen:
            self.dead_seen.add(task_id)
            self.last_outcome = asyncio.get_running_loop().time()


async def publish(nc: Client, tasks: list[Planned], tally: Tally) -> None:
    """Publish every task through the ack window; record ids as JetStream stores them."""
    pub = Publisher(nc)
    js = nc.jetstream()
    pending: list[asyncio.Future[TaskRef]] = []

    def stored(fut: asyncio.Future[TaskRef], task_id: str) -> None:
        if fut.cancelled():  # the demo gave up waiting: neither stored nor refused
            return
        if (exc := fut.exception()) is not None:
            tally.refused[task_id] = str(exc)
        else:
            tally.published.add(task_id)

    for t in tasks:
        if t.raw is not None:
            await _publish_raw(js, t, tally)
            continue
        try:
            fut = await pub.submit_nowait(t.tenant, t.kind, t.payload, task_id=t.task_id)
        except PublishError as exc:
            tally.refused[t.task_id] = str(exc)
            continue
        fut.add_done_callback(functools.partial(stored, task_id=t.task_id))
        pending.append(fut)
    await asyncio.gather(*pending, return_exceptions=True)
    tally.publishing_done = True


async def _publish_raw(js: JetStreamContext, t: Planned, tally: Tally) -> None:
    """Bytes that are no task envelope, with a ``Nats-Msg-Id`` so the dead letter names them."""
    assert t.raw is not None
    subject = task_subject(t.tenant, t.kind)
    try:
        await js.publish(subject, t.raw, headers={HDR_MSG_ID: t.task_id})
    except Exception as exc:
        tally.refused[t.task_id] = str(map_publish_error(exc, t.task_id, subject))
    else:
        tally.published.add(t.task_id)


async def read_dead_letters(js: JetStreamContext, *, timeout_s: float = 10.0) -> dict[str, DlqReason]:
    """Every dead letter in the ``DLQ`` stream: task id -> reason (read to the last sequence)."""
    info = await js.stream_info(DLQ_STREAM)
    last = info.state.last_seq or 0
    out: dict[str, DlqReason] = {}
    if not info.state.messages:
        return out
    sub = await js.subscribe("dlq.>", stream=DLQ_STREAM, ordered_consumer=True)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                try:
                    letter = _letter_decoder.decode(msg.data)
                except msgspec.DecodeError:
                    pass  # not ours to judge: the summary counts only what it can read
                else:
                    out[letter.task_id] = letter.reason
                if msg.metadata.sequence.stream >= last:
                    return out
    except TimeoutError:
        raise BusError(f"read {len(out)} dead letters of {info.state.messages} in {timeout_s:g} s") from None
    finally:
        await sub.unsubscribe()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def expected_counts(tasks: list[Planned]) -> Counter[str]:
    """How many tasks should meet each fate (``completed`` includes ``retried``)."""
    counts: Counter[str] = Counter(t.expect for t in tasks)
    counts[COMPLETED] += counts[RETRIED]
    return counts


def by_expectation(tasks: list[Planned], ids: set[str]) -> dict[str, list[str]]:
    """``ids`` grouped by ``<kind>/<expected fate>`` (to explain what is missing)."""
    index = {t.task_id: t for t in tasks}
    out: dict[str, list[str]] = defaultdict(list)
    for tid in sorted(ids):
        t = index.get(tid)
        out[f"{t.kind}/{t.expect}" if t else "?"].append(tid)
    return dict(out)
