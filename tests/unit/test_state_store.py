"""The tenant store: API surface, isolation, limits, kinds, expiry, budgets."""

from __future__ import annotations

import inspect

import msgspec
import pytest

import state
from agentbus.errors import AgentbusError, CorruptStateError, StateError, StateLimitError, StateTypeError
from state import wire
from state.limiter import Budget, RateLimiter
from state.replica import ReplicaState
from state.store import CounterView, PNCounterView, RegisterView, SetView, Store, StoreLimits


class Clock:
    """A wall clock the test moves by hand (Unix ns)."""

    def __init__(self, now_s: float = 1_700_000_000.0) -> None:
        self.now = int(now_s * 1e9)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


def sync(*replicas: ReplicaState) -> None:
    """Every replica's pending deltas to every other one."""
    blobs = [(r, r.pending()) for r in replicas]
    for src, blob in blobs:
        for dst in replicas:
            if dst is not src and blob is not None:
                dst.merge(blob)


# -- surface --


def test_exported_names() -> None:
    assert sorted(state.__all__) == [
        "Budget",
        "RateLimiter",
        "ReplicaState",
        "Store",
        "StoreLimits",
    ]
    assert sorted(state.store.__all__) == [
        "CounterView",
        "PNCounterView",
        "RegisterView",
        "SetView",
        "Store",
        "StoreLimits",
    ]


PUBLIC_TYPES = [Store, CounterView, PNCounterView, SetView, RegisterView]


@pytest.mark.parametrize("cls", PUBLIC_TYPES, ids=lambda c: c.__name__)
def test_no_public_method_of_a_store_takes_a_tenant(cls: type) -> None:
    """Once a handler holds a store, no call can name another tenant (Store() itself makes a new one)."""
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or not callable(member):
            continue
        params = inspect.signature(member).parameters
        assert "tenant" not in params, f"{cls.__name__}.{name} takes a tenant"


def test_nothing_public_on_a_store_reaches_the_replica_or_other_tenants() -> None:
    replica = ReplicaState("w")
    replica.store("B").counter("secret").increment(42)
    store = replica.store("A")
    seen: list[object] = []

    def walk(obj: object, depth: int) -> None:
        seen.append(obj)
        if depth == 0:
            return
        for name in dir(obj):
            if name.startswith("_"):
                continue
            try:
                value = getattr(obj, name)
            except Exception:
                continue
            if not callable(value):
                walk(value, depth - 1)

    walk(store, 3)
    walk(store.counter("x"), 3)
    assert all(not isinstance(o, ReplicaState) for o in seen)
    assert "B" not in {getattr(o, "tenant", None) for o in seen}


def test_tenants_with_equal_names_are_separate() -> None:
    replica = ReplicaState("w")
    a, b = replica.store("A"), replica.store("B")
    a.counter("tasks").increment(3)
    a.set("agents").add("x")
    a.register("flag").set(True)
    assert b.counter("tasks").value == 0
    assert b.set("agents").members() == frozenset()
    assert b.register("flag").get() is None
    assert b.names() == {}
    assert a.tenant == "A"
    assert b.tenant == "B"


def test_gossip_of_one_tenant_never_reaches_another() -> None:
    sender, receiver = ReplicaState("s"), ReplicaState("r")
    receiver.store("B").counter("tasks").increment(5)
    before = receiver.store("B").snapshot()
    sender.store("A").counter("tasks").increment(7)
    sender.store("A").set("agents").add("a1")
    receiver.merge(sender.pending() or b"")
    receiver.merge(sender.full_state())
    assert receiver.store("B").snapshot() == before
    assert receiver.store("A").counter("tasks").value == 7
    assert receiver.tenants() == ["A", "B"]


def test_a_message_naming_an_invalid_tenant_is_rejected_whole() -> None:
    body = wire.StateMessage(
        "peer-1",
        False,
        {"A": {"c": wire.GCounterState({"peer-1": 1})}, "../B": {"c": wire.GCounterState({"peer-1": 1})}},
    )
    replica = ReplicaState("r")
    with pytest.raises(CorruptStateError):
        replica.merge(wire.encode(body))
    assert replica.tenants() == []


@pytest.mark.parametrize("tenant", ["", "a.b", "a*", "x" * 65, "$system2", "tenant b"])
def test_invalid_tenants_are_refused(tenant: str) -> None:
    with pytest.raises(ValueError, match="invalid tenant"):
        Store(tenant)
    with pytest.raises(ValueError, match="invalid tenant"):
        ReplicaState("w").store(tenant)


def test_reserved_names_are_read_only_for_handlers() -> None:
    replica = ReplicaState("w")
    replica.record_task("A", ok=True)
    replica.record_tokens("A", 120)
    store = replica.store("A")
    assert store.counter("~tasks_completed").value == 1
    with pytest.raises(ValueError, match="reserved"):
        store.counter("~tasks_completed").increment()
    with pytest.raises(ValueError, match="reserved"):
        store.set("~x").add("y")
    assert replica.usage("A") == {"tasks_completed": 1, "tasks_failed": 0, "llm_tokens": 120}


