"""The one exception tree of agentbus.

Everything agentbus raises on purpose derives from :class:`AgentbusError`::

    AgentbusError
    ├── ConfigError              bad configuration, found at start (exit 78); also a ValueError
    │   └── UsageError           a bad command line (exit 2)
    ├── BusError                 talking to NATS failed
    │   ├── PublishError         a task could not be stored
    │   │   ├── StreamFullError  the stream refused it: limits reached (discard=new)
    │   │   ├── TenantQuotaExceeded  a tenant's queued tasks of a kind are at its quota
    │   │   ├── PayloadTooLargeError  bigger than the stream or server accepts
    │   │   └── NoStreamError    no stream listens on that subject
    │   ├── InvalidSubjectError  tenant or kind is not a valid subject token
    │   ├── UnsafeSubjectError   a subject or reply the server would close the connection for (not sent)
    │   ├── ResultTimeoutError   a waited-for result did not arrive in time; also a TimeoutError
    │   ├── RecordNotFoundError  no stored result, audit record or dead letter by that name (or TTL passed)
    │   └── AlreadyReplayedError a dead letter was replayed before (names the sequence)
    ├── ScalerError              the autoscaler could not read a metric or resize the pool
    │   ├── MetricError          a metric source failed (unreachable, bad query, bad answer)
    │   └── ActuatorError        reading or changing the replica count failed
    │       ├── ScaleTargetNotFoundError  the Deployment (or its scale subresource) does not exist
    │       ├── ScalePermissionError      RBAC forbids the call (names the verb and resource)
    │       └── ScaleConflictError        the object changed under us and retries ran out
    ├── StateError               shared tenant state refused an operation or an input
    │   ├── StateLimitError      a tenant's entry or size limit is reached (names the limit)
    │   ├── StateTypeError       the name already holds another kind of CRDT
    │   ├── CorruptStateError    bytes from a peer or a snapshot failed validation (the reason)
    │   └── PersistenceError     Redis could not be read while restoring state
    ├── LLMError                 a model endpoint failed, or a model broke the protocol
    │   ├── ModelConnectionError cannot connect, or the connection broke mid-answer
    │   ├── ModelHTTPError       the endpoint refused the request (4xx other than 429): not retryable
    │   ├── ModelUnavailableError  429/5xx/connection failures outlasted the retries (retry_after_s)
    │   ├── CircuitOpenError     the endpoint's breaker is open: fail fast (endpoint, retry_after_s)
    │   ├── ModelOutputError     the model kept sending unusable output past the bound
    │   └── TenantLimitError     a tenant limit of the LLM agents (tenant)
    │       ├── BudgetExceededError  the tenant's token budget is spent (used, limit)
    │       └── RateLimitedError     the tenant's request rate is exceeded (retry_after_s)
    ├── KnowledgeBaseError       a knowledge base refused an input, or its store failed
    │   └── EmbeddingError       the embeddings endpoint failed or answered something unusable
    └── TaskFate                 raised by handlers to decide a message's fate
        ├── Retry(delay_s)       retryable: nak, redeliver after the delay
        └── Reject(reason)       not retryable: term and dead-letter with the reason

``ConfigError`` is raised at start for bad configuration (the scaler's too: unknown
metric, min > max, a query Prometheus refuses); every ``agentbus`` command then exits 78
(``EX_CONFIG``), which makes ``agentbus up`` stop instead of restarting a worker. Only a
``UsageError`` (and argparse's own) exits 2; any other ``AgentbusError`` exits 1.
``ScalerError`` subclasses are raised at run time; the control loop catches them, holds
the pool's size and logs why.

``StateError`` subclasses come from ``state``: limits and type clashes are raised to
the handler that wrote; ``CorruptStateError`` is raised to gossip or the snapshot
loader, which drop the bytes whole (nothing is half-merged) and log the reason.

``LLMError`` subclasses come from ``agents.llm``; its task agent turns them into fates:
an open breaker, a rate limit or an unavailable model become ``Retry`` (with the
delay they carry), a spent budget, a refused request or unusable model output ``Reject``.

``TaskFate`` subclasses are control flow, in the spirit of FastStream's
``NackMessage``/``RejectMessage``: a handler raises them, the worker turns them into
the message's fate. Any other exception from a handler counts as retryable.
"""

from __future__ import annotations

