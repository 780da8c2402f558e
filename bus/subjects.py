"""Subject names: one place that knows how tenants and kinds map onto NATS subjects.

``tasks.<tenant>.<kind>``, ``results.<tenant>.<task_id>``, ``dlq.<tenant>.<kind>``; and
``agentbus.state.query`` (core request/reply, answered by one worker of the queue group).
Tenants and kinds are single tokens of ``[A-Za-z0-9_-]``, 1-64 characters, starting with a
letter or digit (a leading ``_`` is the system's: ``_invalid``), so no subject can smuggle a
wildcard or an extra level into another tenant's space. Task ids are 1-128 of the same
characters, since they end up in result subjects.
"""

from __future__ import annotations

import functools
import re

from agentbus.errors import InvalidSubjectError

__all__ = [
    "DLQ_PREFIX",
    "INVALID_TOKEN",
    "RESULTS_PREFIX",
    "STATE_QUERY_QUEUE",
    "STATE_QUERY_SUBJECT",
    "TASKS_PREFIX",
    "check_task_id",
    "check_token",
    "dlq_subject",
    "is_task_id",
    "is_token",
    "result_subject",
    "shown",
    "split_task_subject",
    "stream_subject",
    "subject_problem",
    "task_subject",
]

TASKS_PREFIX = "tasks"
RESULTS_PREFIX = "results"
DLQ_PREFIX = "dlq"
STATE_QUERY_SUBJECT = "agentbus.state.query"
STATE_QUERY_QUEUE = "agentbus-state"
INVALID_TOKEN = "_invalid"
"""Tenant (and kind) of a dead letter whose task subject had an invalid token: ``dlq._invalid.<kind>``."""

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SHOWN_CHARS = 100

is_token = _TOKEN.fullmatch
"""Truthy if the string is a valid tenant or kind token."""
is_task_id = _ID.fullmatch
"""Truthy if the string is a valid task id."""


def shown(value: str, limit: int = _SHOWN_CHARS) -> str:
    """``value`` escaped for a log line or a detail (``ascii()``), cut to about ``limit`` chars.

    Whatever came from the wire is shown this way, never raw: no terminal escapes, no
    forged log lines, no megabyte of id in a log.
    """
    text = ascii(value[: limit + 1])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_token(field: str, value: str) -> str:
    """Return ``value`` if it is a valid tenant or kind token, else raise."""
    if not _TOKEN.fullmatch(value):
        raise InvalidSubjectError(field, value, "1-64 of [A-Za-z0-9_-] starting with a letter or digit")
    return value


def check_task_id(task_id: str) -> str:
    """Task ids end up in result subjects, so they obey the same alphabet (longer)."""
    if not _ID.fullmatch(task_id):
        raise InvalidSubjectError("task id", task_id, "1-128 of [A-Za-z0-9_-]")
    return task_id


def task_subject(tenant: str, kind: str) -> str:
    """``tasks.<tenant>.<kind>`` after validating both tokens."""
    return f"{TASKS_PREFIX}.{check_token('tenant', tenant)}.{check_token('kind', kind)}"


@functools.lru_cache(maxsize=4096)
def split_task_subject(subject: str) -> tuple[str, str]:
    """``(tenant, kind)`` of a task subject; the tenant of a task is always this one.

    A subject with a token that is not valid (decoded with replacement characters, too long)
    has the tenant :data:`INVALID_TOKEN`, and that kind too if the kind is the invalid one;
    :func:`subject_problem` says why.
    (Cached: every task of a tenant and kind shares the two strings, not a copy each.)
    """
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != TASKS_PREFIX:
        return INVALID_TOKEN, INVALID_TOKEN
    _, tenant, kind = parts
    if not _TOKEN.fullmatch(kind):
        return INVALID_TOKEN, INVALID_TOKEN
    if not _TOKEN.fullmatch(tenant):
        return INVALID_TOKEN, kind
    return tenant, kind


def subject_problem(subject: str) -> str:
    """Why ``subject`` is not a valid task subject ("" if it is)."""
    parts = subject.split(".")
    if len(parts) != 3 or parts[0] != TASKS_PREFIX:
        return f"subject {shown(subject)} is not tasks.<tenant>.<kind>"
    for field, token in zip(("tenant", "kind"), parts[1:], strict=True):
        if not _TOKEN.fullmatch(token):
            return (
                f"{field} token {shown(token)} is not 1-64 of [A-Za-z0-9_-] starting with a letter or digit"
            )
    return ""


def result_subject(tenant: str, task_id: str) -> str:
    """``results.<tenant>.<task_id>``."""
    return f"{RESULTS_PREFIX}.{tenant}.{task_id}"


def stream_subject(tenant: str, task_id: str) -> str:
    """``results.<tenant>.<task_id>.stream``: partial results of a running task."""
    return f"{RESULTS_PREFIX}.{tenant}.{task_id}.stream"


def dlq_subject(tenant: str, kind: str) -> str:
    """``dlq.<tenant>.<kind>``."""
    return f"{DLQ_PREFIX}.{tenant}.{kind}"
