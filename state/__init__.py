"""Shared tenant state: delta-state CRDTs, a tenant-scoped store, gossip and Redis persistence.

* ``Store`` (``state.store``): one tenant's named counters, sets and registers,
  all a handler ever gets; ``ReplicaState`` (``state.replica``): every tenant on
  one replica, the gossip ``Delegate`` (``state.delegate``).
* CRDTs: ``state.counters`` (G/PN), ``state.orset`` (add-wins), ``state.lww``;
  their bytes: ``state.wire``. Each module says why it replaces the ``crdts`` package.
* ``Budget`` and ``RateLimiter`` (``state.limiter``): cluster-wide, approximate,
  with the bound documented there.
* Redis snapshots: ``state.persistence`` (imported on its own: it needs redis-py).
* Gossip: ``state.gossip``.
"""

from state.limiter import Budget, RateLimiter
from state.replica import ReplicaState
from state.store import Store, StoreLimits

__all__ = ["Budget", "RateLimiter", "ReplicaState", "Store", "StoreLimits"]
