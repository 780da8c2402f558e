"""Admission: everything a task brings from the wire is checked before its handler runs.

A delivery becomes a :class:`Slot` (what the runner keeps while the task is processed);
:meth:`Admission.admit` checks it against the rules of :mod:`bus.admission` (docs/wire.md,
"Validation rules"), cheapest first, and decodes the envelope into the slot, or returns the
:class:`Refusal` its dead letter carries. Nothing here runs the handler, and nothing after
it can fail on a task that was admitted: the result and reply subjects are valid.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any, NamedTuple

import msgspec
from nats.aio.msg import Msg

from agents.api import AgentSpec
from agents.metrics import KindStats
from bus.admission import (
    EPOCH_MAX_S,
    MAX_MSG_ID_CHARS,
    MAX_NESTING,
    msg_id_problem,
    reply_problem,
    task_id_of,
    time_problem,
    too_deep,
)
from bus.consumer import delivery_count
from bus.messages import HDR_MSG_ID, HDR_REPLY, HDR_UNREADABLE, DlqReason, Task, decoder_for, msg_id, now
from bus.subjects import INVALID_TOKEN, is_task_id, shown, subject_problem

__all__ = ["Admission", "Refusal", "Slot"]

_MAX_TENANTS = 4096  # tenants whose Nats-Msg-Id prefix is kept (all of them are forgotten beyond)
_BRACE, _BRACKET = ord("{"), ord("[")  # int needles: ``in`` is a memchr (a 1-byte bytes one is not)


class Slot:
    """A message being processed: what its fate needs once the handler is done, and (while a
    Task runs it) what heartbeats, timeouts and the drain need."""

    __slots__ = (
        "attempt",
        "context",
        "deadline",
        "envelope",
        "in_handler",
        "kind",
        "msg",
        "released",
        "started",
        "task",
        "tenant",
        "timed_out",
        "timeout_s",
        "timer",
    )

    def __init__(self, msg: Msg, tenant: str, kind: str, context: contextvars.Context) -> None:
        self.msg = msg
        self.tenant = tenant
        self.kind = kind
        self.context = context
        self.started = time.monotonic()
        self.attempt = 1
        self.envelope: Task[Any] | None = None
        """The decoded task, once admitted."""
        self.task: asyncio.Task[Any] | None = None
        """The Task running the handler (or, after it, the fate; or, traced, both)."""
        self.timer: asyncio.TimerHandle | None = None
        """Own timeout timer, only for an attempt cut short by the task's deadline."""
        self.deadline = 0.0
        """Loop time the attempt expires at, when the runner's shared timer watches it (else 0)."""
        self.timeout_s = 0.0
        self.in_handler = False
        self.timed_out = False
        self.released = False
        """The slot was already freed by ``PullConsumer.ack_next`` (success path)."""

    def expire(self) -> None:
        """The attempt ran out of time: cancel it and remember why."""
        self.timed_out = True
        if self.task is not None:
            self.task.cancel()


class Refusal(NamedTuple):
    """Why a task is dead-lettered without running."""

    reason: DlqReason
    task_id: str
    detail: str


