"""Every message agentbus puts on the wire, as msgspec Structs, in one place.

Wire format is JSON so any NATS client can publish a task. Schemas evolve only by
appending fields with defaults (msgspec decodes old and new messages alike).

* :class:`Task` travels on ``tasks.<tenant>.<kind>`` (stream ``TASKS``). Its
  ``Nats-Msg-Id`` header is ``<tenant>:<kind>:<id>`` (:func:`msg_id`), so JetStream drops
  a duplicate publish inside the stream's duplicate window, per tenant and kind; with a
  credential, ``:<mac>`` follows, so no other identity can publish it first (:mod:`bus.msgid`).
  ``tenant``/``kind`` in the body are optional and informational: the worker takes both
  from the subject and dead-letters a task whose body claims another tenant.
* :class:`Result` travels on ``results.<tenant>.<task_id>`` and to the publisher's
  reply inbox (header ``Agentbus-Reply``) when the publisher waits.
* :class:`DeadLetter` travels on ``dlq.<tenant>.<kind>`` (stream ``DLQ``) and keeps
  the original bytes, so a task can be inspected and replayed.
* :data:`StreamEvent` (token, decision, step, done) travels on
  ``results.<tenant>.<task_id>.stream`` while a task runs (``Context.stream``), when
  the task's envelope says ``"stream": true`` (``agentbus publish --wait --stream``).
* :class:`AuditRecord` travels on ``audit.<tenant>.<task_id>`` (stream ``AUDIT``): one per
  attempt of a task, its decisions, tool calls, tokens, worker and fate.
* :class:`StateQuery` is a request on ``agentbus.state.query``; one worker of the
  queue group answers with a :class:`StateReport`: its replica's view of the shared
  per-tenant usage counters and of the live agents (``agentbus status``).
"""

from __future__ import annotations

import enum
import time
from typing import Any, Generic, TypeVar

import msgspec

__all__ = [
    "DLQ_MAX_DATA_BYTES",
    "HDR_MSG_ID",
    "HDR_REPLAY_OF",
    "HDR_REPLY",
    "HDR_UNREADABLE",
    "AuditEvent",
    "AuditRecord",
    "DeadLetter",
    "DecisionEvent",
    "DlqReason",
    "DoneEvent",
    "Result",
    "StateQuery",
    "StateReport",
    "StepEvent",
    "StreamEvent",
    "Task",
    "TenantUsage",
    "TokenEvent",
    "decoder_for",
    "encode",
    "msg_id",
    "now",
    "stream_event_decoder",
]

T = TypeVar("T")

HDR_MSG_ID = "Nats-Msg-Id"
"""JetStream's de-duplication header; agentbus sets it to :func:`msg_id` of the task."""
HDR_REPLY = "Agentbus-Reply"
"""Inbox the worker also sends the :class:`Result` to (JetStream uses the real reply for its ack)."""
HDR_REPLAY_OF = "Agentbus-Replay-Of"
"""Set on a task replayed from the dead-letter queue: ``DLQ:<sequence>`` of the dead letter
(``agentbus dlq replay``), so the new attempt lineage says where it came from."""
HDR_UNREADABLE = "Agentbus-Unreadable-Headers"
"""Set by the worker's NATS client on a delivered task whose header block it could not parse
(in place of that block): the task is dead-lettered ``invalid_envelope``, not run."""


def msg_id(tenant: str, kind: str, task_id: str) -> str:
    """A task's ``Nats-Msg-Id``: ``<tenant>:<kind>:<id>``, so one tenant's ids never drop
    another tenant's tasks as duplicates (JetStream de-duplicates per stream); a publisher
    with a credential signs it (:func:`bus.msgid.signed`), so no tenant can forge it either."""
    return f"{tenant}:{kind}:{task_id}"


class Task(msgspec.Struct, Generic[T], omit_defaults=True, gc=False):
    """A unit of work for one agent kind of one tenant."""

    id: str
    payload: T
    created_at: float = 0.0
    """Publisher's wall clock, seconds since the epoch (latency accounting only)."""
    deadline: float | None = None
    """Absolute wall-clock deadline; an expired task is dead-lettered, not run."""
    tenant: str | None = None
    kind: str | None = None
    stream: bool = False
    """The publisher follows ``results.<tenant>.<id>.stream``: the worker sends partial
    output only then (core NATS keeps nothing, so events nobody subscribed to are waste)."""


class Result(msgspec.Struct, Generic[T], omit_defaults=True, gc=False):
    """The outcome of a task, sent once the task is done (or dead-lettered, to a waiter)."""

    task_id: str
    tenant: str
    kind: str
    ok: bool
    output: T | None = None
    error: str | None = None
    """For ``ok=False``: the dead-letter reason and detail."""
    attempts: int = 1
    worker: str = ""
    created_at: float = 0.0
    finished_at: float = 0.0


class DlqReason(enum.StrEnum):
    """Why a task was dead-lettered (the ``reason`` of a :class:`DeadLetter`)."""

    MALFORMED = "malformed"
    """The bytes are not a JSON task envelope (or nest deeper than 64 levels)."""
    INVALID_PAYLOAD = "invalid_payload"
    """The envelope decoded but the payload does not match the agent's input schema."""
    INVALID_ENVELOPE = "invalid_envelope"
    """The envelope or its headers break a rule (``bus.admission``): an id that is no task id,
    a reply subject not allowed, a time that is no epoch seconds, another tenant or kind than
    the subject, a missing field."""
    INVALID_SUBJECT = "invalid_subject"
    """The subject's tenant or kind token is not valid (stored on ``dlq._invalid.<kind>``)."""
    OVERSIZED = "oversized"
    """Larger than the agent's ``max_payload_bytes``."""
    UNKNOWN_KIND = "unknown_kind"
    """No agent serves this kind (moved by the unrouted sweeper)."""
    UNKNOWN_TENANT = "unknown_tenant"
    """The worker serves a fixed set of tenants and this is not one of them."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """The task's deadline passed before it could run."""
    REJECTED = "rejected"
    """The handler raised ``Reject``."""
    MAX_DELIVERIES = "max_deliveries"
    """Retryable failures on every allowed delivery, or the last one died with its worker."""


