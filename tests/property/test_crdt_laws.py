"""The laws of every CRDT type.

For G-Counter, PN-Counter, OR-Set and LWW-Register: merge is idempotent,
commutative and associative; every mutator is an inflation; merging a mutator's
delta equals merging the mutated full state (Akka #22648 is the bug this
catches); the wire form round-trips and equal states encode to equal bytes.
Then the behaviour the product relies on: concurrent increments on different
replicas all count, the OR-set is add-wins against a reference model (Riak DT's
orswot_eqc approach), removals leave no tombstones, and a whole ReplicaState
converges to the sequential model under lost, duplicated and reordered deltas.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from agentbus.errors import CorruptStateError
from state import wire
from state.counters import GCounter, PNCounter
from state.lww import LWWRegister
from state.orset import ORSet
from state.replica import ReplicaState

LAWS = settings(max_examples=200, deadline=None)
REPLICAS = ("r1", "r2", "r3")
ELEMENTS = ("a", "b", "c", "d")

T = TypeVar("T", GCounter, PNCounter, ORSet, LWWRegister)


def join(*states: T) -> T:
    """The join of ``states`` (merge is in place, so work on a copy)."""
    out = states[0].copy()
    for s in states[1:]:
        out.merge(s)
    return out


def well_formed(s: ORSet) -> bool:
    """The dot index matches the entries and every live dot is inside the causal context."""
    live = {d: e for e, dots in s.entries.items() for d in dots}
    return s._where == live and all(s.seen(d) for d in live) and all(s.entries.values())


# -- strategies --

replica_ids = st.sampled_from(REPLICAS)
expiries = st.sampled_from([0, 0, 10, 20])
slots = st.dictionaries(replica_ids, st.integers(0, 1000), max_size=3)
gcounters = st.builds(lambda s, e: GCounter(s, expires_at=e), slots, expiries)
pncounters = st.builds(lambda p, n, e: PNCounter(p, n, expires_at=e), slots, slots, expiries)
registers = st.builds(
    LWWRegister,
    st.sampled_from([b"", b"\x01", b"\x02", b"\xa1x"]),
    st.integers(0, 5),
    st.sampled_from(["", *REPLICAS]),
    expiries,
)


@st.composite
def orset_worlds(draw: st.DrawFn, n_states: int = 3) -> list[ORSet]:
    """``n_states`` OR-sets reachable in ONE execution (dots are unique only within one history)."""
    sets = {r: ORSet() for r in REPLICAS}
    for _ in range(draw(st.integers(0, 25))):
        r = draw(replica_ids)
        op = draw(st.sampled_from(["add", "add", "remove", "merge", "delta"]))
        if op == "add":
            sets[r].add(r, draw(st.sampled_from(ELEMENTS)))
        elif op == "remove":
            sets[r].remove(draw(st.sampled_from(ELEMENTS)))
        elif op == "merge":
            sets[r].merge(sets[draw(replica_ids)])
        else:  # a replica applies another's fresh add delta only (partial knowledge)
            other = draw(replica_ids)
            if other != r:
                sets[r].merge(sets[other].add(other, draw(st.sampled_from(ELEMENTS))))
    return [sets[draw(replica_ids)].copy() for _ in range(n_states)]


# -- the three laws, every type --

ALL_TYPES: list[tuple[str, Callable[[], st.SearchStrategy[list[Any]]]]] = [
    ("gcounter", lambda: st.lists(gcounters, min_size=3, max_size=3)),
    ("pncounter", lambda: st.lists(pncounters, min_size=3, max_size=3)),
    ("orset", lambda: orset_worlds()),
    ("lww", lambda: st.lists(registers, min_size=3, max_size=3)),
]


@pytest.mark.parametrize(("kind", "states"), ALL_TYPES, ids=[k for k, _ in ALL_TYPES])
def test_merge_is_idempotent_commutative_associative(kind: str, states: Callable[[], Any]) -> None:
    @LAWS
    @given(states())
    def laws(abc: list[Any]) -> None:
        a, b, c = abc
        assert join(a, a) == a
        assert join(a, b) == join(b, a)
        assert join(join(a, b), c) == join(a, join(b, c))
        assert join(a, b, b) == join(a, b)
        if kind == "orset":
            assert all(well_formed(s) for s in (join(a, b), join(b, a), join(join(a, b), c)))

    laws()


# -- mutators: inflation and delta == full-state merge --


def _mutations(draw: st.DrawFn, kind: str, state: Any) -> tuple[Any, Any]:
    """Apply one random mutator to ``state`` in place; return (pre-state copy, delta)."""
    before = state.copy()
    r = draw(replica_ids)
    if kind == "gcounter":
        return before, state.increment(r, draw(st.integers(0, 50)))
    if kind == "pncounter":
        n = draw(st.integers(0, 50))
        return before, state.increment(r, n) if draw(st.booleans()) else state.decrement(r, n)
    if kind == "orset":
        e = draw(st.sampled_from(ELEMENTS))
        return before, state.add(r, e) if draw(st.booleans()) else state.remove(e)
    value = draw(st.sampled_from([b"", b"\x01", b"\x02"]))
    return before, state.write(r, value, draw(st.integers(0, 10)), expires_at=draw(expiries))


@st.composite
def mutation_cases(draw: st.DrawFn, kind: str) -> tuple[Any, Any, Any, Any]:
    """(peer state y, pre-state x, delta d, post-state x') with y and x from one world."""
    if kind == "orset":
        y, x, _ = draw(orset_worlds())
        # the mutating replica must own the dots it makes: mutate as a replica id no world uses
        before = x.copy()
        e = draw(st.sampled_from(ELEMENTS))
        d = x.add("rx", e) if draw(st.booleans()) else x.remove(e)
        return y, before, d, x
    gen: Any = {"gcounter": gcounters, "pncounter": pncounters, "lww": registers}[kind]
    y, x = draw(gen), draw(gen)
    before, d = _mutations(draw, kind, x)
    return y, before, d, x


@pytest.mark.parametrize("kind", ["gcounter", "pncounter", "orset", "lww"])
def test_delta_merge_equals_full_state_merge(kind: str) -> None:
    @LAWS
    @given(mutation_cases(kind))
    def law(case: tuple[Any, Any, Any, Any]) -> None:
        y, before, delta, after = case
        assert join(before, delta) == after, "x ⊔ δ must be the mutated state"
        assert join(before, after) == after, "mutators are inflations"
        # a peer that had the old state gets the same from the delta as from the new full state
        assert join(y, before, delta) == join(y, after)
        assert join(y, delta, before) == join(y, after)

    law()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(replica_ids, st.integers(0, 20), st.booleans()), max_size=30))
