"""What a worker checks on a task taken from the wire, before anything runs.

Every byte from NATS is hostile until validated (docs/wire.md). The
worker (``agents._runner``) dead-letters a task that breaks one of these rules before its
handler runs, so nothing after the handler can fail on input it accepted: the result
subject (``results.<tenant>.<id>``) and the reply subject are known to be valid.

* subject tokens: ``bus.subjects`` (``invalid_subject``);
* ``Nats-Msg-Id``: printable, at most :data:`MAX_MSG_ID_CHARS`; in the scoped form
  ``<tenant>:<kind>:<id>`` or ``<tenant>:<kind>:<id>:<mac>`` (:mod:`bus.msgid`) it must name
  the subject's tenant and kind;
* ``Agentbus-Reply``: a plain subject of at most :data:`MAX_REPLY_CHARS` under an allowed
  prefix (``WorkerConfig.reply_prefixes``, default ``_INBOX.``); a prefix may hold
  ``{tenant}``, which stands for the tenant of the task's subject (``_INBOX_{tenant}.``
  with auth on: a task can only direct its result into its own tenant's inbox);
* JSON nesting at most :data:`MAX_NESTING` levels (checked before decoding, and only when
  the bytes hold that many brackets at all);
* envelope id: a task id (``bus.subjects``); ``deadline`` and ``created_at``: finite epoch
  seconds in ``[0, EPOCH_MAX_S]`` (a larger one is milliseconds by mistake).

Checks of a normal task cost a few hundred nanoseconds and allocate nothing.
"""

from __future__ import annotations

import functools
import math
import re
from itertools import accumulate

from bus.messages import HDR_MSG_ID, HDR_REPLY
from bus.msgid import is_mac, split_task_msg_id
from bus.subjects import is_task_id, is_token, shown

__all__ = [
    "DEFAULT_REPLY_PREFIXES",
    "EPOCH_MAX_S",
    "MAX_MSG_ID_CHARS",
    "MAX_NESTING",
    "MAX_REPLY_CHARS",
    "TENANT_MARK",
    "check_reply_prefix",
    "msg_id_problem",
    "reply_problem",
    "task_id_of",
    "time_problem",
    "too_deep",
]

MAX_NESTING = 64
"""Deepest JSON nesting accepted (the envelope object is level 1, its payload level 2)."""
MAX_MSG_ID_CHARS = 320
"""Longest ``Nats-Msg-Id``: a signed scoped id is at most 64+64+128+22 characters and 3 colons."""
MAX_REPLY_CHARS = 255
EPOCH_MAX_S = 4_102_444_800.0
"""2100-01-01 in epoch seconds: a later deadline or creation time is a unit mistake, not a date."""
DEFAULT_REPLY_PREFIXES = ("_INBOX.",)
"""Where a worker may send a task's result besides ``results.>``: nats-py's inboxes."""
TENANT_MARK = "{tenant}"
"""In a reply prefix: the tenant of the task's subject."""

