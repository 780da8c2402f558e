"""The SLO gate: a scenario's bounds (``slo.toml``) applied to Locust's totals and the cluster's counters.

A run passes when every check holds:

* Locust sent at least ``min_requests`` requests and the failure ratio is at most
  ``max_failure_ratio`` (0 by default: a timeout, a refused publish or a dead-lettered
  result fails the run);
* the p99 of each bounded request type (``submit``, ``call``) is below its bound;
* accounting, on the cluster's own counters: JetStream stored exactly the tasks Locust
  counted as published; the workers completed or dead-lettered every one of them
  (``published = completed + dead-lettered``, 0 lost, per tenant); the workers' dead-letter
  count equals what the DLQ stream received; nothing is left in ``TASKS``;
* for a cluster the runner started, the pool reached ``min_peak_workers``.

:func:`judge` returns a :class:`Verdict` (written as JSON beside Locust's reports) and
:func:`render` prints it as tables.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from agentbus.errors import ConfigError
from loadtest.cluster_counts import ClusterDelta
from loadtest.locust_report import CALL, SUBMIT, LocustReport, Tally

__all__ = [
    "SLO_FILE",
    "Check",
    "ClusterSpec",
    "Scenario",
    "Slo",
    "TenantRow",
    "Verdict",
    "judge",
    "load_scenarios",
    "render",
]

SLO_FILE = Path(__file__).with_name("slo.toml")


class ClusterSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The embedded cluster ``loadtest.run`` starts for a scenario (ignored with ``--nats-url``)."""

    workers: int = 2
    max_workers: int = 2
    """Above ``workers``: the autoscaler runs with this ceiling."""
    worker_args: list[str] = []
    """Extra ``agentbus worker`` options."""


