"""What Locust counted: its ``--json-file`` stats and the failures file the locustfile writes beside it.

Every Locust request of the NATS user is one task. Its ``request_type`` says how it was
sent: ``submit`` (fire-and-forget, timed until JetStream acknowledged the publish) or
``call`` (timed until the task's :class:`~bus.messages.Result` arrived) or ``warm`` (a call
made before a scenario's measured window, e.g. to open a tenant's lane in the workers: counted
as a task, never in the call percentiles). Its name is
``<tenant>/<kind>``. A failure's error is the task's fate, one of :data:`FAILURES` or
``dlq:<reason>``, and the fate says whether JetStream had stored the task:

* stored: ``dlq:<reason>`` (a Result with ``ok=false``) and ``timeout:result`` (the ack
  came, the Result did not);
* not stored: ``refused:*`` (JetStream or the client refused the publish) and
  ``timeout:ack`` (no ack in time: counted as not published, as the ack is the proof).

So ``published`` = successful requests + failures with a stored fate, per tenant. Locust's
JSON holds no error breakdown, hence ``<prefix>.failures.json`` (Locust's own error table,
written by the master at exit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from loadtest.stats import percentile

__all__ = [
    "ACK_TIMEOUT",
    "CALL",
    "DLQ_PREFIX",
    "REFUSED_PREFIX",
    "RESULT_TIMEOUT",
    "SUBMIT",
    "WARM",
    "FailureRecord",
    "LocustReport",
    "Tally",
    "failures_path",
    "read_report",
    "request_name",
    "stats_path",
    "was_stored",
]

SUBMIT = "submit"
"""Request type of a fire-and-forget publish (timed to the JetStream ack)."""
CALL = "call"
"""Request type of a publish that waits for the Result."""
WARM = "warm"
"""Request type of a call made before the measured window (a task, never in the percentiles)."""

ACK_TIMEOUT = "timeout:ack"
RESULT_TIMEOUT = "timeout:result"
DLQ_PREFIX = "dlq:"
REFUSED_PREFIX = "refused:"


def was_stored(error: str) -> bool:
    """Whether a failure with this error happened after JetStream had stored the task."""
    return error == RESULT_TIMEOUT or error.startswith(DLQ_PREFIX)


def request_name(tenant: str, kind: str) -> str:
    """The Locust request name of a task."""
    return f"{tenant}/{kind}"


def stats_path(prefix: Path) -> Path:
    """Where ``locust --json-file PREFIX`` writes its stats (it appends ``.json``)."""
    return prefix.with_name(prefix.name + ".json")


def failures_path(prefix: Path) -> Path:
    """Where the locustfile writes Locust's error table for ``--json-file PREFIX``."""
    return prefix.with_name(prefix.name + ".failures.json")


class _Entry(msgspec.Struct):
    """The part of one Locust stats entry the gate reads (Locust writes more)."""

    name: str
    method: str
    num_requests: int
    num_failures: int
    response_times: dict[int, int]
    """Response time in ms (Locust rounds above 100 ms) -> count."""


class FailureRecord(msgspec.Struct):
    """One row of Locust's error table: how often ``error`` happened to ``method name``."""

    method: str
    name: str
    error: str
    occurrences: int


@dataclass
class Tally:
    """Requests, failures, published tasks and the latency histogram of a group of requests."""

    requests: int = 0
    failures: int = 0
    published: int = 0
    times_ms: Counter[int] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        """Fold ``other`` into this tally."""
        self.requests += other.requests
        self.failures += other.failures
        self.published += other.published
        self.times_ms.update(other.times_ms)

    def percentile_ms(self, q: float) -> float | None:
        """Nearest-rank percentile of the response times; None without samples."""
        if not self.times_ms:
            return None
        return percentile(self.times_ms, q / 100)


@dataclass
class LocustReport:
    """Locust's totals, grouped by request type and tenant."""

    groups: dict[tuple[str, str], Tally]
    """``(request type, tenant)`` -> tally."""
    errors: dict[str, int]
    """Failure error -> occurrences, over all requests."""

    def total(self, *, request_type: str | None = None, tenant: str | None = None) -> Tally:
        """The tally of every group matching the given type and tenant (None matches all)."""
        out = Tally()
        for (rtype, rtenant), tally in self.groups.items():
            if request_type in (None, rtype) and tenant in (None, rtenant):
                out.add(tally)
        return out

    def request_types(self) -> list[str]:
        """Request types present, sorted."""
        return sorted({rtype for rtype, _ in self.groups})

    def tenants(self) -> list[str]:
        """Tenants present, sorted."""
        return sorted({tenant for _, tenant in self.groups})


def read_report(prefix: Path) -> LocustReport:
    """Read ``PREFIX.json`` (Locust's stats) and ``PREFIX.failures.json`` (its error table)."""
    entries = msgspec.json.decode(stats_path(prefix).read_bytes(), type=list[_Entry])
    failures_file = failures_path(prefix)
    failures = (
        msgspec.json.decode(failures_file.read_bytes(), type=list[FailureRecord])
        if failures_file.exists()
        else []
    )
    groups: dict[tuple[str, str], Tally] = {}
    for e in entries:
        tally = groups.setdefault((e.method, _tenant(e.name)), Tally())
        tally.requests += e.num_requests
        tally.failures += e.num_failures
        tally.published += e.num_requests - e.num_failures
        tally.times_ms.update(e.response_times)
    errors: Counter[str] = Counter()
    for f in failures:
        errors[f.error] += f.occurrences
        if was_stored(f.error):
            groups.setdefault((f.method, _tenant(f.name)), Tally()).published += f.occurrences
    recorded = sum(t.failures for t in groups.values())
    if entries and recorded != sum(errors.values()):
        # Without the error table every failure would count as "not stored": say so instead.
        errors["(failures without a recorded error)"] = recorded - sum(errors.values())
    return LocustReport(groups=groups, errors=dict(errors))


def _tenant(name: str) -> str:
    return name.split("/", 1)[0]
