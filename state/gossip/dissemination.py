"""Getting bytes everywhere: transmit-limited queues, delta batches and push-pull.

``Delegate.pending()`` drains the state's delta buffer, so a batch that one lossy
send dropped would be gone; gossip keeps each batch for
``retransmit_mult x ceil(log10(n+1))`` rounds (memberlist's ``TransmitLimitedQueue``),
each round sending it to ``delta_fanout`` random live peers. A batch is never
forwarded by a replica that received it (Serf re-broadcasts user events; here a
relayed batch could carry writes its relay made up, so every batch comes first-hand
from its origin, ``state._guard``). Membership updates use the same queue counted per
packet, as memberlist does. What
still gets lost is repaired by push-pull: every few seconds a replica sends its
digest to one random peer; on a mismatch the peer answers with its full state and
the opener sends back its own only when the merge left the two different.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from state.gossip.wire import Deltas

__all__ = ["DeltaLog", "TransmitLimitedQueue"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class _Item(Generic[V]):
    value: V
    size: int
    transmits: int = 0


class TransmitLimitedQueue(Generic[K, V]):
    """Items sent at most ``limit`` times each, least-sent first; a newer item replaces its key."""

    def __init__(self, size_of: Callable[[V], int]) -> None:
        self._items: dict[K, _Item[V]] = {}
        self._size_of = size_of

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: K, value: V) -> None:
        """Queue ``value``; an older item with the same key is superseded (memberlist's invalidation)."""
        self._items.pop(key, None)
        self._items[key] = _Item(value, self._size_of(value))

    def take(self, *, limit: int, max_items: int, max_bytes: int) -> list[V]:
        """Up to ``max_items`` values within ``max_bytes``, counting one transmit each."""
        out: list[V] = []
        used = 0
        # least-transmitted first: fresh news beats news most peers already have
        for key, item in sorted(self._items.items(), key=lambda kv: kv[1].transmits):
            if len(out) >= max_items:
                break
            if used + item.size > max_bytes and out:
                continue
            out.append(item.value)
            used += item.size
            item.transmits += 1
            if item.transmits >= limit:
                del self._items[key]
        return out

    def clear(self) -> None:
        """Drop everything queued."""
        self._items.clear()


class DeltaLog:
    """Delta batches waiting to be (re)sent, and the ids of batches already seen."""

    SEEN_CAPACITY = 16_384
    """Remembered batch ids; forgetting one only costs a redundant (idempotent) merge."""

    def __init__(self, origin: str, rng: random.Random) -> None:
        self.origin = origin
        # a fresh random start per process: a restarted replica's batches never look "seen"
        self._next_seq = rng.getrandbits(48) << 12
        self.queue: TransmitLimitedQueue[tuple[str, int], Deltas] = TransmitLimitedQueue(
            lambda d: len(d.data) + len(d.origin) + 16
        )
        self._seen: OrderedDict[tuple[str, int], None] = OrderedDict()

    def add_local(self, data: bytes) -> Deltas:
        """Wrap freshly drained local deltas as a batch and queue it."""
        batch = Deltas(origin=self.origin, seq=self._next_seq, data=data)
        self._next_seq += 1
        self._remember((batch.origin, batch.seq))
        self.queue.put((batch.origin, batch.seq), batch)
        return batch

    def first_sight(self, batch: Deltas) -> bool:
        """True the first time ``batch`` arrives (then merge it), False after."""
        key = (batch.origin, batch.seq)
        if key in self._seen:
            return False
        self._remember(key)
        return True

    def _remember(self, key: tuple[str, int]) -> None:
        self._seen[key] = None
        if len(self._seen) > self.SEEN_CAPACITY:
            self._seen.popitem(last=False)
