"""One agent kind inside a worker: decode, run the handler in the tenant scope, decide the fate.

Fates (docs/architecture.md, "The flow of one task"):

* success: result to ``results.<tenant>.<task_id>`` (when the agent declares an
  output) and to the publisher's inbox when it waits, then ``+ACK``;
* retryable error (any exception, a timeout, :class:`~agentbus.errors.Retry`):
  ``-NAK`` with a jittered exponential delay, computed here because the server
  ignores the consumer's BackOff for naks;
* invalid input, unknown tenant, expired deadline, :class:`~agentbus.errors.Reject`,
  or the last allowed delivery failing: dead letter (stored first), then ``+TERM``;
* a delivery past ``max_deliver`` (the last one died with its worker): dead letter
  ``max_deliveries`` without decoding or running anything. The worker is the only judge
  of a task's deliveries (the consumer's server-side ``max_deliver`` is unlimited), so no
  advisory anyone can publish moves a task, and a dead letter that cannot be stored
  leaves the task to be tried again later.

Admission (:class:`agents._admission.Admission`) checks every rule of :mod:`bus.admission` before
the handler runs; after it, nothing can fail on the input (the result and reply subjects
are valid). Ids, tenants and subjects from the wire are logged escaped (``%r``).

A message's handler is started eagerly (see ``_eager``), so a handler that never
suspends costs no Task; its fate is then decided by a coroutine started the same way.
A suspended handler's Task is tracked for ``+WPI`` heartbeats, timeouts and the drain,
and its done callback starts the fate: no coroutine of ours waits through a handler
(with tracing on, one does, inside the task's ``receive`` span). Attempts on the agent's own
``timeout_s`` start in order, so their deadlines are in the order of ``slots`` and
one timer, armed for the oldest, serves them all (a timer per task cost more
memory than the rest of its slot); only attempts cut short by a task deadline
get a timer of their own.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import CoroutineType
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError

from agentbus.backoff import Backoff
from agentbus.errors import BusError, RecordNotFoundError, Reject, Retry
from agentbus.logs import task_fields
from agents._admission import Admission, Refusal, Slot
from agents._eager import start_eager, step_eager
from agents.api import AgentSpec, Context, Records, Stores
from agents.metrics import KindStats, Outcome
from agents.tenancy import _tenant
from bus import _client, tracing
from bus.admission import DEFAULT_REPLY_PREFIXES, reply_problem
from bus.consumer import AckKind, TaskConsumer, ack, stream_seq
from bus.dlq import DeadLetterQueue
from bus.messages import (
    DLQ_MAX_DATA_BYTES,
    HDR_REPLY,
    AuditRecord,
    DeadLetter,
    DlqReason,
    Result,
    Task,
    encode,
    now,
)
from bus.publisher import Publisher
from bus.records import audit_subject, fetch_result
from bus.subjects import INVALID_TOKEN, is_task_id, result_subject, split_task_subject

__all__ = ["KindRunner"]

log = logging.getLogger("agentbus.worker")

_CALLBACKS = contextvars.Context()  # where done callbacks run: no copy of a context per task
_MAX_SCOPES = 4096  # tenants whose context is kept (all of them are forgotten beyond)
_TIMER_SLACK_S = 0.001  # uvloop timers tick in milliseconds and may fire just short of the deadline


class KindRunner:
    """Consumes one kind's durable consumer with at most ``max_inflight`` tasks at once."""

    stores: Stores | None = None  # the worker installs its shared state (Context.state)
    records: Records | None = None  # and its effects ledger and KV (Context.once, Context.kv)
    audit_tasks: bool = False  # a minimal audit record per attempt (AGENTBUS_AUDIT_TASKS, opt-in)

    def __init__(
        self,
        spec: AgentSpec[Any, Any],
        *,
        nc: Client,
        publisher: Publisher,
        dlq: DeadLetterQueue,
        stats: KindStats,
        worker: str,
        max_deliver: int,
        retry: Backoff,
        tenants: frozenset[str] | None,
        consumer: Callable[[Callable[[Msg], None]], TaskConsumer],
        reply_prefixes: tuple[str, ...] = DEFAULT_REPLY_PREFIXES,
    ) -> None:
        self.spec = spec
        self.kind = spec.kind
        self._nc = nc
        self._dlq = dlq
        self.stats = stats
        self._worker = worker
        self._max_deliver = max_deliver
        self._retry = retry
        self._reply_prefixes = reply_prefixes
        self._admit = Admission(
            spec, stats=stats, max_deliver=max_deliver, tenants=tenants, reply_prefixes=reply_prefixes
        ).admit
        self._handler = spec.handler
        self._timeout_s = spec.timeout_s
        self._publish_results = spec.output is not None
        self._log = logging.LoggerAdapter(log, {"kind": spec.kind})
        self._agent_log = logging.getLogger(f"agentbus.agents.{spec.kind}")  # ctx.log's
        self.slots: dict[asyncio.Task[None], Slot] = {}
        self.draining = False
        self._expiry: asyncio.TimerHandle | None = None  # the shared timer, armed for the oldest slot
        self._submit = publisher.submit  # bound once, not per task
        self._emit = functools.partial(_client.publish, nc)
        self._done_cb = self._done
        self._scopes: dict[str, contextvars.Context] = {}
        # tracing is decided once, here: with no tracer provider the hot path is untouched
        self._traced = tracing.enabled()
        self._ack = _traced_ack if self._traced else ack
        self.consumer = consumer(self._on_message)  # the strategy: per kind, or fair between tenants

    # -- delivery ---------------------------------------------------------------------------

    def _on_message(self, msg: Msg) -> None:
        self.stats.fetched += 1
        try:
            tenant, kind = split_task_subject(msg.subject)
            slot = Slot(msg, tenant, kind, self._scope(tenant))
        except Exception:  # a bug here must not kill the loop; the message returns after ack_wait
            self._log.exception("unexpected error processing a message")
            self.consumer.release(msg)
            return
        try:
            if self.draining:
                task = start_eager(self._hand_back(msg), slot.context)
            elif self._traced:
                task = start_eager(self._run_traced(slot), slot.context)
            else:
                task = self._start(slot)
        except Exception:
            self._log.exception("unexpected error processing a message")
            task = None
        self._track(slot, task)

    def _start(self, slot: Slot) -> asyncio.Task[Any] | None:
        """Admit the task and run its handler's first step; the Task running the rest, if any.

        No coroutine of ours waits through the handler: when it suspends, its Task is tracked
        and :meth:`_done` decides the fate once it ends (a waiting frame per task in flight
        cost more memory than the rest of the slot).
        """
        refusal = self._admit(slot)
        if refusal is not None:
            return start_eager(self._refuse(slot, refusal), slot.context)
        assert slot.envelope is not None
        slot.in_handler = True
        try:
            running = self._handler(self._context(slot), slot.envelope.payload)
            if type(running) is not CoroutineType and not isinstance(running, Coroutine):  # another awaitable
                running = _awaited(running)
        except Exception as exc:  # a plain function that failed before returning an awaitable
            running = _raises(exc)
        handled = step_eager(running, slot.context)
        if isinstance(handled, asyncio.Task):
            return handled
        self._handler_ended(slot)
        if handled.error is None and self._acked_now(slot):
            return None
        return start_eager(self._settle(slot, handled.value, handled.error), slot.context)

    def _acked_now(self, slot: Slot) -> bool:
        """The fate of a handler that returned, when nothing is to be sent but the ack: what
        :meth:`_settle` does then, without its coroutines, if the ack can be queued at once
        (``PullConsumer.ack_next_now``); False, and nothing done, otherwise."""
        msg = slot.msg
        if (
            self._traced
            or self._publish_results
            or self.audit_tasks
            or (msg.headers and msg.headers.get(HDR_REPLY))
        ):
            return False
        if not slot.context.run(self.consumer.ack_next_now, msg):
            return False
        slot.released = True
        self.stats.tasks[(slot.tenant, Outcome.OK)] += 1
        return True

    def _track(self, slot: Slot, task: asyncio.Task[Any] | None) -> None:
        """Keep ``slot`` while ``task`` runs; free it if there is nothing left to run."""
        if task is None:  # done without suspending: no Task, no slot to track
            if not slot.released:
                self.consumer.release(slot.msg)
            return
        slot.task = task
        self.slots[task] = slot
        task.add_done_callback(self._done_cb, context=_CALLBACKS)
        if slot.in_handler:  # the handler suspended: from now on it can time out
            self._arm(slot)

    def _scope(self, tenant: str) -> contextvars.Context:
        """A context of its own for one task, in ``tenant``'s scope (:func:`current_tenant`).

        Copied from one kept per tenant, so a task does not pay for setting the variable (a
        context's variables are an immutable map: the copy shares it until the task sets one).
        """
        scope = self._scopes.get(tenant)
        if scope is None:
            if len(self._scopes) >= _MAX_SCOPES:
                self._scopes.clear()
            scope = self._scopes[tenant] = contextvars.copy_context()
            scope.run(_tenant.set, tenant)
        return scope.copy()

    def _arm(self, slot: Slot) -> None:
        loop = asyncio.get_running_loop()
        if slot.timeout_s != self._timeout_s:  # cut short by the task's deadline: out of order
            slot.timer = loop.call_later(slot.timeout_s, slot.expire)
            return
        slot.deadline = loop.time() + slot.timeout_s
        if self._expiry is None:
            self._expiry = loop.call_at(slot.deadline, self._expire_due)

    def _expire_due(self) -> None:
        """The shared timer: expire every overdue attempt, then re-arm for the next deadline."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time() + _TIMER_SLACK_S
        for slot in self.slots.values():  # insertion order is deadline order
            if not (slot.in_handler and slot.deadline):
                continue
            if slot.deadline > now:
                self._expiry = loop.call_at(slot.deadline, self._expire_due)
                return
            slot.expire()

    def _done(self, task: asyncio.Task[Any]) -> None:
        """A Task of a message ended. After the handler's: decide the fate. After the last:
        forget the slot and free it for the next message.

        (A callback, not a wrapping coroutine: no frame waits per message in flight.)
        """
        slot = self.slots.pop(task, None)
        if slot is not None and slot.in_handler and not self._traced:  # the handler's Task
            self._handler_ended(slot)
            error: BaseException | None
            if task.cancelled():
                value, error = None, asyncio.CancelledError()
            elif (failed := task.exception()) is not None:
                value, error = None, failed
            else:
                value, error = task.result(), None
            try:
                if error is None and self._acked_now(slot):
                    after = None
                else:
                    after = start_eager(self._settle(slot, value, error), slot.context)
            except Exception:
                self._log.exception("unexpected error processing a message")
                after = None
            if after is not None:  # the fate suspended (publishing, acking): keep the slot
                self._track(slot, after)
                return
        elif not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("unexpected error processing a message", exc_info=exc)
        if not self.slots and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if slot is None or not slot.released:
            self.consumer.release(slot.msg if slot is not None else None)

    def cancel_handlers(self) -> int:
        """Cancel every task whose handler is still running (end of the drain); returns how many."""
        running = [s for s in self.slots.values() if s.in_handler and s.task is not None]
        for slot in running:
            assert slot.task is not None
            slot.task.cancel()
        return len(running)

    def _context(self, slot: Slot) -> Context:
        task = slot.envelope
        assert task is not None
        return Context(
            tenant=slot.tenant,
            kind=slot.kind,
            task_id=task.id,
            attempt=slot.attempt,
            deadline=task.deadline,
            log=self._agent_log,
            submit=self._submit,
            emit=self._emit,
            stores=self.stores,
            streaming=task.stream,
            headers=slot.msg.headers,
            records=self.records,
            ack_subject=slot.msg.reply,
        )

    def _handler_ended(self, slot: Slot) -> None:
        self.stats.observe(time.monotonic() - slot.started)
        slot.in_handler = False
        if slot.timer is not None:
            slot.timer.cancel()

    async def _run_traced(self, slot: Slot) -> None:
        """Admission, handler and fate in one coroutine, in a ``receive`` span parented on the
        publisher's, so the handler's spans are its children (only when tracing is on)."""
        msg = slot.msg
        attributes = {"messaging.system": "nats", "messaging.destination.name": msg.subject}
        with tracing.span("receive", kind="consumer", context=tracing.extract(msg.headers), **attributes):
            refusal = self._admit(slot)
            task_id = refusal.task_id if refusal is not None else slot.envelope.id if slot.envelope else ""
            tracing.annotate(
                **{
                    "agentbus.tenant": slot.tenant,
                    "agentbus.kind": slot.kind,
                    "agentbus.task_id": task_id,
                    "agentbus.attempt": slot.attempt,
                    "messaging.message.id": task_id,
                }
            )
            if refusal is not None:
                return await self._refuse(slot, refusal)
            assert slot.envelope is not None
            slot.in_handler = True
            try:
                value, error = await self._handler(self._context(slot), slot.envelope.payload), None
            except (Exception, asyncio.CancelledError) as exc:
                value, error = None, exc
                if not isinstance(exc, Reject | Retry | asyncio.CancelledError):
                    tracing.fail(f"{type(exc).__name__}: {exc}", exc)  # the fate below says what follows
            finally:
                self._handler_ended(slot)
            await self._settle(slot, value, error)

    # -- fates ------------------------------------------------------------------------------

    async def _refuse(self, slot: Slot, refusal: Refusal) -> None:
        reason, task_id, detail = refusal
        if reason is DlqReason.MAX_DELIVERIES and await self._fate_stored(slot.tenant, task_id):
            extra = task_fields(slot.tenant, slot.kind, task_id, slot.attempt, slot.msg.headers)
            log.warning(
                "task %r has a stored result: an earlier delivery finished and its ack was lost; "
                "acked, not dead-lettered", task_id, extra=extra,
            )  # fmt: skip
            self.stats.acks_lost += 1
            return await self._ack(self._nc, slot.msg, AckKind.ACK)
        # a tenant not on the allowlist gets no DLQ subject, metric label or state of its own
        tenant = INVALID_TOKEN if reason is DlqReason.UNKNOWN_TENANT else slot.tenant
        await self._dead_letter(slot.msg, tenant, task_id, reason, detail, slot.attempt, kind=slot.kind)

    async def _fate_stored(self, tenant: str, task_id: str) -> bool:
        """Whether stream RESULTS holds a result of ``task_id`` (its fate, success or dead letter,
        was decided by an earlier delivery). Only asked for a delivery past ``max_deliver``: a
        task whose acks were lost in a fault (or whose worker died right after the result) is
        not dead-lettered after it completed. No answer counts as no result."""
        if not (task_id and is_task_id(task_id) and tenant != INVALID_TOKEN):
            return False
        try:
            await fetch_result(self._nc, tenant, task_id)
        except (RecordNotFoundError, BusError):
            return False
        return True

    async def _settle(self, slot: Slot, output: Any, error: BaseException | None) -> None:
        """The fate of an admitted task whose handler returned ``output`` or raised ``error``."""
        msg, tenant, task, attempt = slot.msg, slot.tenant, slot.envelope, slot.attempt
        assert task is not None
        if isinstance(error, Reject):
            reason = error.reason
            return await self._dead_letter(msg, tenant, task.id, DlqReason.REJECTED, reason, attempt, task)
        if isinstance(error, Retry):
            return await self._retry_later(msg, tenant, task, attempt, error.reason, error.delay_s)
        if isinstance(error, asyncio.CancelledError):
            if not slot.timed_out:  # the drain ran out of time: hand the task to another replica
                return await self._hand_back(msg)
            detail = f"timed out after {slot.timeout_s:g}s"
            return await self._retry_later(msg, tenant, task, attempt, detail, None)
        if error is not None:
            detail = f"{type(error).__name__}: {error}"
            return await self._retry_later(msg, tenant, task, attempt, detail, None)
        if self._publish_results or (msg.headers and msg.headers.get(HDR_REPLY)):  # else nobody reads it
            try:
                await self._send_output(slot, output)
            except (TypeError, ValueError, RecursionError, msgspec.EncodeError, MaxPayloadError) as exc:
                # a handler bug (or an output over the server's max_payload): retrying cannot help
                detail = f"output of type {type(output).__name__} cannot be sent: {exc!r}"
                reason = DlqReason.REJECTED
                return await self._dead_letter(msg, tenant, task.id, reason, detail, attempt, task)
        if self._traced:
            tracing.annotate(**{"agentbus.fate": "ok"})
            await self._ack(self._nc, msg, AckKind.ACK)
        else:
            slot.released = True  # ack_next frees the slot and may pull in the same message
            await self.consumer.ack_next(msg)
        self.stats.tasks[(tenant, Outcome.OK)] += 1
        if self.audit_tasks:
            await self._audit(tenant, task.id, attempt, "ok", "")
        return None

    async def _send_output(self, slot: Slot, output: Any) -> None:
        task = slot.envelope
        assert task is not None
        result = Result(
            task_id=task.id,
            tenant=slot.tenant,
            kind=slot.kind,
            ok=True,
            output=output,
            attempts=slot.attempt,
            worker=self._worker,
            created_at=task.created_at,
            finished_at=now(),
        )
        reply = slot.msg.headers.get(HDR_REPLY) if slot.msg.headers else None  # admitted: valid
        await self._send_result(slot.tenant, task.id, result, reply)

    async def _send_result(self, tenant: str, task_id: str, result: Result[Any], reply: str | None) -> None:
        """To ``results.<tenant>.<task_id>`` (both valid: see :meth:`_dead_letter`) and to
        ``reply``, a subject the worker may publish to (checked by admission, or by the caller)."""
        if not (self._publish_results or reply):
            return
        data = encode(result)
        if self._publish_results:
            await _client.publish(self._nc, result_subject(tenant, task_id), data)
        if reply:
            await _client.publish(self._nc, reply, data)

    async def _retry_later(
        self, msg: Msg, tenant: str, task: Task[Any], attempt: int, reason: str, delay_s: float | None
    ) -> None:
        if attempt >= self._max_deliver:
            detail = f"failed on all {attempt} deliveries; last: {reason}"
            return await self._dead_letter(
                msg, tenant, task.id, DlqReason.MAX_DELIVERIES, detail, attempt, task
            )
        delay = self._retry.delay_s(attempt) if delay_s is None else delay_s
        if task.deadline is not None and now() + delay >= task.deadline:
            detail = f"retry in {delay:.2f}s would pass the deadline; last: {reason}"
            return await self._dead_letter(
                msg, tenant, task.id, DlqReason.DEADLINE_EXCEEDED, detail, attempt, task
            )
        if self._traced:
            tracing.annotate(**{"agentbus.fate": "retry", "agentbus.retry.delay_s": delay})
            tracing.fail(f"retry: {reason}")
        if log.isEnabledFor(logging.INFO):  # nothing built for a line that is not written
            extra = task_fields(tenant, self.kind, task.id, attempt, msg.headers)
            log.info(
                "task %s attempt %d failed, retry in %.2fs: %r", task.id, attempt, delay, reason, extra=extra
            )
        await self._ack(self._nc, msg, AckKind.nak(delay))
        self.stats.tasks[(tenant, Outcome.RETRIED)] += 1
        if self.audit_tasks:
            await self._audit(tenant, task.id, attempt, "retry", reason)
        return None

    async def _dead_letter(
        self,
        msg: Msg,
        tenant: str,
        task_id: str,
        reason: DlqReason,
        detail: str,
        attempt: int,
        task: Task[Any] | None = None,
        *,
        kind: str = "",
    ) -> None:
        data = msg.data
        letter = DeadLetter(
            reason=reason,
            detail=detail,
            tenant=tenant,
            kind=kind or self.kind,
            task_id=task_id,
            attempts=attempt,
            stream_seq=stream_seq(msg),
            data=data[:DLQ_MAX_DATA_BYTES],
            data_truncated=len(data) > DLQ_MAX_DATA_BYTES,
        )
        try:
            await self._dlq.dead_letter(msg, letter)
        except Exception as exc:  # not stored: keep the task and try again later
            self._log.warning("dead-lettering %r failed (%s); retrying later", task_id, exc)
            await ack(self._nc, msg, AckKind.nak(self._retry.max_s))
            return
        if self._traced:
            tracing.annotate(**{"agentbus.fate": "dead_letter", "agentbus.dead_letter.reason": str(reason)})
            tracing.fail(f"dead letter: {reason}: {detail}")
        extra = task_fields(tenant, kind or self.kind, task_id, attempt, msg.headers)
        log.warning("task %r dead-lettered: %s: %r", task_id, reason, detail, extra=extra)
        self.stats.tasks[(tenant, Outcome.DEAD_LETTERED)] += 1
        self.stats.dead_letters[(tenant, reason)] += 1
        failed: Result[None] = Result(
            task_id=task_id,
            tenant=tenant,
            kind=self.kind,
            ok=False,
            error=f"{reason}: {detail}",
            attempts=attempt,
            worker=self._worker,
            created_at=task.created_at if task else 0.0,
            finished_at=now(),
        )
        if task_id and is_task_id(task_id) and tenant != INVALID_TOKEN:  # else no valid subject for it
            reply = msg.headers.get(HDR_REPLY) if msg.headers else None
            if reply and reply_problem(reply, self._reply_prefixes, tenant):
                reply = None  # a task refused before (or for) its reply was checked
            await self._send_result(tenant, task_id, failed, reply)
            if self.audit_tasks:
                await self._audit(tenant, task_id, attempt, f"dead_letter:{reason}", detail)

    async def _audit(self, tenant: str, task_id: str, attempt: int, fate: str, error: str) -> None:
        """The minimal record of a generic task's attempt on ``audit.<tenant>.<task_id>`` (opt-in)."""
        record = AuditRecord(
            task_id=task_id,
            tenant=tenant,
            kind=self.kind,
            attempt=attempt,
            worker=self._worker,
            fate=fate,
            error=error,
            finished_at=now(),
        )
        await _client.publish(self._nc, audit_subject(tenant, task_id), encode(record))

    async def _hand_back(self, msg: Msg) -> None:
        """Nak without delay so another replica takes the task at once (drain)."""
        if self._traced:
            tracing.annotate(**{"agentbus.fate": "handed_back"})
        await ack(self._nc, msg, AckKind.nak(0))
        tenant, _ = split_task_subject(msg.subject)
        self.stats.tasks[(tenant, Outcome.HANDED_BACK)] += 1

    # -- upkeep -----------------------------------------------------------------------------

    async def heartbeat(self, older_than_s: float) -> None:
        """``+WPI`` for every task running (or prefetched) longer than ``older_than_s``.

        (It resets the message's ack wait.)
        """
        limit = time.monotonic() - older_than_s
        waiting = [s.msg for s in self.slots.values() if s.started < limit]
        waiting += self.consumer.waiting_since(limit)
        for msg in waiting:
            await ack(self._nc, msg, AckKind.IN_PROGRESS)


async def _traced_ack(nc: Client, msg: Msg, kind: bytes) -> None:
    """:func:`~bus.consumer.ack` in an ``ack`` (or ``nak``) span (only when tracing is on)."""
    with tracing.span("ack" if kind == AckKind.ACK else "nak"):
        await ack(nc, msg, kind)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def _raises(exc: Exception) -> Any:
    raise exc
