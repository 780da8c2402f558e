"""Publishing tasks: JetStream acks with a bounded window, clear errors, optional waiting.

``submit`` returns once JetStream has stored the task. ``submit_nowait`` returns as
soon as the task is on the wire and a slot in the ack window was free: the window
(``max_pending_acks``) bounds memory and applies backpressure to a fast producer.
Each task's ``Nats-Msg-Id`` is ``<tenant>:<kind>:<id>``, so JetStream drops a duplicate of
one tenant's task without touching another tenant's task of the same id; on a connection
with an NKEY seed or ``.creds`` it ends with ``:<mac>`` of that identity's key
(:mod:`bus.msgid`), so no other identity can publish it first and have the task dropped.
A full stream, an oversized task or a missing stream surface as typed
:mod:`agentbus.errors`, never as a silent drop; an ack that never comes (the server
went away mid-publish) fails the publish after ``ack_timeout_s`` instead of hanging.
``call`` publishes and waits for the :class:`~bus.messages.Result` on a per-publisher inbox;
``result`` reads a stored result later (stream ``RESULTS``, :mod:`bus.records`), from any
process, whether or not it was listening when the task completed.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

from agentbus.errors import (
    AgentbusError,
    NoStreamError,
    PayloadTooLargeError,
    PublishError,
    ResultTimeoutError,
    StreamFullError,
    TenantQuotaExceeded,
)
from bus import tracing
from bus.connection import NatsAuth
from bus.messages import HDR_MSG_ID, HDR_REPLY, Result, Task, encode, msg_id, now
from bus.msgid import key_of, signed
from bus.records import fetch_result
from bus.subjects import check_task_id, task_subject

__all__ = ["Publisher", "TaskRef", "TaskSpec", "map_publish_error", "new_task_id", "publish_sync"]

# JetStream API error codes (nats-server errors.json).
_STREAM_FULL_CODES = frozenset({10077, 10047, 10028})  # store failed (limits), resources exceeded
_TOO_LARGE_CODES = frozenset({10054})  # message size exceeds maximum allowed
_PER_SUBJECT_FULL = "maximum messages per subject exceeded"  # 10077 with discard_new_per_subject

_result_decoder = msgspec.json.Decoder(Result[Any])


def new_task_id() -> str:
    """A fresh random task id (32 hex digits)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A stored task: its id, subject and stream sequence; ``duplicate`` if deduplicated."""

    task_id: str
    subject: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task to publish with :meth:`Publisher.submit_many`."""

    tenant: str
    kind: str
    payload: Any
    task_id: str | None = None
    deadline: float | None = None
    stream: bool = False


def _signed_msg_id(key: bytes, tenant: str, kind: str, task_id: str) -> str:
    """``<tenant>:<kind>:<id>:<mac>`` (:mod:`bus.msgid`)."""
    return signed(key, msg_id(tenant, kind, task_id))


class _JetStream(JetStreamContext):
    """``publish_async`` whose futures also resolve when JetStream answers with an error.

    nats-py 2.16 leaves the future of an error ack (stream full, too large) pending
    forever and reports the error to ``error_cb`` instead (nats.py #985:
    ``APIError.from_error`` raises where the caller expects a return), so a full
    stream would hang the publisher instead of raising ``StreamFullError``.
    """

    async def _handle_async_reply(self, msg: Msg) -> None:
        try:
            await super()._handle_async_reply(msg)
        except APIError as exc:
            token = msg.subject[len(self._async_reply_prefix or b"") :]
            future = self._publish_async_futures.get(token)
            if future is not None and not future.done():
                future.set_exception(exc)