class Admission:
    """The checks of one agent kind, built once per runner."""

    def __init__(
        self,
        spec: AgentSpec[Any, Any],
        *,
        stats: KindStats,
        max_deliver: int,
        tenants: frozenset[str] | None,
        reply_prefixes: tuple[str, ...],
    ) -> None:
        self._kind = spec.kind
        self._stats = stats
        self._max_deliver = max_deliver
        self._max_payload_bytes = spec.max_payload_bytes
        self._tenants = tenants
        self._reply_prefixes = reply_prefixes
        self._decoder = decoder_for(spec.input)
        self._timeout_s = spec.timeout_s
        self._id_prefixes: dict[str, str] = {}

    def admit(self, slot: Slot) -> Refusal | None:
        """Check the task against :mod:`bus.admission` and decode it into ``slot``, or say why it is
        dead-lettered without running. Cheapest checks first; nothing here runs the handler."""
        msg, tenant, kind = slot.msg, slot.tenant, slot.kind
        slot.attempt = attempt = delivery_count(msg)
        if attempt > 1:
            self._stats.redelivered += 1
        if tenant == INVALID_TOKEN or kind == INVALID_TOKEN:
            detail = subject_problem(msg.subject)
            return Refusal(DlqReason.INVALID_SUBJECT, _header_id(msg, tenant, kind), detail)
        if attempt > self._max_deliver:  # the worker is the judge: the consumer delivers forever
            slot.attempt = attempt - 1  # the deliveries that ran
            detail = (
                f"delivery {attempt} of at most {self._max_deliver}: the last one died with its "
                "worker (or its fate could not be stored)"
            )
            return Refusal(DlqReason.MAX_DELIVERIES, _header_id(msg, tenant, kind), detail)
        data = msg.data
        if len(data) > self._max_payload_bytes:
            detail = f"{len(data)} bytes > max_payload_bytes {self._max_payload_bytes}"
            return Refusal(DlqReason.OVERSIZED, _header_id(msg, tenant, kind), detail)
        if self._tenants is not None and tenant not in self._tenants:
            detail = f"tenant {tenant!r} is not served here"
            return Refusal(DlqReason.UNKNOWN_TENANT, _header_id(msg, tenant, kind), detail)
        if headers := msg.headers:
            if HDR_UNREADABLE in headers:
                detail = "the header block is not readable NATS headers"
                return Refusal(DlqReason.INVALID_ENVELOPE, "", detail)
            value = headers.get(HDR_MSG_ID)
            problem = ""
            if value is not None and not (  # the publisher's scoped form is the common case
                value.startswith(self._id_prefixes.get(tenant) or self._msg_id_prefix(tenant))
                and len(value) <= MAX_MSG_ID_CHARS
                and value.isprintable()
            ):
                problem = msg_id_problem(value, tenant, kind)
            if not problem and (reply := headers.get(HDR_REPLY)):
                problem = reply_problem(reply, self._reply_prefixes, tenant)
            if problem:
                return Refusal(DlqReason.INVALID_ENVELOPE, _header_id(msg, tenant, kind), problem)
        if (  # inline, no call: a normal task pays one byte count, and a memchr if it has no "["
            len(data) > 2 * MAX_NESTING + 1
            and data.count(_BRACE) + (data.count(_BRACKET) if _BRACKET in data else 0) > MAX_NESTING
            and too_deep(data)
        ):
            detail = f"JSON nests deeper than {MAX_NESTING} levels"
            return Refusal(DlqReason.MALFORMED, _header_id(msg, tenant, kind), detail)
        try:
            task: Task[Any] = self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            reason = DlqReason.INVALID_PAYLOAD if "$.payload" in str(exc) else DlqReason.INVALID_ENVELOPE
            return Refusal(reason, _header_id(msg, tenant, kind), str(exc))
        except Exception as exc:  # DecodeError, RecursionError, anything: never a retry
            detail = str(exc) if isinstance(exc, msgspec.DecodeError) else f"{type(exc).__name__}: {exc}"
            return Refusal(DlqReason.MALFORMED, _header_id(msg, tenant, kind), detail)
        tid = task.id
        if not (len(tid) <= 128 and tid.isalnum() and tid.isascii()) and not is_task_id(tid):
            detail = f"id {shown(task.id)} is not 1-128 of [A-Za-z0-9_-]"
            return Refusal(DlqReason.INVALID_ENVELOPE, _header_id(msg, tenant, kind), detail)
        if (task.tenant is not None and task.tenant != tenant) or (
            task.kind is not None and task.kind != kind
        ):
            said = f"{shown(task.tenant or '')}/{shown(task.kind or '')}"
            detail = f"envelope says {said}, subject says {tenant}/{kind}"
            return Refusal(DlqReason.INVALID_ENVELOPE, task.id, detail)
        if not 0.0 <= task.created_at <= EPOCH_MAX_S:  # False for NaN too
            return Refusal(DlqReason.INVALID_ENVELOPE, task.id, time_problem("created_at", task.created_at))
        slot.timeout_s = self._timeout_s
        if task.deadline is not None:
            if not 0.0 <= task.deadline <= EPOCH_MAX_S:
                return Refusal(DlqReason.INVALID_ENVELOPE, task.id, time_problem("deadline", task.deadline))
            left = task.deadline - now()
            if left <= 0:
                detail = f"deadline passed {-left:.3f}s before attempt {attempt}"
                return Refusal(DlqReason.DEADLINE_EXCEEDED, task.id, detail)
            slot.timeout_s = min(slot.timeout_s, left)
        slot.envelope = task
        return None

    def _msg_id_prefix(self, tenant: str) -> str:
        """``<tenant>:<kind>:``, the start of this tenant's ``Nats-Msg-Id`` (kept per tenant)."""
        prefix = self._id_prefixes.get(tenant)
        if prefix is None:
            if len(self._id_prefixes) >= _MAX_TENANTS:
                self._id_prefixes.clear()
            prefix = self._id_prefixes[tenant] = msg_id(tenant, self._kind, "")
        return prefix


def _header_id(msg: Msg, tenant: str, kind: str) -> str:
    """The task id the ``Nats-Msg-Id`` names ("" if none or refused): for a task not decoded."""
    return task_id_of(msg.headers.get(HDR_MSG_ID) if msg.headers else None, tenant, kind)