__all__ = [
    "ActuatorError",
    "AgentbusError",
    "AlreadyReplayedError",
    "BudgetExceededError",
    "BusError",
    "CircuitOpenError",
    "ConfigError",
    "CorruptStateError",
    "EmbeddingError",
    "InvalidSubjectError",
    "KnowledgeBaseError",
    "LLMError",
    "MetricError",
    "ModelConnectionError",
    "ModelHTTPError",
    "ModelOutputError",
    "ModelUnavailableError",
    "NoStreamError",
    "PayloadTooLargeError",
    "PersistenceError",
    "PublishError",
    "RateLimitedError",
    "RecordNotFoundError",
    "Reject",
    "ResultTimeoutError",
    "Retry",
    "ScaleConflictError",
    "ScalePermissionError",
    "ScaleTargetNotFoundError",
    "ScalerError",
    "StateError",
    "StateLimitError",
    "StateTypeError",
    "StreamFullError",
    "TaskFate",
    "TenantLimitError",
    "TenantQuotaExceeded",
    "UnsafeSubjectError",
    "UsageError",
]


class AgentbusError(Exception):
    """Root of every error agentbus raises on purpose."""


class ConfigError(AgentbusError, ValueError):
    """Configuration is invalid; raised at start, never mid-run."""


class UsageError(ConfigError):
    """The command line is wrong: a missing or contradictory flag, an argument that does not parse."""


class BusError(AgentbusError):
    """A NATS operation failed."""


class InvalidSubjectError(BusError):
    """A tenant or kind cannot be used as a NATS subject token."""

    def __init__(self, field: str, value: str, rule: str = "1-64 of [A-Za-z0-9_-]") -> None:
        shown = repr(value[:100]) + ("..." if len(value) > 100 else "")
        super().__init__(f"invalid {field} {shown}: use {rule}")
        self.field = field
        self.value = value


class UnsafeSubjectError(BusError):
    """A subject or reply nats-server would answer by closing the connection (whitespace,
    control characters, over its control-line limit); nothing was sent."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        shown = value if len(value) <= 80 else f"{value[:80]}... ({len(value)} characters)"
        super().__init__(f"refusing to publish: {field} {shown!r} {reason}")
        self.field = field
        self.value = value
        self.reason = reason


class PublishError(BusError):
    """A task was not stored by JetStream; it is not queued."""

    def __init__(self, message: str, *, task_id: str = "", subject: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.subject = subject


class StreamFullError(PublishError):
    """The stream is at its message or byte limit and refuses new tasks (discard=new)."""


class TenantQuotaExceeded(PublishError):
    """The tenant has ``limit`` tasks of ``kind`` queued (the server's per-subject quota);
    other tenants still publish. ``limit`` 0: not known to the publisher."""

    def __init__(self, tenant: str, kind: str, limit: int, *, task_id: str = "", subject: str = "") -> None:
        quota = f"its quota of {limit}" if limit else "its quota"
        super().__init__(
            f"tenant {tenant!r} has {quota} tasks of kind {kind!r} queued; task refused",
            task_id=task_id,
            subject=subject,
        )
        self.tenant = tenant
        self.kind = kind
        self.limit = limit


class PayloadTooLargeError(PublishError):
    """The encoded task is larger than the stream's max message size."""

    def __init__(
        self, size: int, limit: int, *, task_id: str = "", subject: str = "", detail: str = ""
    ) -> None:
        """``limit`` 0: unknown here (the server refused the size: ``detail`` says why)."""
        bound = f"the limit is {limit} bytes" if limit else f"the server refused it: {detail}"
        super().__init__(f"task is {size} bytes, {bound}", task_id=task_id, subject=subject)
        self.size = size
        self.limit = limit


class NoStreamError(PublishError):
    """No JetStream stream captures the subject (topology not provisioned?)."""


class ResultTimeoutError(BusError, TimeoutError):
    """The result of a task did not arrive within the wait."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"no result for task {task_id} within {timeout_s:g}s")
        self.task_id = task_id
        self.timeout_s = timeout_s


class RecordNotFoundError(BusError):
    """No stored record (result, audit, dead letter) of that name: never written, or expired."""


class AlreadyReplayedError(BusError):
    """This dead letter was replayed before; replaying it again would run the task twice."""

    def __init__(self, seq: int, detail: str = "") -> None:
        super().__init__(f"dead letter {seq} was already replayed{': ' + detail if detail else ''}")
        self.seq = seq


class ScalerError(AgentbusError):
    """The autoscaler failed to read a metric or to resize the pool (the pool keeps its size)."""


class MetricError(ScalerError):
    """A metric source failed: ``metric`` names what was asked, ``source`` where."""

    def __init__(self, message: str, *, metric: str = "", source: str = "") -> None:
        super().__init__(message)
        self.metric = metric
        self.source = source


class ActuatorError(ScalerError):
    """Reading or setting the replica count failed; ``target`` names the pool, ``status`` the HTTP code."""

    def __init__(self, message: str, *, target: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.target = target
        self.status = status


class ScaleTargetNotFoundError(ActuatorError):
    """The Deployment to scale does not exist (HTTP 404)."""


class ScalePermissionError(ActuatorError):
    """The service account may not do this (HTTP 403); the message names the missing RBAC rule."""


class ScaleConflictError(ActuatorError):
    """The object kept changing under us (HTTP 409) and the retries ran out."""


class StateError(AgentbusError):
    """Shared tenant state refused an operation or an input."""


class StateLimitError(StateError):
    """A tenant reached one of its limits; ``limit`` names it (e.g. ``max_entries``)."""

    def __init__(self, tenant: str, limit: str, allowed: int, wanted: int) -> None:
        super().__init__(f"tenant {tenant!r} is at its {limit} limit: {wanted} > {allowed}")
        self.tenant = tenant
        self.limit = limit
        self.allowed = allowed
        self.wanted = wanted


class StateTypeError(StateError):
    """The name already holds a different kind of CRDT (a name keeps its kind for good)."""

    def __init__(self, name: str, holds: str, wanted: str) -> None:
        super().__init__(f"{name!r} holds a {holds}, not a {wanted}")
        self.name = name
        self.holds = holds
        self.wanted = wanted


class CorruptStateError(StateError):
    """Bytes from a peer or a snapshot failed validation and were not merged; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"state rejected: {reason}")
        self.reason = reason


