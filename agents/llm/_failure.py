"""How a model endpoint's failure is told: a summary for tenants, the detail for the worker's log.

A model endpoint is the operator's: its URL may be an internal address with credentials
or a key in it, and its error bodies may echo headers, prompts or stack traces. What a
tenant receives (the failed result, the dead letter, the stream's ``done`` event) is
built from the exceptions' ``str()``, so that text names the endpoint only by its place
in the configuration (``primary``, ``fallback 1``) and says what happened in a few
words: ``model endpoint primary failed: HTTP 503 (attempt 4 of 4)``. The URL (redacted:
no user info, no query), the status and the first bytes of the body, escaped, go to the
worker's log, logger ``agentbus.llm``, and nowhere else.

``Retry-After`` (and ``retry-after-ms``) come from the same untrusted place: they are
read strictly (delta-seconds or an HTTP date, nothing else) and bounded by
``RetryConfig.retry_after_max_s``, so an endpoint cannot park a task for days.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Mapping
from datetime import UTC
from urllib.parse import urlsplit

__all__ = ["EXCERPT_BYTES", "endpoint_name", "excerpt", "log", "redact_url", "retry_after_s"]

log = logging.getLogger("agentbus.llm")

EXCERPT_BYTES = 200  # of an error body, in the log: enough for the endpoint's message

_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # delta-seconds (a fraction tolerated)
_MAX_CHARS = 64  # an IMF-fixdate is 29 characters: a longer value is neither a date nor a sane number


def endpoint_name(index: int) -> str:
    """How tenants see endpoint ``index`` of a client: ``primary``, then ``fallback 1``, ..."""
    return "primary" if index == 0 else f"fallback {index}"


def redact_url(url: str) -> str:
    """``url`` for a log line or a metric label: user info and query replaced by ``***``.

    A URL that cannot be parsed is replaced whole: it may still hold a secret."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rpartition("@")[2]
        query = "?***" if parts.query else ""
        return f"{parts.scheme}://{netloc}{parts.path}{query}" if parts.scheme else "<unparseable URL>"
    except ValueError:
        return "<unparseable URL>"


def excerpt(body: bytes, *, hide: bytes = b"") -> str:
    """The first :data:`EXCERPT_BYTES` of an endpoint's body, escaped for one log line, with
    ``hide`` (the API key, which some endpoints echo in their errors) masked."""
    if hide:
        body = body.replace(hide, b"***")
    more = len(body) - EXCERPT_BYTES
    return repr(body[:EXCERPT_BYTES]) + (f" (+{more} bytes)" if more > 0 else "")


def retry_after_s(headers: Mapping[str, str], max_s: float) -> float | None:
    """The wait an error answer asks for, in [0, ``max_s``]; None when it asks for none we can read.

    ``retry-after-ms`` (milliseconds, as OpenAI and Azure send) wins over ``Retry-After``
    (delta-seconds or an HTTP date). Negative numbers, NaN, exponents and anything else
    that is not one of those forms are ignored (the client's own backoff applies); a
    date in the past means 0; a wait longer than ``max_s`` (10^12 s, year 9999) is cut
    to ``max_s``."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        wait = _seconds(ms)
        if wait is not None:
            return min(wait / 1000, max_s)
    value = headers.get("retry-after")
    if value is None:
        return None
    wait = _seconds(value)
    if wait is None:
        wait = _until(value)
    return None if wait is None else min(wait, max_s)


def _seconds(value: str) -> float | None:
    value = value.strip()
    if len(value) > _MAX_CHARS or not _SECONDS.fullmatch(value):
        return None
    return float(value)  # at most 64 digits: finite, no exponent, never negative


def _until(value: str) -> float | None:
    """Seconds from now until the HTTP date ``value`` (0 if past); None if it is not a date."""
    if len(value) > _MAX_CHARS:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:  # "-0000": UTC by RFC 5322, not this host's zone
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
