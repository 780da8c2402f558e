"""Gossip between replicas: SWIM-like membership, delta dissemination, push-pull anti-entropy.

Gossip moves opaque bytes through a :class:`state.delegate.Transport` (NATS in
``bus.gossip``, :mod:`state.gossip.memory` in tests) and hands them to a
:class:`state.delegate.Delegate` (the replicated state). The modules:

* :mod:`~state.gossip.config`: :class:`GossipConfig`, memberlist's defaults and a test preset
* :mod:`~state.gossip.membership`: SWIM failure detector, incarnations, suspicion
* :mod:`~state.gossip.dissemination`: transmit-limited queues and delta batches
* :mod:`~state.gossip.pruning`: when and where a departed replica's slots are pruned
* :mod:`~state.gossip.node`: :class:`Gossip`, which ties them together (``tick`` step function)
* :mod:`~state.gossip.memory`: the in-memory network with loss, duplication, reordering, partitions
* :mod:`~state.gossip.wire`: every message, as msgspec Structs
"""

from state.gossip.config import GossipConfig
from state.gossip.membership import MemberState
from state.gossip.memory import InMemoryNetwork, InMemoryTransport, VirtualClock
from state.gossip.node import Gossip, GossipStats

__all__ = [
    "Gossip",
    "GossipConfig",
    "GossipStats",
    "InMemoryNetwork",
    "InMemoryTransport",
    "MemberState",
    "VirtualClock",
]