# -- limits and kinds --


def test_entry_limit() -> None:
    store = Store("A", limits=StoreLimits(max_entries=3))
    for i in range(3):
        store.counter(f"c{i}").increment()
    with pytest.raises(StateLimitError) as info:
        store.set("one-too-many").add("x")
    assert info.value.limit == "max_entries"
    assert info.value.tenant == "A"
    assert (info.value.allowed, info.value.wanted) == (3, 4)
    assert isinstance(info.value, StateError)
    assert isinstance(info.value, AgentbusError)
    store.counter("c0").increment()  # existing entries keep working


def test_set_register_and_size_limits() -> None:
    store = Store(
        "A",
        limits=StoreLimits(
            max_set_elements=2, max_value_bytes=16, max_tenant_bytes=2000, max_element_chars=8
        ),
    )
    s = store.set("s")
    s.add("a")
    s.add("b")
    s.add("a")  # re-adding a member is not growth
    with pytest.raises(StateLimitError, match="max_set_elements"):
        s.add("c")
    with pytest.raises(ValueError, match="chars"):
        store.set("t").add("x" * 9)
    with pytest.raises(StateLimitError, match="max_value_bytes"):
        store.register("r").set("x" * 20)
    store.register("r").set("small")
    for i in range(200):
        try:
            store.register(f"r{i}").set("0123456789")
        except StateLimitError as e:
            assert e.limit == "max_tenant_bytes"  # noqa: PT017
            break
    else:
        pytest.fail("max_tenant_bytes never reached")
    assert 10 < i < 200  # about 50 bytes per small register
    with pytest.raises(ValueError, match="names are"):
        store.counter("")


def test_a_name_keeps_its_kind() -> None:
    store = Store("A")
    store.counter("x").increment()
    with pytest.raises(StateTypeError) as info:
        store.set("x").add("y")
    assert (info.value.name, info.value.holds, info.value.wanted) == ("x", "counter", "set")
    with pytest.raises(StateTypeError):
        _ = store.register("x").get()
    assert store.names() == {"x": "counter"}


def test_bad_amounts_are_refused() -> None:
    store = Store("A")
    with pytest.raises(ValueError, match="amount"):
        store.counter("c").increment(-1)
    with pytest.raises(ValueError, match="amount"):
        store.counter("c").increment(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount"):
        store.pncounter("p").decrement(-2)
    with pytest.raises(TypeError):
        store.set("s").add(3)  # type: ignore[arg-type]


def test_a_kind_clash_between_replicas_is_skipped_not_fatal() -> None:
    a, b = ReplicaState("a"), ReplicaState("b")
    a.store("T").counter("x").increment()
    a.store("T").counter("y").increment()
    b.store("T").set("x").add("m")
    b.merge(a.pending() or b"")
    assert b.clashes == 1
    assert b.store("T").set("x").members() == {"m"}
    assert b.store("T").counter("y").value == 1


# -- values --


def test_registers_expire_and_are_collected() -> None:
    clock = Clock()
    replica = ReplicaState("w", clock=clock)
    reg = replica.store("A").register("lock")
    reg.set({"owner": "w1"}, ttl_s=30)
    reg2 = replica.store("A").register("flag")
    reg2.set(True)
    clock.advance(29)
    assert reg.get() == {"owner": "w1"}
    clock.advance(2)
    assert reg.get("gone") == "gone"
    assert "lock" not in replica.store("A").snapshot()
    assert replica.collect_expired(grace_s=60) == 0
    clock.advance(60)
    assert replica.collect_expired(grace_s=60) == 1
    assert replica.store("A").names() == {"flag": "register"}
    reg2.clear()
    assert reg2.get() is None


def test_register_last_writer_wins_and_values_round_trip() -> None:
    clock = Clock()
    a, b = ReplicaState("a", clock=clock), ReplicaState("b", clock=clock)
    a.store("T").register("mode").set(["x", 1, {"k": None}])
    clock.advance(1)
    b.store("T").register("mode").set("later")
    sync(a, b)
    assert a.store("T").register("mode").get() == "later"
    assert b.store("T").register("mode").get() == "later"
    with pytest.raises(TypeError):
        a.store("T").register("bad").set(object())
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(a.store("T").snapshot())) == {"mode": "later"}


def test_live_agents_set_and_snapshot() -> None:
    a, b = ReplicaState("a"), ReplicaState("b")
    a.live_agents.add("worker-1")
    b.live_agents.add("worker-2")
    sync(a, b)
    a.live_agents.discard("worker-1")
    sync(a, b)
    assert b.live_agents.members() == {"worker-2"}
    assert "worker-2" in a.live_agents
    assert len(a.live_agents) == 1
    assert a.tenants() == []  # the system tenant is not a tenant


