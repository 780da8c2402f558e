"""What the cluster counted: the workers' ``/metrics`` and the TASKS and DLQ streams.

Two independent witnesses, read before and after a load test:

* each worker's ``agentbus_tasks_total{tenant,kind,outcome}``: ``ok`` is a completed task,
  ``dead_lettered`` a task that went to the DLQ (``retried`` and ``handed_back`` are not
  final and are ignored);
* JetStream: ``TASKS``'s last sequence counts every task ever stored, its message count
  the tasks still queued or running (work-queue retention drops a task once it is acked
  or terminated); ``DLQ``'s last sequence counts dead letters.

The gate works on the difference of two snapshots, so a cluster that ran tasks before is
fine, as long as nobody else publishes during the run. A worker that restarts during the
run starts its counters from zero again; the gate then reports the gap rather than hide it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass, field

import httpx
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

from bus.topology import DLQ_STREAM, TASKS_STREAM

__all__ = ["ClusterCounts", "ClusterDelta", "settle", "snapshot"]

_TASKS_METRIC = "agentbus_tasks_total"
_OK = "ok"
_DEAD = "dead_lettered"


@dataclass(frozen=True)
class ClusterCounts:
    """One reading of the cluster's counters."""

    tasks_stored: int
    """``TASKS`` last sequence: tasks ever stored."""
    tasks_queued: int
    """``TASKS`` messages: tasks not yet acked or terminated."""
    dlq_stored: int
    """``DLQ`` last sequence: dead letters ever stored."""
    completed: dict[str, Counter[str]] = field(default_factory=dict)
    """Metrics URL -> tenant -> ``ok`` tasks (only the endpoints that answered)."""
    dead_lettered: dict[str, Counter[str]] = field(default_factory=dict)
    """Metrics URL -> tenant -> ``dead_lettered`` tasks."""
    unreachable: tuple[str, ...] = ()
    """Metrics URLs that did not answer."""


@dataclass(frozen=True)
class ClusterDelta:
    """What happened in the cluster between two readings."""

    stored: int
    queued: int
    """Change of the TASKS backlog (0: the run left nothing behind)."""
    dlq_stored: int
    completed: Counter[str] | None
    """Tenant -> tasks completed; None when no worker metrics were read."""
    dead_lettered: Counter[str] | None
    lost_endpoints: tuple[str, ...]
    """Metrics URLs read before but not at the end (their counts are missing)."""
    workers: int
    """Metrics endpoints that answered at the end."""

    @staticmethod
    def between(before: ClusterCounts, after: ClusterCounts, *, scraped: bool) -> ClusterDelta:
        """``after - before``; an endpoint new since ``before`` (a scaled-up worker) started at 0."""
        completed: Counter[str] | None = None
        dead: Counter[str] | None = None
        if scraped:
            completed, dead = Counter(), Counter()
            for url, tenants in after.completed.items():
                completed.update(_minus(tenants, before.completed.get(url, Counter())))
            for url, tenants in after.dead_lettered.items():
                dead.update(_minus(tenants, before.dead_lettered.get(url, Counter())))
        # Unreachable now, or gone (a retired worker): either way its counts are missing.
        gone = [u for u in before.completed if u not in after.completed]
        return ClusterDelta(
            stored=after.tasks_stored - before.tasks_stored,
            queued=after.tasks_queued - before.tasks_queued,
            dlq_stored=after.dlq_stored - before.dlq_stored,
            completed=completed,
            dead_lettered=dead,
            lost_endpoints=tuple(dict.fromkeys([*after.unreachable, *gone])),
            workers=len(after.completed),
        )

    def finished(self) -> int | None:
        """Tasks completed or dead-lettered, by the workers' counters (None without metrics)."""
        if self.completed is None or self.dead_lettered is None:
            return None
        return sum(self.completed.values()) + sum(self.dead_lettered.values())


def _minus(after: Counter[str], before: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for tenant, n in after.items():
        out[tenant] = n - before.get(tenant, 0)  # negative if the worker restarted: kept visible
    return out


async def snapshot(nc: Client, metrics_urls: list[str], http: httpx.AsyncClient) -> ClusterCounts:
    """Read the streams and every worker's ``/metrics`` once."""
    js = nc.jetstream()
    tasks_stored = tasks_queued = dlq_stored = 0
    with contextlib.suppress(NotFoundError):  # not provisioned (no worker ever ran): nothing stored
        info = await js.stream_info(TASKS_STREAM)
        tasks_stored, tasks_queued = info.state.last_seq, info.state.messages
    with contextlib.suppress(NotFoundError):
        dlq_stored = (await js.stream_info(DLQ_STREAM)).state.last_seq
    scraped = await asyncio.gather(*(_scrape(http, url) for url in metrics_urls))
    completed: dict[str, Counter[str]] = {}
    dead: dict[str, Counter[str]] = {}
    unreachable: list[str] = []
    for url, counts in zip(metrics_urls, scraped, strict=True):
        if counts is None:
            unreachable.append(url)
        else:
            completed[url], dead[url] = counts
    return ClusterCounts(
        tasks_stored=tasks_stored,
        tasks_queued=tasks_queued,
        dlq_stored=dlq_stored,
        completed=completed,
        dead_lettered=dead,
        unreachable=tuple(unreachable),
    )


async def _scrape(http: httpx.AsyncClient, url: str) -> tuple[Counter[str], Counter[str]] | None:
    """``(ok, dead_lettered)`` by tenant from one worker, None if it does not answer."""
    try:
        resp = await http.get(url)
        resp.raise_for_status()
    except httpx.HTTPError:
        return None
    ok: Counter[str] = Counter()
    dead: Counter[str] = Counter()
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name != _TASKS_METRIC:
                continue
            outcome = sample.labels.get("outcome")
            target = ok if outcome == _OK else dead if outcome == _DEAD else None
            if target is not None:
                target[sample.labels.get("tenant", "")] += int(sample.value)
    return ok, dead


async def settle(
    nc: Client,
    metrics_urls: list[str],
    http: httpx.AsyncClient,
    before: ClusterCounts,
    *,
    timeout_s: float,
    poll_s: float = 0.25,
) -> ClusterCounts:
    """Read the cluster until the run's tasks are all finished, or ``timeout_s`` passed.

    Finished: the TASKS backlog is back to where it was, and (with metrics) the workers
    counted as many completions and dead letters as JetStream stored tasks. Returns the
    last reading either way; the gate judges it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        now = await snapshot(nc, metrics_urls, http)
        delta = ClusterDelta.between(before, now, scraped=bool(metrics_urls))
        finished = delta.finished()
        if delta.queued <= 0 and (finished is None or finished >= delta.stored):
            return now
        if loop.time() >= deadline:
            return now
        await asyncio.sleep(poll_s)  # the poll period of a counter, not a guess at readiness