def test_joined_delta_groups_equal_the_deltas_one_by_one(ops: list[tuple[str, int, bool]]) -> None:
    state, group, target = PNCounter(), PNCounter(), PNCounter({"r9": 4})
    one_by_one = target.copy()
    for r, n, up in ops:
        d = state.increment(r, n) if up else state.decrement(r, n)
        group.merge(d)
        one_by_one.merge(d)
    assert join(target, group) == one_by_one == join(target, state)


# -- wire --


@pytest.mark.parametrize(("kind", "states"), ALL_TYPES, ids=[k for k, _ in ALL_TYPES])
def test_wire_round_trips_and_is_deterministic(kind: str, states: Callable[[], Any]) -> None:
    @LAWS
    @given(states())
    def law(abc: list[Any]) -> None:
        a, b, _ = abc
        for s in (a, join(a, b)):
            assert wire.from_wire(wire.to_wire(s)) == s
        ab, ba = join(a, b), join(b, a)
        assert wire.fingerprint({"t": {"x": wire.to_wire(ab)}}) == wire.fingerprint(
            {"t": {"x": wire.to_wire(ba)}}
        )

    law()


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_bit_flip_or_truncation_is_rejected(data: st.DataObject) -> None:
    replica = ReplicaState("w", replica_id="w-1")
    replica.store("acme").counter("tasks").increment(data.draw(st.integers(0, 10**6)))
    replica.store("acme").set("agents").add(data.draw(st.text(min_size=1, max_size=20)))
    blob = bytearray(replica.full_state())
    if data.draw(st.booleans()):
        bit = data.draw(st.integers(0, len(blob) * 8 - 1))
        blob[bit // 8] ^= 1 << (bit % 8)
    else:
        del blob[data.draw(st.integers(0, len(blob) - 1)) :]
    peer = ReplicaState("p", replica_id="p-1")
    with pytest.raises(CorruptStateError):
        peer.merge(bytes(blob))
    assert peer.tenants() == [], "nothing may be half-merged"


# -- what the product relies on --


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 100), min_size=2, max_size=7), st.randoms(use_true_random=False))
def test_concurrent_increments_on_different_replicas_all_count(
    amounts: list[int], rnd: random.Random
) -> None:
    replicas = [ReplicaState(f"n{i}") for i in range(len(amounts))]
    for r, n in zip(replicas, amounts, strict=True):
        r.store("acme").counter("tasks").increment(n)
        r.store("acme").pncounter("budget").increment(n)
        r.store("acme").pncounter("budget").decrement(1)
    deltas = [r.pending() for r in replicas]
    for r in replicas:  # every replica gets every delta, in its own random order, some twice
        order = [d for d in deltas if d is not None] * 2
        rnd.shuffle(order)
        for d in order:
            r.merge(d)
    for r in replicas:
        assert r.store("acme").counter("tasks").value == sum(amounts)
        assert r.store("acme").pncounter("budget").value == sum(amounts) - len(amounts)
    assert len({r.digest() for r in replicas}) == 1