class PersistenceError(StateError):
    """Redis could not be read while restoring state."""


class LLMError(AgentbusError):
    """A model endpoint failed, or a model broke the protocol."""


class ModelConnectionError(LLMError):
    """Connecting to the model endpoint failed, or the connection broke before the answer ended."""


class ModelHTTPError(LLMError):
    """The endpoint answered an error status that retrying cannot fix (400, 401, 404, ...)."""

    def __init__(self, status: int, detail: str, *, endpoint: str = "") -> None:
        super().__init__(f"model endpoint {endpoint} answered {status}: {detail[:300]}")
        self.status = status
        self.detail = detail
        self.endpoint = endpoint


class ModelUnavailableError(LLMError):
    """429/5xx/connection failures outlasted the retries; ``retry_after_s`` is the server's hint, if any."""

    def __init__(self, message: str, *, endpoint: str = "", retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.retry_after_s = retry_after_s


class CircuitOpenError(LLMError):
    """The endpoint's circuit breaker is open; calls fail fast for ``retry_after_s``."""

    def __init__(self, endpoint: str, retry_after_s: float) -> None:
        super().__init__(f"circuit open for {endpoint}: next probe in {retry_after_s:.2f}s")
        self.endpoint = endpoint
        self.retry_after_s = retry_after_s


class ModelOutputError(LLMError):
    """The model kept answering with unusable output (bad tool calls, no answer) past the bound."""


class TenantLimitError(LLMError):
    """A per-tenant limit of the LLM agents was hit."""

    def __init__(self, message: str, *, tenant: str) -> None:
        super().__init__(message)
        self.tenant = tenant


class BudgetExceededError(TenantLimitError):
    """The tenant spent its token budget for the current window."""

    def __init__(self, tenant: str, used: int, limit: int, resets_in_s: float) -> None:
        super().__init__(
            f"budget exceeded: tenant {tenant!r} used {used} of {limit} tokens"
            f" (window resets in {resets_in_s:.0f}s)",
            tenant=tenant,
        )
        self.used = used
        self.limit = limit
        self.resets_in_s = resets_in_s


class RateLimitedError(TenantLimitError):
    """The tenant sends model requests faster than its rate; retry after ``retry_after_s``."""

    def __init__(self, tenant: str, rate_per_s: float, retry_after_s: float) -> None:
        super().__init__(
            f"rate limited: tenant {tenant!r} is over {rate_per_s:g} model requests/s", tenant=tenant
        )
        self.rate_per_s = rate_per_s
        self.retry_after_s = retry_after_s


class KnowledgeBaseError(AgentbusError):
    """A knowledge base refused an input (a bad name, a document too large, mixed embedders)
    or its store could not be opened."""


class EmbeddingError(KnowledgeBaseError):
    """The embeddings endpoint could not be reached or answered something unusable."""


class TaskFate(AgentbusError):
    """Base of the control-flow exceptions that decide what happens to a task."""


class Retry(TaskFate):
    """Retry the task later; ``delay_s=None`` uses the worker's jittered backoff."""

    def __init__(self, reason: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class Reject(TaskFate):
    """Do not retry: terminate the message and dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
