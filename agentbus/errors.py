"""The one exception tree of agentbus.

Everything agentbus raises on purpose derives from :class:`AgentbusError`::

    AgentbusError
    ├── ConfigError              bad configuration, found at start (exit code 2)
    ├── BusError                 talking to NATS failed
    │   ├── PublishError         a task could not be stored
    │   │   ├── StreamFullError  the stream refused it: limits reached (discard=new)
    │   │   ├── PayloadTooLargeError  bigger than the stream or server accepts
    │   │   └── NoStreamError    no stream listens on that subject
    │   ├── InvalidSubjectError  tenant or kind is not a valid subject token
    │   └── ResultTimeoutError   a waited-for result did not arrive in time
    └── TaskFate                 raised by handlers to decide a message's fate
        ├── Retry(delay_s)       retryable: nak, redeliver after the delay
        └── Reject(reason)       not retryable: term and dead-letter with the reason

``TaskFate`` subclasses are control flow, in the spirit of FastStream's
``NackMessage``/``RejectMessage``: a handler raises them, the worker turns them into
the message's fate. Any other exception from a handler counts as retryable.
"""

from __future__ import annotations

__all__ = [
    "AgentbusError",
    "BusError",
    "ConfigError",
    "InvalidSubjectError",
    "NoStreamError",
    "PayloadTooLargeError",
    "PublishError",
    "Reject",
    "ResultTimeoutError",
    "Retry",
    "StreamFullError",
    "TaskFate",
]


class AgentbusError(Exception):
    """Root of every error agentbus raises on purpose."""


class ConfigError(AgentbusError):
    """Configuration is invalid; raised at start, never mid-run."""


class BusError(AgentbusError):
    """A NATS operation failed."""


class InvalidSubjectError(BusError):
    """A tenant or kind cannot be used as a NATS subject token."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(f"invalid {field} {value!r}: use 1-64 of [A-Za-z0-9_-]")
        self.field = field
        self.value = value


class PublishError(BusError):
    """A task was not stored by JetStream; it is not queued."""

    def __init__(self, message: str, *, task_id: str = "", subject: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id
        self.subject = subject


class StreamFullError(PublishError):
    """The stream is at its message or byte limit and refuses new tasks (discard=new)."""


class PayloadTooLargeError(PublishError):
    """The encoded task is larger than the stream's max message size."""

    def __init__(self, size: int, limit: int, *, task_id: str = "", subject: str = "") -> None:
        super().__init__(
            f"task is {size} bytes, the limit is {limit} bytes", task_id=task_id, subject=subject
        )
        self.size = size
        self.limit = limit


class NoStreamError(PublishError):
    """No JetStream stream captures the subject (topology not provisioned?)."""


class ResultTimeoutError(BusError):
    """The result of a task did not arrive within the wait."""

    def __init__(self, task_id: str, timeout_s: float) -> None:
        super().__init__(f"no result for task {task_id} within {timeout_s:g}s")
        self.task_id = task_id
        self.timeout_s = timeout_s


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
