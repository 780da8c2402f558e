"""Gossip settings: memberlist's LAN defaults as the reference, a preset for tests.

Every field carries its unit in its name. The defaults follow hashicorp/memberlist
``DefaultLANConfig`` except where agentbus gossips replicated state, not just
membership: a gossip round of 200 ms to 3 peers, push-pull every few seconds
(docs/state.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from agentbus.errors import ConfigError
from state.mac import ClusterKey

__all__ = ["GossipConfig"]


@dataclass(frozen=True, kw_only=True)
class GossipConfig:
    """How often and how widely one replica probes, gossips and repairs."""

    cluster: str = "agentbus"
    """Packets naming another cluster are dropped: separate clusters may share one NATS."""

    probe_interval_s: float = 1.0
    """memberlist LAN: one probe per node per second keeps probe load O(1) per node and
    detects a failure within a few seconds."""
    probe_timeout_s: float = 0.5
    """memberlist LAN: the 99th-percentile round trip; after it the indirect probes go out."""
    indirect_checks: int = 3
    """memberlist LAN: three helpers make one lossy path an unlikely cause of suspicion."""
    suspicion_mult: int = 4
    """memberlist LAN: suspicion lasts mult x max(1, log10 n) x probe interval at least,
    long enough for the suspect to hear about it and refute."""
    suspicion_max_timeout_mult: int = 6
    """memberlist LAN: with no independent confirmations the timeout starts this many times
    longer (Lifeguard: fewer false positives when only one prober is unhappy)."""
    retransmit_mult: int = 4
    """memberlist LAN: each update and delta batch is sent retransmit_mult x ceil(log10(n+1))
    times, which reaches every node with high probability under loss."""
    gossip_interval_s: float = 0.2
    """memberlist LAN: pending deltas leave every 200 ms."""
    gossip_nodes: int = 3
    """memberlist LAN: fan-out of one gossip round."""
    gossip_to_the_dead_s: float = 30.0
    """memberlist LAN: keep gossiping to a node declared dead this long, so a node that was
    only cut off hears it and refutes."""
    push_pull_interval_s: float = 5.0
    """memberlist LAN syncs membership every 30 s; here push-pull also repairs lost deltas,
    so it runs every 5 s."""
    announce_interval_s: float = 10.0
    """Broadcast our own liveness this often: repairs views after partitions and mass
    restarts, the case where memberlist keeps a node dead forever (memberlist#311)."""
    prune_after_s: float = 300.0
    """Akka's max-pruning-dissemination: a dead or departed replica is pruned only after
    this long, when every live replica has long since learned of its death."""
    prune_pull_timeout_s: float = 5.0
    """The pruning owner waits this long for every live peer's full state before it gives
    up on one attempt (it tries again later)."""
    max_packet_bytes: int = 512 * 1024
    """Half of nats-server's default max_payload (1 MiB): room for headers and growth."""
    max_piggyback_updates: int = 64
    """Membership updates carried per packet; the rest wait for the next one."""
    max_members: int = 1024
    """Entries in the membership table: news of more members is dropped (dead and departed
    ones make room first), so a flood of forged members cannot grow it without bound."""
    delta_fanout: int = 8
    """Peers each round's own delta batch goes to. Batches are not forwarded (a relayed batch
    could carry anyone's writes), so a replica reaches its peers itself: in clusters up to
    ``delta_fanout + 1`` replicas, every peer in one round; beyond, push-pull fills in."""
    key: ClusterKey | None = field(default=None, repr=False, compare=False)
    """The cluster key (``state.mac``): every packet is tagged with it and a packet whose tag
    does not verify is dropped (``bad_mac``). None: packets are not authenticated."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
                raise ConfigError(f"GossipConfig.{f.name} must be > 0, got {value!r}")
        if self.probe_timeout_s >= self.probe_interval_s:
            raise ConfigError("GossipConfig.probe_timeout_s must be shorter than probe_interval_s")

    @classmethod
    def lan(cls, **overrides: object) -> GossipConfig:
        """The defaults (memberlist ``DefaultLANConfig`` plus agentbus's gossip round)."""
        return dataclasses.replace(cls(), **overrides)  # type: ignore[arg-type]

    @classmethod
    def for_tests(cls, **overrides: object) -> GossipConfig:
        """Time scaled down ~10x, in the spirit of memberlist's integ_test (probe 20 ms there).

        Loopback NATS answers in well under a millisecond; the margins stay generous so a
        busy two-core CI machine does not produce false suspicions.
        """
        fast = cls(
            probe_interval_s=0.2,
            probe_timeout_s=0.1,
            gossip_interval_s=0.05,
            gossip_to_the_dead_s=3.0,
            push_pull_interval_s=0.5,
            announce_interval_s=1.0,
            # longer than any pause the timing-sensitive tests inject (the chaos test SIGSTOPs a replica for
            # 10 s), so pruning stays out of them; a replica pruned while paused is safe (it moves
            # to a new id, pruning.py) and tests/property/test_self_prune.py covers it with 2 s
            prune_after_s=60.0,
            prune_pull_timeout_s=1.0,
        )
        return dataclasses.replace(fast, **overrides)  # type: ignore[arg-type]

    def suspicion_timeouts_s(self, members: int) -> tuple[float, float]:
        """memberlist ``suspicionTimeout``: (min, max) for a cluster of ``members`` nodes."""
        node_scale = max(1.0, math.log10(max(1, members)))
        low = self.suspicion_mult * node_scale * self.probe_interval_s
        return low, low * self.suspicion_max_timeout_mult

    def retransmit_limit(self, members: int) -> int:
        """memberlist ``retransmitLimit``: sends per update for a cluster of ``members``."""
        return self.retransmit_mult * max(1, math.ceil(math.log10(members + 1)))
