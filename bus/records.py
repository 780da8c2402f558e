"""Records that outlive a task: stored results, the decision audit, and the KV buckets.

Stream ``RESULTS`` captures ``results.*.*``: every :class:`~bus.messages.Result` a worker
sends to ``results.<tenant>.<task_id>`` is kept (the newest one per task: a replayed task
replaces its dead-letter result) for ``results_max_age_s``. Partial output on
``results.<tenant>.<id>.stream`` has one token more and is not captured: the store never
fills with tokens. A result is read with the direct get that names the subject,
``$JS.API.DIRECT.GET.RESULTS.results.<tenant>.<id>``, so a per-tenant permission on
``$JS.API.DIRECT.GET.RESULTS.results.<tenant>.>`` lets a tenant read its own results and no
other tenant's (docs/wire.md).

Stream ``AUDIT`` captures ``audit.*.*``: one :class:`~bus.messages.AuditRecord` per attempt
(at most ``AUDIT_PER_TASK`` per task), kept for ``audit_max_age_s``.

KV buckets: ``agentbus_once`` (the effects ledger of ``ctx.once``), ``agentbus_kv`` (agents'
durable tenant state: pipeline parts, the order demo's stock) and ``agentbus_redrive`` (one
marker per replayed dead letter).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from agentbus.errors import BusError, ConfigError, RecordNotFoundError, ResultTimeoutError
from bus._streams import ensure_stream
from bus.messages import AuditRecord, Result
from bus.subjects import RESULTS_PREFIX, check_task_id, check_token, result_subject

__all__ = [
    "AUDIT_PER_TASK",
    "AUDIT_PREFIX",
    "AUDIT_STREAM",
    "KV_BUCKET",
    "ONCE_BUCKET",
    "REDRIVE_BUCKET",
    "RESULTS_STREAM",
    "RecordLimits",
    "audit_records",
    "audit_subject",
    "bucket",
    "ensure_records",
    "fetch_result",
]

RESULTS_STREAM = "RESULTS"
AUDIT_STREAM = "AUDIT"
AUDIT_PREFIX = "audit"
AUDIT_PER_TASK = 16
"""Audit records kept per task (one per attempt; the oldest go first)."""
ONCE_BUCKET = "agentbus_once"
KV_BUCKET = "agentbus_kv"
REDRIVE_BUCKET = "agentbus_redrive"

_result_decoder = msgspec.json.Decoder(Result[Any])
_audit_decoder = msgspec.json.Decoder(AuditRecord)


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordLimits:
    """Retention of results, audit records and the ledgers (the chart's ``results:``/``audit:``)."""

    results_max_age_s: float = 24 * 3600.0  # a day to come back for a result
    results_max_bytes: int = 1 << 30
    audit_max_age_s: float = 30 * 24 * 3600.0  # a month of decisions to review
    audit_max_bytes: int = 1 << 30
    once_max_age_s: float = 7 * 24 * 3600.0  # as long as the DLQ keeps a task that may be replayed
    replicas: int = 1

    def __post_init__(self) -> None:
        ages = (self.results_max_age_s, self.audit_max_age_s, self.once_max_age_s)
        if min(ages) <= 0 or min(self.results_max_bytes, self.audit_max_bytes) <= 0:
            raise ConfigError("record ages and sizes must be positive")
        if self.replicas not in (1, 3, 5):
            raise ConfigError("replicas must be 1, 3 or 5")


def audit_subject(tenant: str, task_id: str) -> str:
    """``audit.<tenant>.<task_id>``."""
    return f"{AUDIT_PREFIX}.{tenant}.{task_id}"


async def ensure_records(js: JetStreamContext, limits: RecordLimits | None = None) -> None:
    """Create or update ``RESULTS``, ``AUDIT`` and the KV buckets (idempotent)."""
    limits = limits or RecordLimits()
    common: dict[str, Any] = {
        "retention": RetentionPolicy.LIMITS,
        "storage": StorageType.FILE,
        "discard": DiscardPolicy.OLD,
        "num_replicas": limits.replicas,
        "allow_direct": True,
        "duplicate_window": 120.0,
    }
    await ensure_stream(
        js,
        StreamConfig(
            name=RESULTS_STREAM,
            subjects=[f"{RESULTS_PREFIX}.*.*"],  # not results.<t>.<id>.stream: partials stay off disk
            max_msgs_per_subject=1,
            max_age=limits.results_max_age_s,
            max_bytes=limits.results_max_bytes,
            **common,
        ),
    )
    await ensure_stream(
        js,
        StreamConfig(
            name=AUDIT_STREAM,
            subjects=[f"{AUDIT_PREFIX}.*.*"],
            max_msgs_per_subject=AUDIT_PER_TASK,
            max_age=limits.audit_max_age_s,
            max_bytes=limits.audit_max_bytes,
            **common,
        ),
    )
    for name, ttl in (
        (ONCE_BUCKET, limits.once_max_age_s),
        (KV_BUCKET, 0.0),
        (REDRIVE_BUCKET, limits.once_max_age_s),
    ):
        try:
            await js.key_value(name)
        except BucketNotFoundError:
            config = KeyValueConfig(
                bucket=name, history=1, ttl=ttl or None, replicas=limits.replicas, direct=True
            )
            await js.create_key_value(config)
        else:  # a bucket made with other replicas or TTL (R1 by `agentbus up`, R3 in a cluster)
            await _align(js, f"KV_{name}", limits.replicas, ttl)


async def _align(js: JetStreamContext, stream: str, replicas: int, max_age_s: float) -> None:
    config = (await js.stream_info(stream)).config
    if config.num_replicas != replicas or (config.max_age or 0.0) != max_age_s:
        config.num_replicas = replicas
        config.max_age = max_age_s
        await js.update_stream(config)


async def bucket(js: JetStreamContext, name: str) -> KeyValue:
    """The KV bucket ``name`` (created by :func:`ensure_records`)."""
    try:
        return await js.key_value(name)
    except BucketNotFoundError as exc:
        raise RecordNotFoundError(f"KV bucket {name} does not exist (run a worker to provision)") from exc


async def _last(nc: Client, stream: str, subject: str, timeout_s: float = 5.0) -> bytes | None:
    """The newest message on ``subject`` by the subject-appended direct get (None if none)."""
    try:
        msg = await nc.request(f"$JS.API.DIRECT.GET.{stream}.{subject}", b"", timeout=timeout_s)
    except NoRespondersError:
        raise RecordNotFoundError(f"no stream {stream} (run a worker to provision it)") from None
    except NatsTimeoutError:  # the server refused the request (permissions) or is overloaded
        raise BusError(
            f"no answer to the read of {subject} within {timeout_s:g} s: refused by the server's "
            "permissions (a tenant reads only its own results) or the server is busy"
        ) from None
    status = msg.headers.get("Status") if msg.headers else None
    if status == "404" or (status and not msg.data):
        return None
    return msg.data


async def fetch_result(nc: Client, tenant: str, task_id: str, *, timeout_s: float = 0.0) -> Result[Any]:
    """The stored result of ``task_id``; waits up to ``timeout_s`` for one that is not there yet.

    Raises :class:`RecordNotFoundError` (``timeout_s`` 0) or :class:`ResultTimeoutError`.
    """
    subject = result_subject(check_token("tenant", tenant), check_task_id(task_id))
    if timeout_s <= 0:
        data = await _last(nc, RESULTS_STREAM, subject)
        if data is None:
            raise RecordNotFoundError(f"no stored result for task {task_id} of tenant {tenant}")
        return _checked(data, tenant, task_id)
    arrived: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        if not arrived.done():
            arrived.set_result(msg.data)

    sub = await nc.subscribe(subject, cb=on_msg)  # first: a result sent meanwhile is not missed
    try:
        data = await _last(nc, RESULTS_STREAM, subject)
        if data is None:
            try:
                data = await asyncio.wait_for(arrived, timeout_s)
            except TimeoutError:
                raise ResultTimeoutError(task_id, timeout_s) from None
        return _checked(data, tenant, task_id)
    finally:
        await sub.unsubscribe()


def _checked(data: bytes, tenant: str, task_id: str) -> Result[Any]:
    """The stored bytes as the result of ``task_id`` of ``tenant``; anything else is refused
    (only workers may publish on ``results.>``, but the reader does not rely on it)."""
    try:
        result = _result_decoder.decode(data)
    except msgspec.DecodeError:
        raise RecordNotFoundError(f"the stored result of task {task_id} is not a result") from None
    if result.task_id != task_id or result.tenant != tenant:
        raise RecordNotFoundError(f"the stored result of task {task_id} names another task or tenant")
    return result


async def audit_records(js: JetStreamContext, tenant: str, task_id: str) -> list[AuditRecord]:
    """Every stored audit record of ``task_id``, oldest attempt first (operator read)."""
    subject = audit_subject(check_token("tenant", tenant), check_task_id(task_id))
    out: list[AuditRecord] = []
    seq = 1
    while len(out) <= AUDIT_PER_TASK:
        try:
            raw = await js.get_msg(AUDIT_STREAM, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            break
        except NatsTimeoutError:
            if not out:  # not even a "none": refused (audit records are the operator's) or busy
                raise BusError(
                    f"no answer to the read of {subject}: refused by the server's permissions "
                    "(audit records are read with the operator credential) or the server is busy"
                ) from None
            break
        if raw.seq is None or raw.data is None:
            break
        with contextlib.suppress(msgspec.DecodeError):  # junk on the subject: show what decodes
            out.append(_audit_decoder.decode(raw.data))
        seq = raw.seq + 1
    return out
