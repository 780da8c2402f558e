"""Prometheus metrics of a worker's shared tenant state: its gossip node and its Redis snapshots.

Budgets and rate limits are only as good as the replicas' agreement, so the signals
that it is breaking down are exported: how many peers this replica sees and in
which state (a partition shows as peers turning ``suspect`` then ``dead``), gossip
packets and merges (a replica that stops receiving stops converging), the errors
of each kind, and with Redis whether the snapshots were loaded and the last write
succeeded. Everything is read from counters the state layer keeps anyway, at
scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agents._shared_state import SharedState
from state.gossip.membership import MemberState

__all__ = ["REJECT_REASONS", "StateCollector"]

REJECT_REASONS = (
    "bad_mac",
    "wrong_origin",
    "forged_slot",
    "forged_marker",
    "future_stamp",
    "over_limit",
    "member_limit",
)
"""Every reason of ``agentbus_gossip_rejected_total`` (a fixed set: labels stay bounded)."""


class StateCollector(Collector):
    """Exposes a :class:`SharedState` as ``agentbus_state_*`` metric families."""

    def __init__(self, state: SharedState, registry: CollectorRegistry) -> None:
        self._state = state
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        state = self._state
        tenants = GaugeMetricFamily("agentbus_state_tenants", "Tenants in this worker's replica")
        tenants.add_metric([], len(state.replica.tenants()))
        agents = GaugeMetricFamily(
            "agentbus_state_live_agents", "Workers in the live-agents set that gossip says are alive"
        )
        agents.add_metric([], len(state.live_agents()))
        yield from (tenants, agents)
        yield from self._gossip()
        yield from self._redis()

    def _gossip(self) -> Iterator[Metric]:
        gossip = self._state.gossip
        if gossip is None:  # gossip off: nothing to report
            return
        members = GaugeMetricFamily(
            "agentbus_state_gossip_peers",
            "Other replicas in this one's membership table, by state",
            labels=["state"],
        )
        counts = dict.fromkeys(MemberState, 0)
        for member in gossip.members().values():  # peers only: a replica is not in its own table
            counts[member.state] += 1
        for member_state, n in counts.items():
            members.add_metric([member_state.value], n)
        s = gossip.stats
        packets = CounterMetricFamily(
            "agentbus_state_gossip_packets", "Gossip packets sent and received", labels=["direction"]
        )
        packets.add_metric(["sent"], s.packets_sent)
        packets.add_metric(["received"], s.packets_received)
        merges = CounterMetricFamily(
            "agentbus_state_gossip_merges",
            "State merged from peers: delta batches, whole states (push-pull), duplicate batches skipped",
            labels=["kind"],
        )
        merges.add_metric(["delta"], s.delta_batches_merged)
        merges.add_metric(["full"], s.full_states_merged)
        merges.add_metric(["duplicate"], s.duplicate_batches)
        errors = CounterMetricFamily(
            "agentbus_state_gossip_errors", "Gossip packets dropped or failed, by reason", labels=["reason"]
        )
        for reason, n in (
            ("bad_packet", s.bad_packets),
            ("foreign_packet", s.foreign_packets),
            ("merge_error", s.merge_errors),
            ("oversized", s.oversized_dropped),
            ("send_error", s.send_errors),
        ):
            errors.add_metric([reason], n)
        rejected = CounterMetricFamily(
            "agentbus_gossip_rejected",
            "Gossip packets or parts of them refused as not authentic or not believable, by reason",
            labels=["reason"],
        )
        reasons = dict(s.rejected)
        for reason, n in self._state.replica.refused.items():
            reasons[reason] = reasons.get(reason, 0) + n
        for reason in REJECT_REASONS:
            rejected.add_metric([reason], reasons.get(reason, 0))
        yield from (members, packets, merges, errors, rejected)

    def _redis(self) -> Iterator[Metric]:
        state = self._state
        if state.writer is None:  # no Redis configured
            return
        loaded = GaugeMetricFamily(
            "agentbus_state_redis_loaded", "1 once every Redis snapshot of this worker's tenants is merged"
        )
        loaded.add_metric([], 1.0 if state.loaded else 0.0)
        written = GaugeMetricFamily(
            "agentbus_state_redis_write_ok", "1 while the last snapshot write to Redis succeeded"
        )
        written.add_metric([], 1.0 if state.writer.last_error is None else 0.0)
        refused = CounterMetricFamily(
            "agentbus_state_snapshots_rejected",
            "Redis snapshots refused at load, never merged: bad_mac, no_key or corrupt",
            labels=["reason"],
        )
        found = state.snapshots.rejected if state.snapshots is not None else {}
        for reason in ("bad_mac", "no_key", "corrupt"):
            refused.add_metric([reason], found.get(reason, 0))
        yield from (loaded, written, refused)
