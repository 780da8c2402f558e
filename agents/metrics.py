"""Worker metrics: plain counters on the hot path, turned into Prometheus families at scrape.

A labelled ``prometheus_client.Counter.inc`` takes a lock and a dict lookup per call;
at 50k tasks/s that alone would cost a tenth of the budget. The worker instead
bumps plain ints (one thread, one event loop) and :class:`StatsCollector` reads them
when Prometheus scrapes. All names carry the ``agentbus_`` prefix and pass
``promtool check metrics``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = [
    "LATENCY_BUCKETS_S",
    "MAX_TENANT_LABELS",
    "OTHER_TENANT",
    "KindStats",
    "Outcome",
    "StatsCollector",
    "TenantLabels",
    "WorkerStats",
    "summed",
]

MAX_TENANT_LABELS = 500
"""Tenants with a ``tenant`` label of their own in one collector's series."""
OTHER_TENANT = "other"
"""The ``tenant`` label of everything past ``MAX_TENANT_LABELS`` (a tenant named so adds up with them)."""


class TenantLabels:
    """Bounded ``tenant`` labels: the first ``cap`` tenants seen keep theirs, the rest are
    ``other`` (first come, first served, so every series stays monotonic)."""

    __slots__ = ("_cap", "_seen")

    def __init__(self, cap: int = MAX_TENANT_LABELS) -> None:
        self._cap = cap
        self._seen: dict[str, None] = {}

    def __call__(self, tenant: str) -> str:
        if tenant in self._seen:
            return tenant
        if len(self._seen) < self._cap:
            self._seen[tenant] = None
            return tenant
        return OTHER_TENANT


def summed(
    items: Iterable[tuple[tuple[str, str], int]], label: TenantLabels
) -> list[tuple[tuple[str, str], int]]:
    """``((tenant, x), n)`` items with tenants relabelled by ``label`` and equal keys added up."""
    out: dict[tuple[str, str], int] = {}
    for (tenant, x), n in items:
        key = (label(tenant), x)
        out[key] = out.get(key, 0) + n
    return sorted(out.items())


LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Outcome:
    """Values of the ``outcome`` label of ``agentbus_tasks_total``."""

    OK = "ok"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    HANDED_BACK = "handed_back"  # nakked without delay during a drain


class KindStats:
    """Counters of one agent kind in one worker."""

    __slots__ = (
        "ack_pending",
        "acks_lost",
        "buckets",
        "dead_letters",
        "fetched",
        "inflight",
        "latency_sum",
        "pending",
        "prefetched",
        "redelivered",
        "tasks",
    )

    def __init__(self) -> None:
        self.tasks: defaultdict[tuple[str, str], int] = defaultdict(int)  # (tenant, outcome)
        self.dead_letters: defaultdict[tuple[str, str], int] = defaultdict(int)  # (tenant, reason)
        self.fetched = 0
        self.redelivered = 0
        self.acks_lost = 0  # deliveries past max_deliver of a task whose result was stored
        self.buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum = 0.0
        self.pending = -1  # from consumer info; -1 until first read
        self.ack_pending = -1
        self.inflight: Callable[[], int] = lambda: 0  # the runner installs its live count
        self.prefetched: Callable[[], int] = lambda: 0  # and of messages waiting for a slot

    def observe(self, seconds: float) -> None:
        """Record one handler latency."""
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.latency_sum += seconds


class WorkerStats:
    """All counters of one worker process."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.kinds: dict[str, KindStats] = {}
        self.state = "pending"
        self.connected = False
        self.bad_frames: Callable[[], Mapping[str, int]] = dict
        """The NATS client's counts of frames its guard dropped or repaired, by reason (bus._client)."""

    def kind(self, kind: str) -> KindStats:
        """The stats of ``kind``, created on first use."""
        stats = self.kinds.get(kind)
        if stats is None:
            stats = self.kinds[kind] = KindStats()
        return stats


