"""Log lines about a task carry the task: tenant, kind, task id, attempt and trace id.

Two formats, chosen at the entry point (``agentbus --log-format text|json``, or
``AGENTBUS_LOG_FORMAT``): ``text`` appends the task's fields to the line, ``json``
writes one object per line with them as keys. The fields travel as the record's
``extra``; nothing is formatted unless a line is actually logged, so the task path
pays nothing for logs it does not write (:class:`TaskLog` builds its fields in
``process``, which :class:`logging.LoggerAdapter` calls only for enabled levels).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any, Protocol

__all__ = [
    "FORMATS",
    "TASK_FIELDS",
    "JsonFormatter",
    "TaskLog",
    "TextFormatter",
    "configure",
    "task_fields",
    "trace_id",
]

FORMATS = ("text", "json")
TASK_FIELDS = ("tenant", "kind", "task_id", "attempt", "trace_id")
"""The record attributes a line about a task carries (absent on other lines)."""

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def trace_id(headers: Mapping[str, str] | None) -> str:
    """The trace id of a W3C ``traceparent`` header (``00-<trace>-<span>-<flags>``), or ""."""
    value = headers.get("traceparent") if headers else None
    if not value:
        return ""
    parts = value.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def task_fields(
    tenant: str, kind: str, task_id: str, attempt: int, headers: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``extra`` of a line about one task."""
    fields: dict[str, Any] = {"tenant": tenant, "kind": kind, "task_id": task_id, "attempt": attempt}
    if tid := trace_id(headers):
        fields["trace_id"] = tid
    return fields


class _Task(Protocol):
    tenant: str
    kind: str
    task_id: str
    attempt: int

    @property
    def trace_id(self) -> str: ...


class TaskLog(logging.LoggerAdapter[logging.Logger]):
    """A handler's logger (``ctx.log``): every line carries its task's fields."""

    def __init__(self, logger: logging.Logger, task: _Task) -> None:
        super().__init__(logger, None)
        self._task = task

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        t = self._task
        fields: dict[str, Any] = {
            "tenant": t.tenant,
            "kind": t.kind,
            "task_id": t.task_id,
            "attempt": t.attempt,
        }
        if tid := t.trace_id:
            fields["trace_id"] = tid
        kwargs["extra"] = {**fields, **(kwargs.get("extra") or {})}
        return msg, kwargs


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the task's fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        attrs = record.__dict__
        for name in TASK_FIELDS:
            value = attrs.get(name)
            if value is not None and value != "":
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """The usual line, then ``[tenant=... kind=... task_id=... attempt=... trace_id=...]`` when set."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        attrs = record.__dict__
        fields = [f"{n}={attrs[n]}" for n in TASK_FIELDS if attrs.get(n) not in (None, "")]
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # a traceback stays below the line
        return f"{head} [{' '.join(fields)}]{sep}{tail}"


def configure(level: str = "WARNING", fmt: str = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), unless logging is already set up."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