class Publisher:
    """Publishes tasks to ``tasks.<tenant>.<kind>`` and optionally waits for results."""

    def __init__(
        self,
        nc: Client,
        *,
        max_pending_acks: int = 4096,
        max_msg_bytes: int = 1 << 20,
        ack_timeout_s: float = 10.0,
        tenant_quota: int = 0,
    ) -> None:
        """``tenant_quota``: the stream's ``StreamLimits.tenant_max_queued``, named in
        :class:`~agentbus.errors.TenantQuotaExceeded` (0: unknown here)."""
        self._nc = nc
        self._quota = tenant_quota
        self._js = _JetStream(nc, publish_async_max_pending=max_pending_acks)
        self._max_msg_bytes = max_msg_bytes
        # an ack lost with a dying server never arrives: without a bound, submit would hang
        # forever and the lost ack would hold its slot of the window for good
        self._ack_timeout_s = ack_timeout_s
        self._inbox: str | None = None
        self._inbox_sub: Subscription | None = None
        self._waiters: dict[str, asyncio.Future[Result[Any]]] = {}
        self._traced = tracing.enabled()  # decided once: no tracer provider, no cost
        key = key_of(nc)  # the identity's own: ids another identity cannot publish first
        self._msg_id: Callable[[str, str, str], str] = (
            msg_id if key is None else functools.partial(_signed_msg_id, key)
        )

    def _prepare(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        task_id: str | None,
        deadline: float | None,
        wait: bool,
        stream: bool,
    ) -> tuple[str, str, bytes, dict[str, str]]:
        subject = task_subject(tenant, kind)
        task_id = check_task_id(task_id) if task_id else new_task_id()
        task = Task(id=task_id, payload=payload, created_at=now(), deadline=deadline, stream=stream)
        data = encode(task)
        # the server's max_payload too: above it nats-py raises its own MaxPayloadError
        limit = min(self._max_msg_bytes, self._nc.max_payload or self._max_msg_bytes)
        if len(data) > limit:
            raise PayloadTooLargeError(len(data), limit, task_id=task_id, subject=subject)
        headers = {HDR_MSG_ID: self._msg_id(tenant, kind, task_id)}  # dedupe per tenant and kind
        if wait:
            assert self._inbox is not None
            headers[HDR_REPLY] = self._inbox + task_id
        if self._traced:  # a producer span; its context travels as traceparent to the worker
            with tracing.span("publish", kind="producer", **{"messaging.destination.name": subject}):
                tracing.inject(headers)
        return subject, task_id, data, headers

    async def submit(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        *,
        task_id: str | None = None,
        deadline: float | None = None,
        stream: bool = False,
    ) -> TaskRef:
        """Publish one task and wait until JetStream has stored it; ``stream``: the worker sends
        the task's partial output to ``results.<tenant>.<id>.stream`` (subscribe first)."""
        fut = await self.submit_nowait(
            tenant, kind, payload, task_id=task_id, deadline=deadline, stream=stream
        )
        return await fut

    async def submit_nowait(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        *,
        task_id: str | None = None,
        deadline: float | None = None,
        stream: bool = False,
        _wait: bool = False,
    ) -> asyncio.Future[TaskRef]:
        """Publish one task; the returned future resolves to its :class:`TaskRef` or a PublishError.

        Waits only while ``max_pending_acks`` acks are outstanding (the window).
        """
        subject, tid, data, headers = self._prepare(tenant, kind, payload, task_id, deadline, _wait, stream)
        ack = await self._js.publish_async(subject, data, headers=headers)
        loop = asyncio.get_running_loop()
        out: asyncio.Future[TaskRef] = loop.create_future()
        timer = loop.call_later(self._ack_timeout_s, _expire, ack, self._ack_timeout_s)

        def done(f: asyncio.Future[PubAck]) -> None:
            timer.cancel()
            _resolve(f, out, tid, subject, len(data), self._quota)

        ack.add_done_callback(done)
        return out

    async def submit_many(
        self, specs: Iterable[TaskSpec], *, return_exceptions: bool = False
    ) -> list[TaskRef | BaseException]:
        """Publish many tasks through the ack window; results in input order."""
        futures: list[asyncio.Future[TaskRef]] = []
        for s in specs:
            try:
                fut = await self.submit_nowait(
                    s.tenant, s.kind, s.payload, task_id=s.task_id, deadline=s.deadline, stream=s.stream
                )
            except AgentbusError as exc:  # refused before sending (bad subject, too large)
                if not return_exceptions:
                    raise
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(exc)
            futures.append(fut)
        return list(await asyncio.gather(*futures, return_exceptions=return_exceptions))

    async def call(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        *,
        timeout_s: float = 30.0,
        task_id: str | None = None,
        deadline: float | None = None,
        output_type: Any = None,
        stream: bool = False,
    ) -> Result[Any]:
        """Publish a task and wait for its result; ``output_type`` converts a successful output;
        ``stream`` as in :meth:`submit`."""
        await self._ensure_inbox()
        tid = task_id or new_task_id()
        waiter: asyncio.Future[Result[Any]] = asyncio.get_running_loop().create_future()
        self._waiters[tid] = waiter
        try:
            stored = await self.submit_nowait(
                tenant, kind, payload, task_id=tid, deadline=deadline, stream=stream, _wait=True
            )
            await stored
            result = await asyncio.wait_for(waiter, timeout_s)
            if output_type is not None and result.ok:
                result.output = msgspec.convert(result.output, output_type)
            return result
        except TimeoutError:
            raise ResultTimeoutError(tid, timeout_s) from None
        finally:
            self._waiters.pop(tid, None)

    async def result(
        self, task_id: str, *, tenant: str = "default", timeout_s: float = 0.0, output_type: Any = None
    ) -> Result[Any]:
        """The stored result of ``task_id`` (within the results TTL), waiting up to ``timeout_s``
        for one not there yet; :class:`~agentbus.errors.RecordNotFoundError` or
        :class:`~agentbus.errors.ResultTimeoutError` if none."""
        result = await fetch_result(self._nc, tenant, task_id, timeout_s=timeout_s)
        if output_type is not None and result.ok:
            result.output = msgspec.convert(result.output, output_type)
        return result

    async def flush(self) -> None:
        """Wait until every outstanding publish has its JetStream ack."""
        await self._js.publish_async_completed()

    async def close(self) -> None:
        """Stop listening for results (the connection stays open)."""
        if self._inbox_sub is not None:
            await self._inbox_sub.unsubscribe()
            self._inbox_sub = None

    async def _ensure_inbox(self) -> None:
        if self._inbox_sub is not None:
            return
        prefix = self._nc.new_inbox() + "."
        self._inbox = prefix
        self._inbox_sub = await self._nc.subscribe(prefix + "*", cb=self._on_result)

    async def _on_result(self, msg: Msg) -> None:
        try:
            result = _result_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        waiter = self._waiters.get(result.task_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)


