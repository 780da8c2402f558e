"""The agent API: ``@agent`` turns a typed async function into an :class:`AgentSpec`.

Decorating registers nothing globally: a worker collects the specs of the
modules it is told to load, or a :class:`~agents.registry.Registry` is built
from them explicitly::

    class Echo(msgspec.Struct):
        text: str

    @agent(kind="echo", input=Echo, output=Echo, max_inflight=64, timeout_s=5)
    async def echo(ctx: Context, task: Echo) -> Echo:
        return task

An agent that needs configuration or a client declares ``on_start(services)``
(and ``on_stop()``): the worker runs them before readiness turns green and after
the drain, so a misconfigured plugin stops the worker at start, not at its first task.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import msgspec
from prometheus_client.registry import Collector

from agentbus.errors import ConfigError, StateError
from agentbus.logs import TaskLog, trace_id
from bus.consumer import delivery_id
from bus.ledger import Ledger, OnceKey, TenantKV, check_key
from bus.messages import AuditEvent, AuditRecord, encode, now
from bus.publisher import TaskRef
from bus.records import audit_subject
from bus.subjects import check_token, stream_subject

if TYPE_CHECKING:
    from state.store import Store

__all__ = [
    "AgentSpec",
    "Context",
    "Handler",
    "OnStart",
    "OnStop",
    "Records",
    "Services",
    "Stores",
    "agent",
    "follow_up_id",
]

Stores = Callable[[str], "Store"]
"""The worker's tenant -> :class:`~state.store.Store` lookup; a Context applies it to its own tenant only."""

In = TypeVar("In")
Out = TypeVar("Out")