_SUBJECT = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_PREFIX = re.compile(r"(?:[A-Za-z0-9_-]+\.)+")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def too_deep(data: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the JSON in ``data`` nests deeper than ``limit`` (exact for valid JSON).

    Linear and in C but for one pass over the brackets, and only when ``data`` holds more
    than ``limit`` opening brackets at all (a short message is not even counted). Strings are
    cut out first: escaped backslashes and quotes removed (left to right, as JSON pairs them),
    the rest split on quotes.
    """
    if len(data) <= 2 * limit + 1 or data.count(b"[") + data.count(b"{") <= limit:
        return False  # valid JSON that deep needs limit+1 brackets each way; invalid fails to decode
    outside = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    brackets = outside.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def msg_id_problem(value: str, tenant: str, kind: str) -> str:
    """Why a task's ``Nats-Msg-Id`` is refused ("" if it is fine).

    Any printable value up to :data:`MAX_MSG_ID_CHARS` characters is accepted (a publisher's
    own ids keep working), except the scoped form ``<tenant>:<kind>:<id>[:<mac>]`` naming
    another tenant or kind.
    """
    if len(value) > MAX_MSG_ID_CHARS or not value.isprintable():  # (fast path: KindRunner)
        return f"{HDR_MSG_ID} {shown(value)} is not 1-{MAX_MSG_ID_CHARS} printable characters"
    if _is_own(value, tenant, kind) or (scoped := split_task_msg_id(value)) is None:
        return ""
    other_tenant, other_kind, task_id, _ = scoped
    if is_token(other_tenant) and is_token(other_kind) and is_task_id(task_id):
        return f"{HDR_MSG_ID} {shown(value)} names another tenant or kind than the subject"
    return ""


def task_id_of(value: str | None, tenant: str, kind: str) -> str:
    """The task id a ``Nats-Msg-Id`` names (for a dead letter of bytes that did not decode):
    the ``<id>`` of this tenant's and kind's scoped form (signed or not), else the whole value."""
    if not value or msg_id_problem(value, tenant, kind):
        return ""
    if not _is_own(value, tenant, kind):
        return value
    rest = value[len(tenant) + len(kind) + 2 :]
    task_id, _, mac = rest.partition(":")
    return task_id if is_mac(mac) else rest


def _is_own(value: str, tenant: str, kind: str) -> bool:
    """``value`` is ``<tenant>:<kind>:<something>`` (no slicing: no allocation)."""
    n = len(tenant)
    m = n + 1 + len(kind)
    return (
        value.startswith(tenant)
        and value.startswith(":", n)
        and value.startswith(kind, n + 1)
        and value.startswith(":", m)
    )


def reply_problem(reply: str, prefixes: tuple[str, ...], tenant: str = "") -> str:
    """Why an ``Agentbus-Reply`` is refused ("" if the worker may publish the result there);
    ``tenant``: the task's tenant, for prefixes holding ``{tenant}``."""
    if len(reply) > MAX_REPLY_CHARS or not _SUBJECT.fullmatch(reply):
        return (
            f"{HDR_REPLY} {shown(reply)} is not a plain subject "
            f"(tokens of [A-Za-z0-9_-], at most {MAX_REPLY_CHARS} characters)"
        )
    plain, templates = _split(prefixes)
    if not (reply.startswith(plain) or (templates and _under_any(reply, templates, tenant))):
        allowed = ", ".join(prefixes) or "none"
        return f"{HDR_REPLY} {shown(reply)} is not under an allowed reply prefix ({allowed})"
    return ""


@functools.lru_cache(maxsize=64)
def _split(prefixes: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The plain prefixes, and each template's text before and after ``{tenant}`` (once per config)."""
    plain = tuple(p for p in prefixes if TENANT_MARK not in p)
    templates = tuple(
        (p.partition(TENANT_MARK)[0], p.partition(TENANT_MARK)[2]) for p in prefixes if p not in plain
    )
    return plain, templates


def _under_any(reply: str, templates: tuple[tuple[str, str], ...], tenant: str) -> bool:
    """``reply`` starts with a template whose ``{tenant}`` is ``tenant`` (compared in place)."""
    if not tenant:
        return False
    for head, tail in templates:
        start = len(head)
        if (
            reply.startswith(head)
            and reply.startswith(tenant, start)
            and reply.startswith(tail, start + len(tenant))
        ):
            return True
    return False


def check_reply_prefix(prefix: str) -> str:
    """A reply prefix as configured, ending with a dot (``_INBOX`` -> ``_INBOX.``); ValueError if
    it is not a plain subject (with at most one ``{tenant}``, standing for a whole token or part of one)."""
    prefix = prefix.strip()
    if not prefix.endswith("."):
        prefix += "."
    plain = prefix.replace(TENANT_MARK, "t", 1)
    if TENANT_MARK in plain or not _PREFIX.fullmatch(plain) or len(plain) >= MAX_REPLY_CHARS:
        raise ValueError(
            f"reply prefix {prefix!r} is not a plain subject "
            f"(tokens of [A-Za-z0-9_-], at most one {TENANT_MARK})"
        )
    return prefix


def time_problem(field: str, value: float) -> str:
    """Why a ``deadline`` or ``created_at`` is refused ("" if it is epoch seconds)."""
    if 0.0 <= value <= EPOCH_MAX_S:  # False for NaN too
        return ""
    if not math.isfinite(value):
        return f"{field} {value!r} is not a finite number"
    return f"{field} {value!r} is not epoch seconds in [0, {EPOCH_MAX_S:.0f}] (milliseconds?)"
