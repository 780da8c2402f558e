"""Streams and consumers: what agentbus provisions in JetStream, with explicit limits.

Stream ``TASKS`` (``tasks.*.*``): work-queue retention (a task is deleted when
acked), file storage, ``discard=new`` so a full stream refuses publishes with an
error instead of silently dropping queued work, explicit byte/message/size limits,
a duplicate window of at least two minutes for ``Nats-Msg-Id`` de-duplication.

Per-tenant quota: at most ``tenant_max_queued`` tasks per ``tasks.<tenant>.<kind>``
(``max_msgs_per_subject`` with ``discard_new_per_subject``): the server refuses one tenant's
task past it (the publisher raises :class:`~agentbus.errors.TenantQuotaExceeded`) while every
other tenant keeps publishing.

Stream ``DLQ`` (``dlq.>``): limits retention, file storage, kept for a week, at most
``dlq_max_per_subject`` letters per ``dlq.<tenant>.<kind>`` (a tenant's flood rotates only
its own oldest letters) and ``discard=new`` at the byte limit, so no tenant's letters are
ever evicted by another's: a letter the DLQ refuses leaves its task queued, retried later.

Consumers (docs/fairness.md): by default one durable pull consumer per tenant and kind,
``t-<kind>-<hash of tenant>`` filtered on ``tasks.<tenant>.<kind>``, created when the
tenant has queued tasks (:func:`ensure_tenant_consumer`) and removed by the server after
``inactive_threshold_s`` without pull requests. The per-kind strategy (``agents-<kind>``
on ``tasks.*.<kind>``) is the baseline of the benchmarks. The two cannot serve one kind
together (work-queue streams forbid overlapping filters): :func:`remove_kind_consumer`
migrates a deployment. Every delivery knob is set explicitly: the server's default silent
stop at ``max_ack_pending`` is wrong for a task queue.

The consumer's server-side ``max_deliver`` is unlimited on purpose: the worker is the
only judge of a task's deliveries (``ConsumerSpec.max_deliver``). It dead-letters a
delivery past that number without running it, so a task whose last delivery died with its
worker still reaches the DLQ, and if the DLQ cannot store it the task is simply delivered
again later. A bounded server-side limit would leave such a task in the work queue for good
(nats-server #5564), reachable only through its ``MAX_DELIVERIES`` advisory, which any client
can forge. :func:`ensure_consumer` updates a consumer created with a bounded limit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from agentbus.errors import ConfigError
from bus._streams import ensure_stream
from bus.records import RecordLimits, ensure_records
from bus.subjects import DLQ_PREFIX, TASKS_PREFIX, check_token

__all__ = [
    "DLQ_STREAM",
    "SERVER_MAX_DELIVER",
    "TASKS_STREAM",
    "ConsumerSpec",
    "StreamLimits",
    "consumer_name",
    "ensure_consumer",
    "ensure_streams",
    "ensure_tenant_consumer",
    "kind_consumers",
    "remove_kind_consumer",
    "tasks_consumers",
    "tenant_consumer_name",
]

TASKS_STREAM = "TASKS"
DLQ_STREAM = "DLQ"
SERVER_MAX_DELIVER = -1
"""The consumers' ``max_deliver`` on the server: unlimited (see the module docstring)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StreamLimits:
    """Limits of the two streams. Defaults suit one machine; the chart sets its own."""

    tasks_max_msgs: int = 1_000_000  # refuse, don't drop, past a million queued tasks
    tasks_max_bytes: int = 1 << 30  # 1 GiB of queued tasks on disk
    max_msg_bytes: int = 1 << 20  # the server's default max_payload is 1 MiB
    duplicate_window_s: float = 120.0  # >= 2 min: publisher retries after a timeout stay deduped
    tenant_max_queued: int = 200_000  # queued tasks per tenant and kind; 0: no quota
    # consumers on TASKS: one per tenant and kind with a backlog (or active in the last
    # inactive_threshold). nats-server 2.15 caps a stream at 1,000 unless it sets its own,
    # and has no "unlimited" any more
    tasks_max_consumers: int = 20_000
    dlq_max_bytes: int = 256 << 20
    dlq_max_per_subject: int = 1_000  # dead letters kept per tenant and kind (the newest)
    dlq_max_age_s: float = 7 * 24 * 3600.0  # a week to inspect and replay
    replicas: int = 1  # R3 in a cluster (the chart sets it); 1 on a laptop

    def __post_init__(self) -> None:
        if self.duplicate_window_s < 120:
            raise ConfigError("duplicate_window_s must be >= 120 s (publisher retries rely on it)")
        limits = (self.tasks_max_msgs, self.tasks_max_bytes, self.max_msg_bytes, self.dlq_max_per_subject)
        if min(*limits, self.tasks_max_consumers) <= 0:
            raise ConfigError("stream limits must be positive")
        if self.tenant_max_queued < 0:
            raise ConfigError("tenant_max_queued must be >= 0 (0: no quota)")
        if self.replicas not in (1, 3, 5):
            raise ConfigError("replicas must be 1, 3 or 5")