def follow_up_id(parent: str, kind: str, step: str) -> str:
    """The id of a follow-up task: a hash of its parent's id, its kind and the step (32 hex digits),
    the same in every attempt of the parent, so a retried handler's follow-ups deduplicate."""
    return hashlib.blake2b(f"{parent}/{kind}/{step}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Records:
    """What a worker gives its tasks for effects and durable state (:mod:`bus.ledger`)."""

    ledger: Ledger
    kv: Any
    """The ``agentbus_kv`` bucket (a nats-py ``KeyValue``); handlers see their tenant's part."""
    lease_s: float
    """How long a claimed step is held for a running attempt: the agent's time bound."""
    worker: str = ""


class _Submit(Protocol):
    async def __call__(
        self, tenant: str, kind: str, payload: Any, *, task_id: str | None = ..., deadline: float | None = ...
    ) -> TaskRef: ...


class Context:
    """What a handler knows about its task; the tenant is fixed by the subject."""

    __slots__ = (
        "_ack_subject",
        "_emit",
        "_headers",
        "_log",
        "_published",
        "_records",
        "_stores",
        "_submit",
        "attempt",
        "deadline",
        "kind",
        "streaming",
        "task_id",
        "tenant",
    )

    def __init__(
        self,
        *,
        tenant: str,
        kind: str,
        task_id: str,
        attempt: int,
        deadline: float | None,
        log: logging.Logger,
        submit: _Submit,
        emit: Callable[[str, bytes], Awaitable[None]],
        stores: Stores | None = None,
        streaming: bool = False,
        headers: Mapping[str, str] | None = None,
        records: Records | None = None,
        ack_subject: str = "",
    ) -> None:
        self._ack_subject = ack_subject
        self.tenant = tenant
        self.kind = kind
        self.task_id = task_id
        self.attempt = attempt
        """1 on the first delivery, 2 on the first retry, and so on."""
        self.deadline = deadline
        self._log = log
        self._headers = headers
        self._submit = submit
        self._emit = emit
        self._stores = stores
        self._records = records
        self._published = 0
        self.streaming = streaming
        """The publisher follows this task's stream (its envelope says ``"stream": true``);
        :meth:`stream` sends nothing otherwise, so a handler may skip building events."""

    @property
    def log(self) -> TaskLog:
        """A logger whose lines carry this task's tenant, kind, task id, attempt and trace id."""
        return TaskLog(self._log, self)

    @property
    def delivery(self) -> str:
        """This delivery of the task, unique among all its deliveries (``<consumer>:<sequence>``;
        "" outside a worker). Two runs with the same value are one delivery run twice; a
        redelivery after a consumer leader change may repeat :attr:`attempt`, never this."""
        return delivery_id(self._ack_subject)

    @property
    def trace_id(self) -> str:
        """The trace id of the task's ``traceparent`` header (publisher's trace), or ""."""
        return trace_id(self._headers)

    @property
    def state(self) -> Store:
        """This task's tenant's shared state: counters, sets and registers every worker sees.

        Only this tenant's: nothing here takes a tenant, and the store reaches no other
        tenant's entries. Reads show this worker's writes at once and other workers'
        after gossip (a few rounds, well under a second). See docs/state.md.
        """
        if self._stores is None:
            raise StateError("this context has no shared state: it was not made by a worker")
        return self._stores(self.tenant)

    async def publish(
        self,
        kind: str,
        payload: Any,
        *,
        task_id: str | None = None,
        deadline: float | None = None,
        step: str | None = None,
    ) -> TaskRef:
        """Queue a follow-up task of ``kind`` for the same tenant; returns once it is stored.

        Without ``task_id`` its id is :func:`follow_up_id` of this task's id, ``kind`` and
        ``step`` (default: the count of follow-ups this attempt published so far), so a
        retried handler's follow-ups are dropped by JetStream's duplicate window instead of
        queued twice (``TaskRef.duplicate``).
        """
        if task_id is None:
            task_id = follow_up_id(self.task_id, kind, step if step is not None else str(self._published))
        self._published += 1
        return await self._submit(self.tenant, kind, payload, task_id=task_id, deadline=deadline)

    @property
    def durable(self) -> bool:
        """The worker gave this task its effects ledger and KV (:meth:`once`, :attr:`kv`)."""
        return self._records is not None

    async def once(self, step: str, run: Callable[[], Awaitable[Any]], *, type: Any = Any) -> Any:
        """Run ``run()`` once for this task and ``step`` across retries, redeliveries and worker
        deaths; every attempt gets the first run's value (JSON, decoded to ``type``).

        The ledger is NATS KV with compare-and-set (:mod:`bus.ledger`, which says what remains of
        the exactly-once window). Without a worker's ledger (a unit test) ``run()`` just runs.
        """
        check_key(step)
        if self._records is None:
            return msgspec.json.decode(msgspec.json.encode(await run()), type=type)
        name = OnceKey(self.tenant, self.task_id, step)
        lease = self._records.lease_s
        return await self._records.ledger.once(name, run, lease_s=lease, attempt=self.attempt, type=type)

    async def audit(
        self,
        *,
        fate: str,
        started_at: float,
        events: list[AuditEvent] | None = None,
        error: str = "",
        tokens: int = 0,
        brain: str = "",
    ) -> None:
        """Store this attempt's decision record on ``audit.<tenant>.<task_id>`` (stream ``AUDIT``).

        Core NATS, like results: the stream stores it without a round trip on the task path.
        """
        record = AuditRecord(
            task_id=self.task_id,
            tenant=self.tenant,
            kind=self.kind,
            attempt=self.attempt,
            worker=self._records.worker if self._records is not None else "",
            fate=fate,
            error=error,
            events=events or [],
            tokens=tokens,
            brain=brain,
            started_at=started_at,
            finished_at=now(),
        )
        await self._emit(audit_subject(self.tenant, self.task_id), encode(record))

    @property
    def kv(self) -> TenantKV:
        """This tenant's durable keys (bucket ``agentbus_kv``), with compare-and-set writes."""
        if self._records is None:
            raise StateError("this context has no durable KV: it was not made by a worker")
        return TenantKV(self._records.kv, self.tenant)

    async def stream(self, event: Any) -> None:
        """Send a partial result to ``results.<tenant>.<task_id>.stream`` (core NATS, in order)
        if the publisher follows the stream (:attr:`streaming`); otherwise do nothing."""
        if self.streaming:
            await self._emit(stream_subject(self.tenant, self.task_id), encode(event))


Handler = Callable[[Context, In], Awaitable[Out]]


class Services:
    """What a worker offers its agents at start (``AgentSpec.on_start``).

    ``stores`` is the worker's tenant -> store lookup (None when the agent runs
    without one); :meth:`count_tokens` hands the runtime a tenant -> tokens mapping
    that the agent only ever increases, folded into the tenants' usage counters
    every gossip round (nothing is counted on the task path).
    """

    __slots__ = ("_token_counts", "stores", "worker")

    def __init__(self, *, worker: str, stores: Stores | None = None) -> None:
        self.worker = worker
        self.stores = stores
        self._token_counts: list[Mapping[str, int]] = []

    def count_tokens(self, counts: Mapping[str, int]) -> None:
        """Count ``counts`` (tenant -> tokens spent so far) in the tenants' shared usage."""
        self._token_counts.append(counts)

    @property
    def token_counts(self) -> list[Mapping[str, int]]:
        """The mappings given to :meth:`count_tokens`."""
        return list(self._token_counts)


OnStart = Callable[[Services], Awaitable[None]]
"""Run by the worker before it consumes; raise :class:`~agentbus.errors.ConfigError` to stop it."""
OnStop = Callable[[], Awaitable[None]]
"""Run by the worker after the drain (close clients)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentSpec(Generic[In, Out]):
    """A registered agent: its kind, types, limits and handler."""

    kind: str
    input: type[In]
    output: type[Out] | None
    handler: Handler[In, Out]
    max_inflight: int = 64
    timeout_s: float = 60.0
    max_payload_bytes: int = 256 * 1024
    collector: Collector | None = None
    """Extra Prometheus metrics of this agent; the worker registers it in its registry."""
    on_start: OnStart | None = None
    """Read configuration, open clients, take services; before readiness (a ConfigError stops the worker)."""
    on_stop: OnStop | None = None
    """Close what ``on_start`` opened; after the last handler finished."""
    audits: bool = False
    """The agent stores its own audit record per attempt (``Context.audit``): the worker's
    minimal one (``AGENTBUS_AUDIT_TASKS``) is not written for it."""

    def __post_init__(self) -> None:
        check_token("kind", self.kind)
        if self.max_inflight < 1:
            raise ConfigError(f"agent {self.kind}: max_inflight must be >= 1")
        if self.timeout_s <= 0:
            raise ConfigError(f"agent {self.kind}: timeout_s must be > 0")
        try:
            msgspec.json.Decoder(self.input)
        except TypeError as exc:
            raise ConfigError(f"agent {self.kind}: input type is not msgspec-decodable: {exc}") from exc

    @property
    def name(self) -> str:
        """The handler's qualified name, for logs."""
        return getattr(self.handler, "__qualname__", self.kind)


def agent(
    *,
    kind: str,
    input: type[In],
    output: type[Out] | None = None,
    max_inflight: int = 64,
    timeout_s: float = 60.0,
    max_payload_bytes: int = 256 * 1024,
    on_start: OnStart | None = None,
    on_stop: OnStop | None = None,
) -> Callable[[Handler[In, Out]], AgentSpec[In, Out]]:
    """Declare an agent for tasks on ``tasks.<tenant>.<kind>``.

    ``max_inflight`` is the number of tasks one worker process runs at once (and
    the most messages it holds unacked); ``timeout_s`` bounds one attempt;
    ``on_start``/``on_stop`` run once per worker around its life.
    """

    def wrap(handler: Handler[In, Out]) -> AgentSpec[In, Out]:
        return AgentSpec(
            kind=kind,
            input=input,
            output=output,
            handler=handler,
            max_inflight=max_inflight,
            timeout_s=timeout_s,
            max_payload_bytes=max_payload_bytes,
            on_start=on_start,
            on_stop=on_stop,
        )

    return wrap