class DeadLetter(msgspec.Struct, omit_defaults=True):
    """A task that will not be processed, with the reason and its original bytes."""

    reason: DlqReason
    detail: str
    tenant: str
    kind: str
    task_id: str = ""
    attempts: int = 0
    stream_seq: int = 0
    failed_at: float = 0.0
    worker: str = ""
    data: bytes = b""
    """The original message bytes, cut to ``DLQ_MAX_DATA_BYTES`` (see ``data_truncated``)."""
    data_truncated: bool = False


DLQ_MAX_DATA_BYTES = 256 * 1024
"""Dead letters keep at most this much of the original (base64 grows it by a third)."""

_encoder = msgspec.json.Encoder()


def encode(message: Any) -> bytes:
    """Encode any wire message (one shared encoder, built once)."""
    return _encoder.encode(message)


def decoder_for(payload_type: Any) -> msgspec.json.Decoder[Task[Any]]:
    """A decoder for ``Task[payload_type]``; build it once per kind, not per message."""
    return msgspec.json.Decoder(Task[payload_type])


def now() -> float:
    """Wall clock in seconds since the epoch (the unit of every timestamp on the wire)."""
    return time.time()


# -- stream events ---------------------------------------------------------------------------
# Partial results of a running task on ``results.<tenant>.<task_id>.stream`` (core NATS, in
# order; ``seq`` counts from 1 per attempt, so a subscriber can spot a gap or a restart). The
# LLM task agent sends them; its result's audit trail is the same decision and step events.


class TokenEvent(msgspec.Struct, tag="token", tag_field="type", omit_defaults=True, gc=False):
    """A piece of model text as it is produced; the answer is the tokens of the final turn."""

    seq: int
    text: str
    turn: int = 0
    attempt: int = 1


class DecisionEvent(msgspec.Struct, tag="decision", tag_field="type", omit_defaults=True, gc=False):
    """A brain's decision for one turn: the tools it calls next, or (``final``) that it answers."""

    seq: int
    turn: int
    brain: str
    tools: list[str] = []
    """Tool names of the plan, in order (their arguments are in the step events)."""
    final: bool = False
    text: str = ""
    """What the model said this turn (its commentary, or the answer when ``final``)."""
    tokens: int = 0
    """Model tokens the turn cost (prompt + completion)."""
    attempt: int = 1


class StepEvent(msgspec.Struct, tag="step", tag_field="type", omit_defaults=True, gc=False):
    """One executed tool call: arguments as the brain sent them, and the result or the error."""

    seq: int
    turn: int
    step: int
    tool: str
    arguments: str
    ok: bool
    result: Any = None
    error: str = ""
    duration_ms: float = 0.0
    attempt: int = 1


class DoneEvent(msgspec.Struct, tag="done", tag_field="type", omit_defaults=True, gc=False):
    """The last event of an attempt: the task ended (the result follows) or failed with ``error``."""

    seq: int
    ok: bool
    error: str = ""
    attempt: int = 1


StreamEvent = TokenEvent | DecisionEvent | StepEvent | DoneEvent
"""Every event on ``results.<tenant>.<task_id>.stream`` (tagged by ``type``)."""
AuditEvent = DecisionEvent | StepEvent
"""An entry of an LLM task's audit trail."""


class AuditRecord(msgspec.Struct, omit_defaults=True, gc=False):
    """One attempt of a task as stored on ``audit.<tenant>.<task_id>`` (stream ``AUDIT``)."""

    task_id: str
    tenant: str
    kind: str
    attempt: int
    worker: str
    fate: str
    """``ok``, ``retry`` or ``rejected`` (what the attempt asked for; the DLQ has the rest)."""
    error: str = ""
    events: list[AuditEvent] = []
    """The decisions and tool calls in order (the LLM task agent's audit trail)."""
    tokens: int = 0
    brain: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0


stream_event_decoder: msgspec.json.Decoder[StreamEvent] = msgspec.json.Decoder(StreamEvent)
"""Decodes one stream event."""


# -- shared state --------------------------------------------------------------------------------
# ``agentbus status`` asks the workers (a queue group: one answers) what their replica of the
# shared tenant state holds. Replicas converge by gossip, so any worker's answer is the cluster's
# counts as of a few gossip rounds ago (docs/state.md).


class StateQuery(msgspec.Struct, omit_defaults=True):
    """A request for a :class:`StateReport`."""

    max_tenants: int = 1000
    """At most this many tenants (the busiest by tasks first); ``tenants_total`` tells how many exist."""


class TenantUsage(msgspec.Struct):
    """One tenant's cluster-wide usage counters, as the answering replica sees them."""

    tasks_completed: int = 0
    tasks_failed: int = 0
    """Tasks dead-lettered (rejected, invalid, out of deliveries or time); retries are not failures."""
    llm_tokens: int = 0


class StateReport(msgspec.Struct):
    """One worker's replica of the shared state: usage per tenant and the live agents."""

    worker: str
    replica: str
    """The answering replica's id."""
    gossip: bool
    """False: replication is off and the counts are this worker's alone."""
    peers: int
    """Other replicas this one gossips with."""
    tenants: dict[str, TenantUsage]
    tenants_total: int
    live_agents: list[str]