def test_pending_is_bounded_and_fair() -> None:
    replica = ReplicaState("w", max_delta_entries=5)
    for t in ("A", "B"):
        for i in range(4):
            replica.store(t).counter(f"c{i}").increment()
    first = wire.decode(replica.pending() or b"")
    second = wire.decode(replica.pending() or b"")
    assert isinstance(first, wire.StateMessage)
    assert isinstance(second, wire.StateMessage)
    sizes = [sum(len(e) for e in m.tenants.values()) for m in (first, second)]
    assert sizes == [5, 3]
    assert replica.pending() is None


# -- budgets and rate limits --


def test_budget_is_shared_across_replicas_within_the_gossip_bound() -> None:
    a, b = ReplicaState("a"), ReplicaState("b")
    ba, bb = Budget(a.store("T"), "tokens", limit=100), Budget(b.store("T"), "tokens", limit=100)
    assert ba.try_spend(60)
    sync(a, b)
    assert not bb.try_spend(50), "b sees a's spend after gossip"
    assert bb.try_spend(40)
    sync(a, b)
    assert ba.remaining == bb.remaining == 0
    bb.refund(10)
    sync(a, b)
    assert ba.remaining == 10
    # without gossip in between both may spend: the overshoot is what the other spent meanwhile
    assert ba.try_spend(10)
    assert bb.try_spend(10)
    sync(a, b)
    assert ba.spent == bb.spent == 110
    with pytest.raises(ValueError, match="reserved"):
        a.store("T").pncounter("~budget.tokens").increment(-1000)


def test_periodic_budget_renews() -> None:
    clock = Clock(0.5)
    budget = Budget(ReplicaState("a", clock=clock).store("T"), "calls", limit=2, period_s=10)
    assert budget.try_spend(2)
    assert not budget.try_spend()
    clock.advance(10)
    assert budget.try_spend()


def test_rate_limiter_sliding_window_and_cleanup() -> None:
    clock = Clock(1000.0)
    a, b = ReplicaState("a", clock=clock), ReplicaState("b", clock=clock)
    la = RateLimiter(a.store("T"), "llm", rate_per_s=10)
    lb = RateLimiter(b.store("T"), "llm", rate_per_s=10)
    assert sum(la.try_acquire() for _ in range(8)) == 8
    sync(a, b)
    assert sum(lb.try_acquire() for _ in range(5)) == 2
    clock.advance(1.5)  # half of the previous window still counts: 10 * 0.5 = 5
    sync(a, b)
    assert sum(la.try_acquire() for _ in range(10)) == 5
    for _ in range(5):
        clock.advance(1.0)
        la.try_acquire()
    assert len([n for n in a.store("T").names() if n.startswith("~rate")]) <= 2
    clock.advance(30)
    assert a.collect_expired(grace_s=5) >= 1  # b's windows reached a by gossip; expiry collects them
    assert [n for n in a.store("T").names() if n.startswith("~rate")] == []


# -- pruning departed replicas --


def test_replica_state_is_a_delegate_with_pruning() -> None:
    from state.delegate import Delegate, Pruning

    replica: Delegate = ReplicaState("w")
    assert isinstance(replica, Pruning)


@pytest.mark.parametrize("owner_first", [True, False], ids=["owner-snapshot-first", "stale-snapshot-first"])
def test_a_pruned_replicas_stale_snapshot_does_not_count_twice(owner_first: bool) -> None:
    owner, gone = ReplicaState("owner"), ReplicaState("gone")
    gone.store("T").counter("c").increment(7)
    gone.store("T").pncounter("p").decrement(2)
    stale = gone.tenant_snapshot("T")
    owner.merge(gone.full_state())
    owner.store("T").counter("c").increment(1)
    owner.prune(gone.replica_id)
    owner.prune(gone.replica_id)  # a no-op the second time
    owner.prune(owner.replica_id)  # never itself
    assert owner.pruned == {gone.replica_id}
    assert owner.store("T").counter("c").value == 8
    assert owner.store("T").pncounter("p").value == -2

    peer = ReplicaState("peer")
    peer.merge(gone.full_state())
    peer.merge(owner.pending() or b"")  # the fold and the marker travel together
    assert peer.store("T").counter("c").value == 8
    assert peer.digest() == owner.digest()

    fresh = ReplicaState("fresh")
    blobs = [(owner.tenant_snapshot("T"), owner.replica_id), (stale, gone.replica_id)]
    for blob, rid in blobs if owner_first else blobs[::-1]:
        fresh.restore(blob, tenant="T", replica=rid)
    assert fresh.store("T").counter("c").value == 8
    assert fresh.store("T").pncounter("p").value == -2
    assert fresh.pruned == {gone.replica_id}
