"""When to prune a departed replica's slots (after Akka's ``RemovedNodePruning``).

Per-replica CRDT metadata (a counter slot, OR-Set dots) grows with every replica id
ever seen. Akka collapses a removed node's entries into one live node (the owner)
in two phases: the owner marks the data *initialized* and waits until every member
has *seen* the marker, then *performs* the collapse; markers outlive stale copies.

Here gossip decides *when* and *who*; the state decides *how*
(:class:`state.delegate.Pruning`). Safety argument:

1. **The removed replica writes no more.** Only replicas dead or left for
   ``prune_after_s`` (far beyond any suspicion timeout and refutation) qualify. A
   crashed replica restarts under a new replica id (``state.replica``), so its old id
   never writes again. A replica that was only *paused or cut off* for longer than
   ``prune_after_s`` comes back under its old id. Akka quarantines such a node; here
   the state does the same when it merges a prune marker naming itself
   (``ReplicaState._move``): it takes a new replica id and re-homes its own slot's
   surplus over the folded value, which the marker carries, so its later writes are
   neither dropped by peers nor the fold counted twice locally. Its gossip node then
   rejoins under the new id (:meth:`Gossip.rejoin`, called by the worker's upkeep), so
   the new slots can be pruned in turn. The folded values are kept ``fold_keep_s``
   (1 h): a replica back later than that counts its whole old slot as folded
   (under-counts what it never gossiped, never double-counts).
   ``tests/property/test_self_prune.py`` runs a pause and a partition past a 2 s
   ``prune_after_s`` with exact totals.
2. **The owner holds the largest value of the removed slot.** Akka's "seen by all"
   phase becomes a pull: the owner sends a push-pull digest to *every* live peer and
   prunes only when all have answered, each answer carrying that peer's full state
   when it differs. Slots only grow and the removed replica no longer writes, so the
   owner's copy then dominates every live copy: folding it loses nothing.
3. **One owner.** The owner is the smallest live id, only while no member is suspect
   and the live members are a majority of the members it knows, so the minority
   side of a partition never prunes. ``prune`` is a single delta (fold + marker) that
   replicas merge atomically, and is a no-op where the marker already exists.
4. **Stale copies cannot double-count.** The marker travels with the state; a replica
   merging data that still carries the pruned slot drops that slot (Akka's
   ``pruningCleanup``). Markers must outlive every stale copy (Akka keeps them 6 h).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from state.gossip.config import GossipConfig
from state.gossip.membership import Membership, MemberState

__all__ = ["Pruner"]


@dataclass
class _Round:
    id: int
    started: float
    candidates: list[str]
    asked: frozenset[str]
    waiting: set[str] = field(default_factory=set)


class Pruner:
    """Chooses prune candidates, elects this replica owner or not, and runs the pull phase."""

    def __init__(
        self,
        config: GossipConfig,
        membership: Membership,
        *,
        prune: Callable[[str], None] | None,
        pull: Callable[[str, int], None],
    ) -> None:
        self.config = config
        self.membership = membership
        self.pruned: list[str] = []
        """Replica ids this replica pruned as owner, in order."""
        self._prune = prune
        self._pull = pull
        self._round: _Round | None = None
        self._round_ids = 0

    def _candidates(self, now: float, age_s: float) -> list[str]:
        horizon = now - age_s
        return sorted(
            m.node
            for m in self.membership.members.values()
            if m.state in (MemberState.DEAD, MemberState.LEFT) and m.since <= horizon
        )

    def is_owner(self) -> bool:
        """Smallest live id, no suspects, and a majority of the known members alive."""
        members = self.membership.members.values()
        if any(m.state is MemberState.SUSPECT for m in members):
            return False
        alive = self.membership.alive_peers()
        if alive and min(alive) < self.membership.node:
            return False
        return 2 * (len(alive) + 1) > len(self.membership.members) + 1

    def tick(self, now: float) -> None:
        """Finish, abandon or start a pruning round; forget long-dead members we do not own."""
        if self._prune is None:
            return
        r = self._round
        if r is not None:
            if not r.waiting:
                self._round = None
                self._perform(r)
            elif now >= r.started + self.config.prune_pull_timeout_s:
                self._round = None  # someone did not answer: try again later
            return
        candidates = self._candidates(now, self.config.prune_after_s)
        if not candidates:
            return
        if not self.is_owner():
            # the owner prunes; everyone else eventually forgets the entry (never the data)
            for node in self._candidates(now, 2 * self.config.prune_after_s):
                self.membership.forget(node)
            return
        self._round_ids += 1
        alive = frozenset(self.membership.alive_peers())
        r = _Round(self._round_ids, now, candidates, alive, set(alive))
        self._round = r
        for peer in sorted(r.waiting):
            self._pull(peer, r.id)

    def on_reply(self, sender: str, round_id: int) -> None:
        """A live peer answered our pull (its state, if different, is already merged)."""
        r = self._round
        if r is not None and r.id == round_id:
            r.waiting.discard(sender)

    def _perform(self, r: _Round) -> None:
        assert self._prune is not None
        if not self.is_owner() or not set(self.membership.alive_peers()) <= r.asked:
            return  # someone joined while we pulled: its state was not pulled; next round
        for node in r.candidates:
            m = self.membership.members.get(node)
            if m is None or m.state not in (MemberState.DEAD, MemberState.LEFT):
                continue  # it came back while we pulled
            self._prune(node)
            self.membership.forget(node)
            self.pruned.append(node)
