"""Per-process maps keyed by tenant stay bounded: 10,000 tenants come and go, the maps shrink back.

Every subject token is a new tenant unless an allowlist refuses it, so nothing kept per
tenant may grow with the tenants a worker ever saw: the replica's stores, usage handles
and entry maps (evicted once a tenant's state expired and it is idle), the shared limits'
budget and rate views, the local rate buckets, and the LLM metric labels.
"""

from __future__ import annotations

from agents.llm.budget import MAX_BUCKETS, LocalLimits
from agents.llm.config import LimitsConfig
from agents.llm.metrics import OTHER, LLMCollector, LLMStats
from agents.llm.shared_limits import MAX_CACHED, SharedLimits
from agents.metrics import MAX_TENANT_LABELS, Outcome, StatsCollector, WorkerStats
from state.replica import ReplicaState

N = 10_000


class Clock:
    def __init__(self) -> None:
        self.ns = 1_000 * 10**9

    def __call__(self) -> int:
        return self.ns


def test_ten_thousand_tenants_leave_no_trace_once_idle() -> None:
    clock = Clock()
    replica = ReplicaState("w", replica_id="w", clock=clock)
    limits = SharedLimits(replica.store, LimitsConfig(requests_per_s=5.0, burst=5))
    for i in range(N):
        limits.check(f"t{i}")  # one model call each: a rate window counter in the tenant's store
    assert replica.cached_tenants() == N
    assert len(limits._rates) <= MAX_CACHED
    assert len(limits._budgets) <= MAX_CACHED

    replica.evict_idle(idle_s=600)  # not idle yet, and they hold state: nothing goes
    assert replica.cached_tenants() == N
    clock.ns += 700 * 10**9  # the windows expired long ago, and nobody asked for the stores since
    replica.collect_expired(grace_s=60)
    assert replica.evict_idle(idle_s=600) == N
    assert replica.cached_tenants() == 0
    assert replica.tenants() == []

    limits.check("t1")  # a tenant that comes back starts clean, in the replica's maps again
    assert replica.store("t1").names() != {}
    assert replica.cached_tenants() == 1
    assert limits._rates["t1"]._store is replica.store("t1")


def test_a_tenant_with_state_is_not_evicted() -> None:
    clock = Clock()
    replica = ReplicaState("w", replica_id="w", clock=clock)
    replica.record_task("acme", ok=True)
    clock.ns += 10**13
    replica.collect_expired()
    assert replica.evict_idle(idle_s=1) == 0  # usage is replicated data, not a cache
    assert replica.usage("acme")["tasks_completed"] == 1


def test_local_rate_buckets_are_bounded() -> None:
    now = [0.0]
    limits = LocalLimits(LimitsConfig(requests_per_s=100.0, burst=5), clock=lambda: now[0])
    for i in range(N):
        limits.check(f"t{i}")
        now[0] += 0.01
    assert len(limits._buckets) <= MAX_BUCKETS


def test_llm_metric_labels_are_bounded() -> None:
    stats = LLMStats()
    for i in range(N):
        stats.tokens[f"t{i}"] = 2
    stats.tool_calls[(OTHER, True)] = 3
    collector = LLMCollector("assistant", stats)
    families = {f.name: f for f in collector.collect()}
    tenants = {s.labels["tenant"] for s in families["agentbus_llm_tokens"].samples}
    assert len(tenants) == MAX_TENANT_LABELS + 1
    total = sum(s.value for s in families["agentbus_llm_tokens"].samples if s.name.endswith("_total"))
    assert total == 2 * N  # nothing is lost, the rest is under "other"
    assert {s.labels["tool"] for s in families["agentbus_llm_tool_calls"].samples} == {OTHER}


def test_worker_metric_labels_are_bounded() -> None:
    from prometheus_client import CollectorRegistry

    stats = WorkerStats("w")
    echo = stats.kind("echo")
    for i in range(N):
        echo.tasks[(f"t{i}", Outcome.OK)] += 1
    collector = StatsCollector(stats, CollectorRegistry())
    tasks = next(f for f in collector.collect() if f.name == "agentbus_tasks")
    samples = [s for s in tasks.samples if s.name.endswith("_total")]
    assert len(samples) == MAX_TENANT_LABELS + 1
    assert sum(s.value for s in samples) == N
    assert [s.value for s in samples if s.labels["tenant"] == "other"] == [N - MAX_TENANT_LABELS]