def test_the_crdts_counter_bug_does_not_happen_here() -> None:
    """``crdts.Counter`` converges to 1 after +1 on two replicas (module docstring); ours to 2."""
    a, b = GCounter(), GCounter()
    da, db = a.increment("a"), b.increment("b")
    a.merge(db)
    b.merge(da)
    assert a.value == b.value == 2


def test_concurrent_add_wins_over_a_remove_that_did_not_see_it() -> None:
    a, b = ORSet(), ORSet()
    b.merge(a.add("a", "x"))
    remove = b.remove("x")  # b saw the first add only
    readd = a.add("a", "x")  # concurrent with the remove
    a.merge(remove)
    b.merge(readd)
    assert "x" in a
    assert "x" in b
    assert a == b


class _Model:
    """Reference OR-set: each add has a unique id; a remove cancels the adds its replica knows."""

    def __init__(self) -> None:
        self.known: dict[str, set[tuple[str, int]]] = {r: set() for r in REPLICAS}
        self.cancelled: dict[str, set[tuple[str, int]]] = {r: set() for r in REPLICAS}
        self.next = 0

    def add(self, r: str, e: str) -> None:
        self.next += 1
        self.known[r].add((e, self.next))

    def remove(self, r: str, e: str) -> None:
        self.cancelled[r] |= {a for a in self.known[r] if a[0] == e}

    def sync(self, src: str, dst: str) -> None:
        self.known[dst] |= self.known[src]
        self.cancelled[dst] |= self.cancelled[src]

    def read(self, r: str) -> frozenset[str]:
        return frozenset(e for e, _ in self.known[r] - self.cancelled[r])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove", "sync"]), replica_ids, replica_ids, st.sampled_from(ELEMENTS)
        ),
        max_size=40,
    )
)
def test_orset_matches_the_add_wins_model_after_every_step(ops: list[tuple[str, str, str, str]]) -> None:
    sets = {r: ORSet() for r in REPLICAS}
    model = _Model()
    for op, r, other, e in ops:
        if op == "add":
            sets[r].add(r, e)
            model.add(r, e)
        elif op == "remove":
            sets[r].remove(e)
            model.remove(r, e)
        else:
            sets[other].merge(sets[r])
            model.sync(r, other)
        for name in REPLICAS:
            assert sets[name].elements() == model.read(name)
            assert well_formed(sets[name])
    final = join(*sets.values())
    for name in REPLICAS:
        for src in REPLICAS:
            model.sync(src, name)
    assert final.elements() == model.read("r1")