class _AckTimeout(Exception):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(timeout_s)
        self.timeout_s = timeout_s


def _expire(ack: asyncio.Future[PubAck], timeout_s: float) -> None:
    if not ack.done():  # also frees the ack's slot of the window (nats-py's done callback)
        ack.set_exception(_AckTimeout(timeout_s))


def _resolve(
    ack: asyncio.Future[PubAck],
    out: asyncio.Future[TaskRef],
    task_id: str,
    subject: str,
    size: int,
    quota: int = 0,
) -> None:
    if out.done():
        return
    if ack.cancelled():
        out.cancel()
        return
    exc = ack.exception()
    if exc is None:
        pub = ack.result()
        out.set_result(TaskRef(task_id, subject, pub.seq, bool(pub.duplicate)))
    else:
        out.set_exception(map_publish_error(exc, task_id, subject, size, quota))


def map_publish_error(
    exc: BaseException, task_id: str, subject: str, size: int = 0, quota: int = 0
) -> PublishError:
    """Translate a nats-py publish failure into the agentbus error tree (``size``: the task's
    bytes; ``quota``: the per-tenant limit, for :class:`TenantQuotaExceeded`)."""
    if isinstance(exc, _AckTimeout):
        return PublishError(
            f"no ack from JetStream within {exc.timeout_s:g}s: the task may or may not be stored; "
            "publish it again with the same id (JetStream drops the duplicate)",
            task_id=task_id,
            subject=subject,
        )
    if isinstance(exc, NoStreamResponseError):
        return NoStreamError(f"no stream captures {subject}", task_id=task_id, subject=subject)
    if isinstance(exc, APIError):
        desc = exc.description or ""
        if exc.err_code in _TOO_LARGE_CODES:  # the stream's max_msg_size is below our limit
            return PayloadTooLargeError(size, 0, task_id=task_id, subject=subject, detail=desc)
        if desc == _PER_SUBJECT_FULL:  # the tenant's quota: other tenants still publish
            _, tenant, kind = [*subject.split(".", 2), "", ""][:3]
            return TenantQuotaExceeded(tenant, kind, quota, task_id=task_id, subject=subject)
        if exc.err_code in _STREAM_FULL_CODES or "maximum" in desc:
            return StreamFullError(
                f"stream full, task refused ({desc}); consume or raise the limits",
                task_id=task_id,
                subject=subject,
            )
        return PublishError(f"JetStream refused the task: {desc}", task_id=task_id, subject=subject)
    return PublishError(f"publish failed: {exc!r}", task_id=task_id, subject=subject)


def publish_sync(
    url: str, specs: Iterable[TaskSpec], *, timeout_s: float = 60.0, auth: NatsAuth | None = None
) -> list[TaskRef]:
    """Blocking helper for scripts: connect, publish every task, wait for the acks, close."""

    async def run() -> list[TaskRef]:
        from bus.connection import connect

        nc = await connect(url, name="agentbus-publish", auth=auth)
        try:
            pub = Publisher(nc)
            refs = await asyncio.wait_for(pub.submit_many(specs), timeout_s)
            return [r for r in refs if isinstance(r, TaskRef)]
        finally:
            await nc.drain()

    return asyncio.run(run())