@dataclass(frozen=True, kw_only=True, slots=True)
class ConsumerSpec:
    """Delivery settings of one kind's durable consumer."""

    kind: str
    ack_wait_s: float = 30.0  # redelivery after a worker dies; heartbeats keep long tasks alive
    max_deliver: int = 5  # the worker's limit (server: unlimited); then dead letter max_deliveries
    backoff_s: tuple[float, ...] = field(default=())
    """Redelivery delays after ack timeouts; empty (the default) means ack_wait before each one.

    Leave it empty unless needed: with a BackOff, nats-server also stretches every delayed
    nak by ``backoff[n] - ack_wait`` (it backdates the nak by ack_wait, then compares with
    the backoff entry), so the worker's 0.1 s retry on delivery 2 of ``[30, 60]`` waits 30 s.
    """
    max_ack_pending: int = 20_000  # cap across all replicas; each worker holds <= slots + prefetch
    max_waiting: int = 512  # outstanding pull requests across replicas
    inactive_threshold_s: float = 120.0  # a tenant's consumer without pull requests this long is removed

    def __post_init__(self) -> None:
        check_token("kind", self.kind)
        if (
            self.ack_wait_s <= 0
            or self.max_deliver < 1
            or self.max_ack_pending < 1
            or self.inactive_threshold_s <= 0
        ):
            raise ConfigError(
                "ack_wait_s, max_deliver, max_ack_pending and inactive_threshold_s must be positive"
            )
        if self.backoff_s and (len(self.backoff_s) > self.max_deliver or min(self.backoff_s) <= 0):
            raise ConfigError("backoff_s needs 1..max_deliver positive delays")

    def redelivery_backoff_s(self) -> list[float]:
        """The ack-timeout BackOff sent to the server; empty: none, ack_wait for every redelivery."""
        return list(self.backoff_s)


def consumer_name(kind: str) -> str:
    """The durable consumer of a kind (the per-kind strategy)."""
    return f"agents-{kind}"


def tenant_consumer_name(kind: str, tenant: str) -> str:
    """The durable consumer of one tenant's tasks of ``kind``.

    The tenant is hashed: any token a client published under (even an invalid one, which
    is then dead-lettered) gets a valid, fixed-length name, and no tenant/kind pair can
    spell another's (the hash has a fixed length, so the kind is what lies before it).
    """
    digest = hashlib.blake2b(tenant.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return f"t-{kind}-{digest}"


async def ensure_streams(
    js: JetStreamContext, limits: StreamLimits | None = None, records: RecordLimits | None = None
) -> None:
    """Create or update ``TASKS`` and ``DLQ`` to the given limits, and the records (``bus.records``)."""
    limits = limits or StreamLimits()
    tasks = StreamConfig(
        name=TASKS_STREAM,
        subjects=[f"{TASKS_PREFIX}.*.*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=limits.tasks_max_msgs,
        max_msgs_per_subject=limits.tenant_max_queued or -1,
        max_consumers=limits.tasks_max_consumers,
        discard_new_per_subject=bool(limits.tenant_max_queued),
        max_bytes=limits.tasks_max_bytes,
        max_msg_size=limits.max_msg_bytes,
        duplicate_window=limits.duplicate_window_s,
        num_replicas=limits.replicas,
    )
    dlq = StreamConfig(
        name=DLQ_STREAM,
        subjects=[f"{DLQ_PREFIX}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,  # full: refuse (the task stays queued), never evict another tenant's
        max_msgs_per_subject=limits.dlq_max_per_subject,
        max_bytes=limits.dlq_max_bytes,
        max_age=limits.dlq_max_age_s,
        duplicate_window=limits.duplicate_window_s,
        num_replicas=limits.replicas,
    )
    await ensure_stream(js, tasks, keep_sources=True)  # an edge site's source (bus.edge) stays
    await ensure_stream(js, dlq)
    await ensure_records(js, records)


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    """Create or update the durable pull consumer of ``spec.kind`` (idempotent)."""
    await js.add_consumer(
        TASKS_STREAM, _config(spec, consumer_name(spec.kind), f"{TASKS_PREFIX}.*.{spec.kind}")
    )


async def ensure_tenant_consumer(js: JetStreamContext, spec: ConsumerSpec, tenant: str) -> str:
    """Create or update the consumer of ``tenant``'s tasks of ``spec.kind``; returns its name.

    ``tenant`` is the token found in the stream, checked by the caller to make a valid
    subject (it may still be an invalid tenant: its tasks are then dead-lettered).
    """
    name = tenant_consumer_name(spec.kind, tenant)
    config = _config(spec, name, f"{TASKS_PREFIX}.{tenant}.{spec.kind}")
    config.inactive_threshold = spec.inactive_threshold_s
    await js.add_consumer(TASKS_STREAM, config)
    return name


async def remove_kind_consumer(js: JetStreamContext, kind: str) -> bool:
    """Delete the per-kind consumer of ``kind`` if it exists (migration to per-tenant consumers).

    Its unacknowledged tasks stay in the work queue and go to the tenants' consumers.
    """
    try:
        return bool(await js.delete_consumer(TASKS_STREAM, consumer_name(kind)))
    except NotFoundError:
        return False


async def tasks_consumers(js: JetStreamContext, *, max_pages: int = 200) -> list[ConsumerInfo]:
    """Every consumer of ``TASKS``, page after page (the server lists 256 at a time)."""
    out: list[ConsumerInfo] = []
    for _ in range(max_pages):
        page = await js.consumers_info(TASKS_STREAM, offset=len(out))
        out += page
        if not page:
            break
    return out


async def kind_consumers(js: JetStreamContext, kind: str) -> list[ConsumerInfo]:
    """The consumers serving ``kind``: its tenants' (or, per-kind strategy, ``agents-<kind>``)."""
    out = []
    for info in await tasks_consumers(js):
        tokens = (info.config.filter_subject or "").split(".")
        if len(tokens) == 3 and tokens[0] == TASKS_PREFIX and tokens[2] == kind:
            out.append(info)
    return out


def _config(spec: ConsumerSpec, name: str, filter_subject: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name,
        name=name,
        filter_subject=filter_subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        max_deliver=SERVER_MAX_DELIVER,  # the worker judges deliveries (module docstring)
        backoff=spec.redelivery_backoff_s() or None,  # None: no BackOff at all (see backoff_s)
        max_ack_pending=spec.max_ack_pending,
        max_waiting=spec.max_waiting,
    )