def test_removals_leave_no_tombstones() -> None:
    rnd = random.Random(7)
    sets = {r: ORSet() for r in REPLICAS}
    for i in range(3000):  # 3000 add/remove cycles over 3 replicas with deltas and full syncs
        r = rnd.choice(REPLICAS)
        e = f"e{i % 50}"
        d = sets[r].add(r, e) if rnd.random() < 0.6 else sets[r].remove(e)
        sets[rnd.choice(REPLICAS)].merge(d)
        if i % 97 == 0:
            sets[rnd.choice(REPLICAS)].merge(sets[rnd.choice(REPLICAS)])
    final = join(*sets.values())
    assert len(final.vv) <= len(REPLICAS)
    assert final.cloud == set()
    assert all(len(dots) <= len(REPLICAS) for dots in final.entries.values())
    size = len(wire.encode(wire.StateMessage("x", True, {"t": {"s": wire.to_wire(final)}})))
    assert size < 40 * len(final.entries) + 64 * len(REPLICAS) + 64, size


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["incr", "decr", "add", "remove", "write", "send", "drop", "full"]),
            st.integers(0, 2),
            st.integers(0, 2),
            st.integers(1, 9),
        ),
        max_size=60,
    ),
    st.randoms(use_true_random=False),
)
def test_replicas_converge_to_the_model_over_a_lossy_reordering_network(
    ops: list[tuple[str, int, int, int]], rnd: random.Random
) -> None:
    """Deltas may be lost, duplicated or reordered; a final push-pull of full states repairs all."""
    replicas = [ReplicaState(f"n{i}") for i in range(3)]
    inbox: list[list[bytes]] = [[], [], []]
    incr = decr = 0
    for op, i, j, n in ops:
        store = replicas[i].store("acme")
        if op == "incr":
            store.counter("c").increment(n)
            incr += n
        elif op == "decr":
            store.pncounter("p").decrement(n)
            decr += n
        elif op == "add":
            store.set("s").add(f"e{n % 4}")
        elif op == "remove":
            store.set("s").discard(f"e{n % 4}")
        elif op == "write":
            store.register("r").set(n)
        elif op == "send":
            blob = replicas[i].pending()
            if blob is not None:
                inbox[j].extend([blob] * (1 + n % 2))  # sometimes duplicated
        elif op == "drop" and inbox[j]:
            inbox[j].pop(rnd.randrange(len(inbox[j])))
        else:
            replicas[j].merge(replicas[i].full_state())
        if rnd.random() < 0.5 and inbox[j]:  # deliver some mail, out of order
            replicas[j].merge(inbox[j].pop(rnd.randrange(len(inbox[j]))))
    for _ in range(2):  # push-pull all pairs
        for a in replicas:
            for b in replicas:
                b.merge(a.full_state())
    assert len({r.digest() for r in replicas}) == 1
    for r in replicas:
        assert r.store("acme").counter("c").value == incr
        assert r.store("acme").pncounter("p").value == -decr


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["incr", "decr", "send", "deliver", "kill", "prune", "full"]),
            st.integers(0, 3),
            st.integers(0, 3),
            st.integers(1, 9),
        ),
        max_size=60,
    ),
    st.randoms(use_true_random=False),
)
def test_pruning_a_departed_replica_neither_loses_nor_double_counts(
    ops: list[tuple[str, int, int, int]], rnd: random.Random
) -> None:
    """n3 counts, dies, and is pruned by n0; its late deltas and stale full state still arrive."""
    replicas = [ReplicaState(f"n{i}") for i in range(4)]
    dead_id = replicas[3].replica_id
    inbox: list[bytes] = []
    dead = pruned = False
    total = increments = 0
    for op, i, j, n in ops:
        if i == 3 and dead:
            i = 1
        store = replicas[i].store("acme")
        if op == "incr":
            store.counter("c").increment(n)
            store.pncounter("p").increment(n)
            total += n
            increments += n
        elif op == "decr":
            store.pncounter("p").decrement(n)
            total -= n
        elif op == "send":
            blob = replicas[i].pending()
            if blob is not None:
                inbox.extend([blob] * (1 + n % 2))
        elif op == "deliver" and inbox:
            target = replicas[j if j < 3 or not dead else 2]
            target.merge(inbox.pop(rnd.randrange(len(inbox))))
        elif op == "kill":
            dead = True
        elif op == "prune" and dead and not pruned:
            for peer in replicas[1:]:  # the owner pulls every peer first (and the dead one's last state)
                replicas[0].merge(peer.full_state())
            replicas[0].prune(dead_id)
            pruned = True
            blob = replicas[0].pending()
            assert blob is not None
            inbox.append(blob)
        elif op == "full" and not (dead and j == 3):
            replicas[j].merge(replicas[i].full_state())
    event(f"pruned={pruned}")
    live = replicas[:3] if dead else replicas
    rnd.shuffle(inbox)
    for blob in inbox:  # late deltas, the dead replica's included, in any order
        for r in live:
            r.merge(blob)
    stale = replicas[3].full_state()  # e.g. its old Redis snapshot, restored by someone
    for _ in range(2):
        for a in replicas if not dead else [*live, replicas[3]]:
            for b in live:
                b.merge(a.full_state() if a is not replicas[3] else stale)
    assert len({r.digest() for r in live}) == 1
    for r in live:
        assert r.store("acme").counter("c").value == increments
        assert r.store("acme").pncounter("p").value == total
        if pruned:
            crdt = r._tenants["acme"].entries.get("c")
            assert not isinstance(crdt, GCounter) or dead_id not in crdt.slots
