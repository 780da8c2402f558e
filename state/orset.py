"""Add-wins observed-remove set with dots and a compact causal context (no tombstones).

The delta-state AWORSet of Almeida, Shoker and Baquero (2018, section 7):

* every add makes a fresh dot ``(replica, seq)``; an element is in the set while it
  holds at least one live dot;
* the causal context records every dot the state has seen, live or removed, as a
  version vector (each replica's contiguous prefix) plus a small "cloud" of dots
  that arrived out of order. A removed element leaves nothing behind but the dot
  in that context, so removals do not grow tombstones: the size is
  O(live elements + replicas), and the cloud empties as gaps fill;
* merge keeps a dot when both sides hold it, or when one holds it and the other
  has not seen it. So a remove cancels only the adds it observed and a concurrent
  add wins.

Why not ``crdts.ORSet``: it orders adds and removes by a Lamport timestamp, so a
remove whose clock is ahead cancels a concurrent re-add it never saw (checked: an
add concurrent with a remove converges to the empty set; this is a LWW-element-set,
not add-wins), and every removed member stays in its ``removed`` set forever
(1000 add/remove cycles leave 1000 tombstones). It is also an order of magnitude
slower per add (docs/performance.md, "Our own HTTP client and CRDTs").

Deltas are themselves ORSets (an add: the new dot plus the dots it supersedes; a
remove: only context), so ``merge(state, delta) == merge(state, mutated state)``.
Dot-set deltas need causal delivery for intermediate reads to be exact (Akka's
caveat); gossip's periodic full-state push-pull repairs any gap.
"""

from __future__ import annotations

from state.counters import MAX_COUNT

__all__ = ["Dot", "ORSet"]

Dot = tuple[str, int]
"""``(replica id, sequence number)`` of one add; unique because every restart takes a new replica id."""

_NONE: frozenset[Dot] = frozenset()


class ORSet:
    """Add-wins set of strings; mutators return deltas."""

    __slots__ = ("_where", "cloud", "entries", "vv")

    def __init__(self) -> None:
        self.entries: dict[str, set[Dot]] = {}
        """Element -> its live dots (usually one)."""
        self.vv: dict[str, int] = {}
        """Causal context, contiguous part: every dot (r, 1..vv[r]) has been seen."""
        self.cloud: set[Dot] = set()
        """Causal context, the dots seen beyond ``vv`` (out-of-order arrivals)."""
        self._where: dict[Dot, str] = {}
        # live dot -> element, so merging a small delta need not scan every element

    # -- reads --

    def __contains__(self, element: object) -> bool:
        return element in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def elements(self) -> frozenset[str]:
        """The members."""
        return frozenset(self.entries)

    def seen(self, dot: Dot) -> bool:
        """Whether the causal context holds ``dot``."""
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    # -- mutators --

    def add(self, replica: str, element: str) -> ORSet:
        """Add ``element`` with a fresh dot of ``replica``; returns the delta."""
        # own dots are made in order and all kept in the context, so vv[replica] is the last one
        dot = (replica, self.vv.get(replica, 0) + 1)
        if dot[1] > MAX_COUNT:
            raise ValueError(f"replica {replica!r} has no sequence numbers left")
        delta = ORSet()
        old = self.entries.get(element)
        if old:
            for d in old:
                del self._where[d]
            delta.cloud.update(old)
        self.entries[element] = {dot}
        self._where[dot] = element
        self.vv[replica] = dot[1]
        delta.entries[element] = {dot}
        delta._where[dot] = element
        delta.cloud.add(dot)
        delta._compact()
        return delta

    def remove(self, element: str) -> ORSet:
        """Remove ``element`` (every add observed here); returns the delta, empty if absent."""
        delta = ORSet()
        old = self.entries.pop(element, None)
        if old:
            for d in old:
                del self._where[d]
            delta.cloud.update(old)
            delta._compact()
        return delta

    # -- join --

    def merge(self, other: ORSet) -> None:
        """Join ``other`` into this set (idempotent, commutative, associative)."""
        # 1. drop our live dots that the other side has seen and no longer holds
        if other.vv:
            for element, dots in list(self.entries.items()):
                theirs = other.entries.get(element, _NONE)
                for d in [d for d in dots if d not in theirs and other.seen(d)]:
                    self._drop(element, d)
        else:  # a typical delta: its context is a few cloud dots, look them up
            for d in other.cloud:
                holder = self._where.get(d)
                if holder is not None and d not in other.entries.get(holder, _NONE):
                    self._drop(holder, d)
        # 2. take their live dots that we have never seen (our context before this merge)
        for element, dots in other.entries.items():
            mine = self.entries.get(element)
            for d in dots:
                if (mine is None or d not in mine) and not self.seen(d):
                    if mine is None:
                        mine = self.entries[element] = set()
                    mine.add(d)
                    self._where[d] = element
        # 3. the contexts join
        for replica, seq in other.vv.items():
            if seq > self.vv.get(replica, 0):
                self.vv[replica] = seq
        self.cloud |= other.cloud
        self._compact()

    def _drop(self, element: str, dot: Dot) -> None:
        dots = self.entries[element]
        dots.discard(dot)
        del self._where[dot]
        if not dots:
            del self.entries[element]

    def _compact(self) -> None:
        """Fold cloud dots that extend a replica's contiguous prefix into ``vv`` (canonical form)."""
        if not self.cloud:
            return
        for replica, seq in sorted(self.cloud):
            top = self.vv.get(replica, 0)
            if seq == top + 1:
                self.vv[replica] = seq
                self.cloud.discard((replica, seq))
            elif seq <= top:
                self.cloud.discard((replica, seq))

    # -- plumbing --

    @classmethod
    def from_parts(cls, entries: dict[str, set[Dot]], vv: dict[str, int], cloud: set[Dot]) -> ORSet:
        """Build from decoded parts; raises ValueError if a live dot is outside the context."""
        s = cls()
        s.vv = {r: q for r, q in vv.items() if q > 0}
        s.cloud = set(cloud)
        s._compact()
        for element, dots in entries.items():
            if not dots:
                continue
            for d in dots:
                if not s.seen(d):
                    raise ValueError(f"dot {d} of {element!r} is outside the causal context")
                if d in s._where:
                    raise ValueError(f"dot {d} is live on two elements")
                s._where[d] = element
            s.entries[element] = set(dots)
        return s

    def copy(self) -> ORSet:
        """An independent copy."""
        s = ORSet()
        s.entries = {e: set(d) for e, d in self.entries.items()}
        s.vv = dict(self.vv)
        s.cloud = set(self.cloud)
        s._where = dict(self._where)
        return s

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet):
            return NotImplemented
        return self.entries == other.entries and self.vv == other.vv and self.cloud == other.cloud

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORSet(entries={self.entries!r}, vv={self.vv!r}, cloud={sorted(self.cloud)!r})"