class Slo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Bounds a run must meet."""

    max_failure_ratio: float = 0.0
    p99_ms: dict[str, float] = {}
    """Request type (``submit``, ``call``) -> p99 bound in ms."""
    min_requests: int = 1
    min_peak_workers: int = 0
    """Workers the pool must have reached (checked only for a cluster the runner started)."""
    quiet_tenants: list[str] = []
    baseline_tenants: list[str] = []
    max_quiet_p99_ratio: float = 0.0
    """Above 0: the ``quiet_tenants``' call p99 over the ``baseline_tenants``' must stay below it
    (the noisy scenario: the same quiet load, behind a backlog and alone; docs/fairness.md)."""
    quiet_p99_floor_ms: float = 0.0
    """Both p99s of the ratio count as at least this: a few ms of scheduling jitter on a loaded
    machine is not a tenant waiting behind a backlog (which costs a noisy task's duration)."""


class Scenario(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One scenario of ``slo.toml``: how to load the cluster and what it must achieve."""

    user_class: str
    """The Locust user class that runs it (its tasks are tagged with the scenario's name)."""
    description: str = ""
    users: int
    task_rate_per_user: float
    """Tasks per second each Locust user aims for."""
    duration_s: float
    result_timeout_s: float = 10.0
    """How long a request-style call waits for its Result."""
    settle_s: float = 30.0
    """After Locust stops: how long the gate waits for the cluster to finish the backlog."""
    cluster: ClusterSpec = msgspec.field(default_factory=ClusterSpec)
    slo: Slo = msgspec.field(default_factory=Slo)


def load_scenarios(path: Path = SLO_FILE) -> dict[str, Scenario]:
    """Decode the scenario file strictly; a typo or a bad value raises ConfigError."""
    try:
        scenarios = msgspec.toml.decode(path.read_bytes(), type=dict[str, Scenario])
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for name, s in scenarios.items():
        if s.users < 1 or s.task_rate_per_user <= 0 or s.duration_s <= 0:
            raise ConfigError(f"{path}: [{name}] needs users >= 1, task_rate_per_user > 0, duration_s > 0")
        unknown = set(s.slo.p99_ms) - {SUBMIT, CALL}
        if unknown:
            raise ConfigError(f"{path}: [{name}.slo] p99_ms bounds unknown request types {sorted(unknown)}")
    return scenarios


class Check(msgspec.Struct):
    """One line of the verdict."""

    name: str
    measured: str
    bound: str
    ok: bool


class TenantRow(msgspec.Struct):
    """Per-tenant accounting and latency (the noisy-neighbour baseline)."""

    tenant: str
    requests: int
    failures: int
    published: int
    completed: int | None
    dead_lettered: int | None
    call_p50_ms: float | None
    call_p95_ms: float | None
    call_p99_ms: float | None
    submit_p99_ms: float | None


class Verdict(msgspec.Struct):
    """The gate's decision with everything it was based on."""

    scenario: str
    passed: bool
    checks: list[Check]
    tenants: list[TenantRow]
    errors: dict[str, int]
    """Locust failures by error."""
    notes: list[str] = []


def judge(
    scenario_name: str,
    scenario: Scenario,
    report: LocustReport,
    cluster: ClusterDelta,
    *,
    peak_workers: int | None = None,
) -> Verdict:
    """Apply ``scenario.slo`` to a run; ``peak_workers`` is known only for a cluster the runner owns."""
    slo = scenario.slo
    total = report.total()
    checks: list[Check] = []

    def check(name: str, measured: str, bound: str, ok: bool) -> None:
        checks.append(Check(name, measured, bound, ok))

    check("requests", f"{total.requests:,}", f">= {slo.min_requests:,}", total.requests >= slo.min_requests)
    ratio = total.failures / total.requests if total.requests else 0.0
    check(
        "failure ratio",
        f"{ratio:.4f} ({total.failures:,} failed)",
        f"<= {slo.max_failure_ratio:g}",
        ratio <= slo.max_failure_ratio,
    )
    for rtype, bound in sorted(slo.p99_ms.items()):
        p99 = report.total(request_type=rtype).percentile_ms(99)
        measured = "no requests" if p99 is None else f"{p99:,.0f} ms"
        check(f"p99 {rtype}", measured, f"<= {bound:,.0f} ms", p99 is not None and p99 <= bound)

    if slo.max_quiet_p99_ratio:
        quiet, calm = (_calls(report, slo.quiet_tenants), _calls(report, slo.baseline_tenants))
        measured = "no calls" if quiet is None or calm is None else f"{quiet:,.0f} / {calm:,.0f} ms"
        ok = False
        if quiet is not None and calm is not None:
            floor = slo.quiet_p99_floor_ms
            ratio = max(quiet, floor) / max(calm, floor, 1e-9)
            ok = ratio <= slo.max_quiet_p99_ratio
            measured += f" = {ratio:.2f}x" + (f" (each at least {floor:g} ms)" if floor else "")
        check("quiet p99 / calm p99 (call)", measured, f"<= {slo.max_quiet_p99_ratio:g}x", ok)

    published = total.published
    check(
        "stored by JetStream (TASKS)",
        f"{cluster.stored:,}",
        f"= published {published:,}",
        cluster.stored == published,
    )
    finished = cluster.finished()
    notes: list[str] = []
    if finished is None or cluster.completed is None or cluster.dead_lettered is None:
        notes.append("no worker /metrics given: completions inferred from JetStream only")
        completed_total = cluster.stored - cluster.dlq_stored - max(cluster.queued, 0)
        dead_total = cluster.dlq_stored
    else:
        completed_total = sum(cluster.completed.values())
        dead_total = sum(cluster.dead_lettered.values())
        check(
            "dead-lettered (workers = DLQ stream)",
            f"{dead_total:,}",
            f"= {cluster.dlq_stored:,}",
            dead_total == cluster.dlq_stored,
        )
    lost = published - completed_total - dead_total
    check(
        "lost (published - completed - dead-lettered)",
        f"{lost:,} ({published:,} - {completed_total:,} - {dead_total:,})",
        "= 0",
        lost == 0,
    )
    check("left in TASKS", f"{max(cluster.queued, 0):,}", "= 0", cluster.queued <= 0)
    if cluster.lost_endpoints:
        check("worker /metrics reachable", f"{len(cluster.lost_endpoints)} unreachable", "all", False)
        notes.append("unreachable: " + ", ".join(cluster.lost_endpoints))
    if slo.min_peak_workers:
        if peak_workers is None:
            notes.append(f"min_peak_workers {slo.min_peak_workers} not checked: the cluster is not ours")
        else:
            check(
                "peak workers",
                str(peak_workers),
                f">= {slo.min_peak_workers}",
                peak_workers >= slo.min_peak_workers,
            )
    tenants = _tenant_rows(report, cluster)
    for row in tenants:
        if row.completed is not None and row.dead_lettered is not None:
            tenant_lost = row.published - row.completed - row.dead_lettered
            if tenant_lost:
                check(f"lost of tenant {row.tenant}", f"{tenant_lost:,}", "= 0", False)
    return Verdict(
        scenario=scenario_name,
        passed=all(c.ok for c in checks),
        checks=checks,
        tenants=tenants,
        errors=dict(sorted(report.errors.items(), key=lambda kv: -kv[1])),
        notes=notes,
    )


def _calls(report: LocustReport, tenants: list[str]) -> float | None:
    """The call p99 of ``tenants`` together."""
    tally = Tally()
    for tenant in tenants:
        tally.add(report.total(request_type=CALL, tenant=tenant))
    return tally.percentile_ms(99)


def _tenant_rows(report: LocustReport, cluster: ClusterDelta) -> list[TenantRow]:
    completed = cluster.completed
    dead = cluster.dead_lettered
    names = set(report.tenants())
    if completed is not None and dead is not None:
        names |= {t for t, n in (completed + dead).items() if n}
    rows = []
    for tenant in sorted(names):
        t = report.total(tenant=tenant)
        calls = report.total(request_type=CALL, tenant=tenant)
        rows.append(
            TenantRow(
                tenant=tenant,
                requests=t.requests,
                failures=t.failures,
                published=t.published,
                completed=None if completed is None else completed.get(tenant, 0),
                dead_lettered=None if dead is None else dead.get(tenant, 0),
                call_p50_ms=calls.percentile_ms(50),
                call_p95_ms=calls.percentile_ms(95),
                call_p99_ms=calls.percentile_ms(99),
                submit_p99_ms=report.total(request_type=SUBMIT, tenant=tenant).percentile_ms(99),
            )
        )
    return rows


def render(verdict: Verdict, console: Console) -> None:
    """Print the checks, the per-tenant table and the failures."""
    checks = Table(title=f"SLO gate: {verdict.scenario}")
    for col in ("check", "measured", "bound", ""):
        checks.add_column(col, justify="right" if col in ("measured", "bound") else "left")
    for c in verdict.checks:
        checks.add_row(c.name, c.measured, c.bound, "[green]ok[/]" if c.ok else "[bold red]FAIL[/]")
    console.print(checks)

    tenants = Table(title="by tenant (latency: call = publish -> Result, submit = publish -> JetStream ack)")
    cols = ("tenant", "requests", "failed", "published", "completed", "dead-lettered")
    for col in (*cols, "call p50", "call p95", "call p99", "submit p99"):
        tenants.add_column(col, justify="left" if col == "tenant" else "right")
    for r in verdict.tenants:
        tenants.add_row(
            r.tenant,
            f"{r.requests:,}",
            f"{r.failures:,}",
            f"{r.published:,}",
            _int(r.completed),
            _int(r.dead_lettered),
            _ms(r.call_p50_ms),
            _ms(r.call_p95_ms),
            _ms(r.call_p99_ms),
            _ms(r.submit_p99_ms),
        )
    console.print(tenants)
    for error, n in Counter(verdict.errors).most_common(10):
        console.print(f"  failure [red]{error}[/]: {n:,}")
    for note in verdict.notes:
        console.print(f"  note: {note}")
    outcome = "[bold green]PASS[/]" if verdict.passed else "[bold red]FAIL[/]"
    console.print(f"{verdict.scenario}: {outcome}")


def _int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f} ms"
