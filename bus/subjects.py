"""Subject names: one place that knows how tenants and kinds map onto NATS subjects.

``tasks.<tenant>.<kind>``, ``results.<tenant>.<task_id>``, ``dlq.<tenant>.<kind>``; and
``agentbus.state.query`` (core request/reply, answered by one worker of the queue group).
Tenants and kinds are single tokens of ``[A-Za-z0-9_-]``, 1-64 characters, so no
subject can smuggle a wildcard or an extra level into another tenant's space.
"""

from __future__ import annotations

import functools
import re

from agentbus.errors import InvalidSubjectError

__all__ = [
    "DLQ_PREFIX",
    "RESULTS_PREFIX",
    "STATE_QUERY_QUEUE",
    "STATE_QUERY_SUBJECT",
    "TASKS_PREFIX",
    "check_task_id",
    "check_token",
    "dlq_subject",
    "result_subject",
    "split_task_subject",
    "stream_subject",
    "task_subject",
]

TASKS_PREFIX = "tasks"
RESULTS_PREFIX = "results"
DLQ_PREFIX = "dlq"
STATE_QUERY_SUBJECT = "agentbus.state.query"
STATE_QUERY_QUEUE = "agentbus-state"

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def check_token(field: str, value: str) -> str:
    """Return ``value`` if it is a valid tenant or kind token, else raise."""
    if not _TOKEN.fullmatch(value):
        raise InvalidSubjectError(field, value)
    return value


def check_task_id(task_id: str) -> str:
    """Task ids end up in result subjects, so they obey the same alphabet (longer)."""
    if not _ID.fullmatch(task_id):
        raise InvalidSubjectError("task id", task_id)
    return task_id


def task_subject(tenant: str, kind: str) -> str:
    """``tasks.<tenant>.<kind>`` after validating both tokens."""
    return f"{TASKS_PREFIX}.{check_token('tenant', tenant)}.{check_token('kind', kind)}"


@functools.lru_cache(maxsize=4096)
def split_task_subject(subject: str) -> tuple[str, str]:
    """``(tenant, kind)`` of a task subject; the tenant of a task is always this one.

    (Cached: every task of a tenant and kind shares the two strings, not a copy each.)
    """
    _, tenant, kind = subject.split(".", 2)
    return tenant, kind


def result_subject(tenant: str, task_id: str) -> str:
    """``results.<tenant>.<task_id>``."""
    return f"{RESULTS_PREFIX}.{tenant}.{task_id}"


def stream_subject(tenant: str, task_id: str) -> str:
    """``results.<tenant>.<task_id>.stream``: partial results of a running task."""
    return f"{RESULTS_PREFIX}.{tenant}.{task_id}.stream"


def dlq_subject(tenant: str, kind: str) -> str:
    """``dlq.<tenant>.<kind>``."""
    return f"{DLQ_PREFIX}.{tenant}.{kind}"