class StatsCollector(Collector):
    """Exposes a :class:`WorkerStats` as Prometheus metric families."""

    def __init__(self, stats: WorkerStats, registry: CollectorRegistry) -> None:
        self._stats = stats
        self._tenants = TenantLabels()
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        tasks = CounterMetricFamily(
            "agentbus_tasks",
            "Tasks finished by this worker, by outcome",
            labels=["tenant", "kind", "outcome"],
        )
        dlq = CounterMetricFamily(
            "agentbus_dead_letters", "Tasks dead-lettered by this worker", labels=["tenant", "kind", "reason"]
        )
        fetched = CounterMetricFamily(
            "agentbus_fetched", "Messages delivered to this worker", labels=["kind"]
        )
        redelivered = CounterMetricFamily(
            "agentbus_redeliveries", "Deliveries that were not the first for their message", labels=["kind"]
        )
        acks_lost = CounterMetricFamily(
            "agentbus_lost_acks",
            "Deliveries past max_deliver of tasks with a stored result: acked, not dead-lettered "
            "(an earlier delivery finished and its ack was lost)",
            labels=["kind"],
        )
        inflight = GaugeMetricFamily(
            "agentbus_inflight", "Messages being processed by this worker (in its slots)", labels=["kind"]
        )
        prefetched = GaugeMetricFamily(
            "agentbus_prefetched",
            "Messages delivered to this worker ahead, waiting for a slot",
            labels=["kind"],
        )
        pending = GaugeMetricFamily(
            "agentbus_consumer_pending", "Messages waiting in the consumer (num_pending)", labels=["kind"]
        )
        ack_pending = GaugeMetricFamily(
            "agentbus_consumer_ack_pending",
            "Messages delivered and not acked across all replicas (num_ack_pending)",
            labels=["kind"],
        )
        latency = HistogramMetricFamily(
            "agentbus_handler_seconds", "Handler run time of one attempt", labels=["kind"], unit="seconds"
        )
        for kind, k in sorted(s.kinds.items()):
            for (tenant, outcome), n in summed(k.tasks.items(), self._tenants):
                tasks.add_metric([tenant, kind, outcome], n)
            for (tenant, reason), n in summed(k.dead_letters.items(), self._tenants):
                dlq.add_metric([tenant, kind, reason], n)
            fetched.add_metric([kind], k.fetched)
            redelivered.add_metric([kind], k.redelivered)
            acks_lost.add_metric([kind], k.acks_lost)
            inflight.add_metric([kind], k.inflight())
            prefetched.add_metric([kind], k.prefetched())
            if k.pending >= 0:
                pending.add_metric([kind], k.pending)
                ack_pending.add_metric([kind], k.ack_pending)
            cumulative, running = [], 0
            for bound, n in zip((*map(str, LATENCY_BUCKETS_S), "+Inf"), k.buckets, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            latency.add_metric([kind], cumulative, k.latency_sum)
        state = GaugeMetricFamily(
            "agentbus_worker_state", "1 for the current lifecycle state", labels=["state"]
        )
        for name in ("pending", "running", "stopping", "stopped"):
            state.add_metric([name], 1.0 if s.state == name else 0.0)
        connected = GaugeMetricFamily("agentbus_nats_connected", "1 while connected to NATS")
        connected.add_metric([], 1.0 if s.connected else 0.0)
        bad_frames = CounterMetricFamily(
            "agentbus_nats_bad_frames",
            "Frames from NATS that could not be processed as sent (dropped, or subject repaired), by reason",
            labels=["reason"],
        )
        for reason, n in sorted(s.bad_frames().items()):
            bad_frames.add_metric([reason], n)
        yield from (
            tasks,
            dlq,
            fetched,
            redelivered,
            acks_lost,
            inflight,
            prefetched,
            pending,
            ack_pending,
            latency,
            state,
            connected,
            bad_frames,
        )
