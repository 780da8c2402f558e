"""Each attack of issue 18 on the shared state, reproduced on ``ReplicaState`` and ``Gossip`` directly.

The property test (``tests/property/test_gossip_forgery.py``) mixes them at random over
the in-memory network; these pin each one down with the numbers of the issue.
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest

from agentbus.errors import ConfigError, CorruptStateError, StateLimitError
from agents.config import WorkerConfig
from state.counters import MAX_COUNT, GCounter
from state.gossip import Gossip, GossipConfig, InMemoryNetwork, VirtualClock
from state.gossip.membership import Membership, MemberState
from state.gossip.wire import Alive, Packet, encode_packet
from state.limiter import Budget
from state.mac import ClusterKey
from state.persistence import SnapshotStore
from state.replica import ReplicaState
from state.store import StoreLimits
from state.wire import Entry, GCounterState, LWWState, PNCounterState, StateMessage, encode

KEY = ClusterKey(b"k" * 32)


class View:
    """A fixed gossip view: ``live`` replicas speak for themselves; ``gone`` may be pruned."""

    def __init__(self, live: set[str], gone: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.live, self.gone = live, gone

    def is_live(self, node: str) -> bool:
        return node in self.live

    def may_prune(self, node: str) -> bool:
        return node in self.gone


def replica(name: str, live: set[str], gone: set[str] = frozenset(), **kw: object) -> ReplicaState:  # type: ignore[assignment]
    r = ReplicaState(name, replica_id=name, **kw)  # type: ignore[arg-type]
    r.watch(View(live, gone))
    return r


def test_a_delta_carries_only_its_senders_slots() -> None:
    victim = replica("b", {"a", "m"})
    Budget(victim.store("acme"), "llm_tokens", limit=1000).charge(10)
    forged = StateMessage(
        "m",
        False,
        {"acme": {"~budget.llm_tokens": PNCounterState({"b": 10**12, "a": 10**12}, {"m": 10**12})}},
    )
    victim.merge_from(encode(forged), "m", delta=True)
    budget = Budget(victim.store("acme"), "llm_tokens", limit=1000)
    assert budget.spent == 10  # the issue: 10^12 for the victim, and a negative counter for the forger
    assert budget.remaining == 990
    assert victim.refused["forged_slot"] >= 2


def test_a_payload_names_its_sender() -> None:
    r = replica("b", {"a", "m"})
    with pytest.raises(CorruptStateError):
        r.merge_from(
            encode(StateMessage("a", True, {"acme": {"c": GCounterState({"a": 5})}})), "m", delta=False
        )
    assert r.refused["wrong_origin"] == 1
    assert r.store("acme").counter("c").value == 0


def test_a_full_state_relays_only_replicas_that_cannot_speak_for_themselves() -> None:
    r = replica("b", live={"a", "m"})
    r.store("acme").counter("c").increment(3)
    relayed: dict[str, dict[str, Entry]] = {
        "acme": {"c": GCounterState({"a": 10**9, "b": 10**9, "dead": 4, "m": 2})}
    }
    r.merge_from(encode(StateMessage("m", True, relayed)), "m", delta=False)
    crdt = r._tenants["acme"].entries["c"]
    assert isinstance(crdt, GCounter)
    assert crdt.slots == {"b": 3, "dead": 4, "m": 2}  # live "a" and "b" itself are not the relay's to tell


def test_a_prune_marker_for_a_live_replica_is_refused() -> None:
    r = replica("b", live={"a", "m"})
    r.merge(encode(StateMessage("a", False, {"acme": {"c": GCounterState({"a": 7})}})))
    marker = StateMessage("m", False, {}, pruned={"a": 1, "b": 1})
    r.merge_from(encode(marker), "m", delta=True)
    assert r.store("acme").counter("c").value == 7  # the issue: one marker erased a live replica's counts
    assert r.replica_id == "b"  # and a marker naming the receiver does not move it
    assert r.pruned == frozenset()
    assert r.refused["forged_marker"] == 2


def test_a_prune_marker_for_a_long_gone_replica_is_applied() -> None:
    r = replica("b", live={"a"}, gone={"dead"})
    r.merge(encode(StateMessage("dead", False, {"acme": {"c": GCounterState({"dead": 4})}})))
    fold = StateMessage("a", False, {"acme": {"c": GCounterState({"a": 4})}}, pruned={"dead": 1})
    r.merge_from(encode(fold), "a", delta=True)
    assert r.store("acme").counter("c").value == 4
    assert r.pruned == {"dead"}


def test_a_slot_past_the_bound_is_refused_and_slots_at_it_still_encode() -> None:
    raw = msgspec.msgpack.encode({"type": "g", "slots": {"m": 2**64 - 1}})
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(raw, type=GCounterState)
    r = replica("b", live=set())
    slots = {f"r{i}": MAX_COUNT for i in range(8)}  # their sum is far past 2^63
    r.merge_from(encode(StateMessage("m", True, {"acme": {"c": GCounterState(slots)}})), "m", delta=False)
    assert r.store("acme").counter("c").value == 8 * MAX_COUNT
    r.digest()  # the issue: OverflowError here stopped push-pull and snapshots
    r.full_state()
    r.tenant_snapshot("acme")
    r.prune("r0")  # the fold saturates at the bound
    r.digest()
    with pytest.raises(ValueError, match="2\\^62"):
        GCounter({"b": MAX_COUNT}).increment("b", 1)


def test_merges_keep_a_tenant_within_its_limits() -> None:
    limits = StoreLimits(max_entries=10, max_value_bytes=64, max_tenant_bytes=4096)
    r = replica("b", live=set(), limits=limits)
    entries: dict[str, Entry] = {f"k{i}": GCounterState({"m": 1}) for i in range(5000)}
    entries["blob"] = LWWState(b"x" * 10_000, 1, "m")
    r.merge_from(encode(StateMessage("m", False, {"acme": entries})), "m", delta=True)
    t = r._tenants["acme"]
    assert len(t.entries) <= 2 * limits.max_entries
    assert "blob" not in t.entries
    assert t.size <= 2 * limits.max_tenant_bytes
    assert r.refused["over_limit"] == 5001 - len(t.entries)


def test_a_tenant_is_bounded_well_under_one_packet_and_full_states_go_in_parts() -> None:
    r = ReplicaState("big", replica_id="big")
    store = r.store("fat")
    written = 0
    for i in range(200):  # the 200 x 3 KB registers: the tenant's bound stops it first
        try:
            store.register(f"r{i}").set("x" * 3000)
        except StateLimitError:
            break
        written += 1
    assert 0 < written < 200
    for t in range(10):  # ten tenants near the bound: far more than one packet together
        for i in range(written):
            r.store(f"t{t}").register(f"r{i}").set("y" * 3000)
    r.store("small").counter("tokens").increment(9000)
    whole = len(r.full_state())
    assert whole > GossipConfig().max_packet_bytes
    limit = GossipConfig().max_packet_bytes - 16 * 1024
    parts = r.full_state_parts(limit)
    assert len(parts) > 1
    assert all(len(p) <= GossipConfig().max_packet_bytes for p in parts)
    late = ReplicaState("late", replica_id="late")
    for p in parts:
        late.merge(p)
    assert late.digest() == r.digest()
    assert late.store("small").counter("tokens").value == 9000


def test_a_delta_batch_is_bounded_in_bytes() -> None:
    r = ReplicaState("w", replica_id="w", max_payload_bytes=64 * 1024)
    for t in range(20):
        for i in range(20):
            r.store(f"t{t}").register(f"r{i}").set("z" * 3000)
    sizes = []
    while (batch := r.pending()) is not None:
        sizes.append(len(batch))
    assert len(sizes) > 1
    assert max(sizes) < 2 * 64 * 1024


def test_membership_is_bounded() -> None:
    config = GossipConfig.for_tests(max_members=100)
    m = Membership("me", config, send=lambda _n, _m: None, rng=random.Random(0))
    refused = []
    m.on_limit = lambda: refused.append(1)
    for i in range(5000):  # the issue: 5,000 forged members were accepted
        m.apply(0.0, Alive(f"forged-{i}", 1))
    assert len(m.members) == 100
    assert len(refused) == 4900
    m.members["forged-0"].state = MemberState.DEAD  # a gone member makes room for a real one
    m.apply(1.0, Alive("real", 1))
    assert "real" in m.members


def test_cluster_key_file(tmp_path: Path) -> None:
    good = tmp_path / "cluster.key"
    good.write_text("ab" * 32 + "\n")
    config = WorkerConfig.from_env({"AGENTBUS_CLUSTER_KEY_FILE": str(good)})
    assert config.cluster_key == ClusterKey(bytes([0xAB]) * 32)
    assert "ab" * 4 not in repr(config)
    for text in ("ab" * 31, "zz" * 32, ""):
        good.write_text(text)
        with pytest.raises(ConfigError):
            WorkerConfig.from_env({"AGENTBUS_CLUSTER_KEY_FILE": str(good)})
    with pytest.raises(ConfigError):
        WorkerConfig.from_env({"AGENTBUS_CLUSTER_KEY_FILE": str(tmp_path / "missing")})
    assert WorkerConfig.from_env({}).cluster_key is None


async def test_gossip_drops_packets_without_the_key() -> None:
    clock = VirtualClock()
    network = InMemoryNetwork(clock=clock)
    r = ReplicaState("b", replica_id="b")
    node = Gossip("b", network.transport(), r, GossipConfig.for_tests(key=KEY), clock=clock)
    await node.start(autotick=False)
    forged = encode(StateMessage("m", True, {"acme": {"c": GCounterState({"m": 99})}}))
    from state.gossip.wire import PushPull

    packet = encode_packet(Packet("agentbus", [PushPull(b"", forged, False)], [Alive("m", 1)]))
    other = Gossip(
        "m", network.transport(), ReplicaState("m"), GossipConfig.for_tests(key=ClusterKey(b"x" * 32))
    )
    for data in (packet, b"\x01" + b"\x00" * 32 + packet, other._seal("b", packet)):
        network._send("m", "b", data)
    keyed = Gossip("m", network.transport(), ReplicaState("m"), GossipConfig.for_tests(key=KEY))
    network._send("m", "b", keyed._seal("b2", packet))  # tagged for another node
    await network.run_until(1.0)
    assert node.stats.rejected == {"bad_mac": 4}
    assert r.store("acme").counter("c").value == 0
    assert node.members() == {}
    network._send("m", "b", keyed._seal("b", packet))
    await network.run_until(2.0)
    assert r.store("acme").counter("c").value == 99  # the same bytes, tagged right, are taken
    await node.stop(leave=False)


def test_snapshots_carry_a_keyed_mac() -> None:
    r = ReplicaState("w", replica_id="w")
    r.store("acme").counter("c").increment(5)
    keyed = SnapshotStore(None, key=KEY)  # type: ignore[arg-type]  # seal/open need no client
    plain = SnapshotStore(None)  # type: ignore[arg-type]
    frame = r.tenant_snapshot("acme")
    blob = keyed.seal("agentbus:state:acme:w", frame)
    assert keyed.open("agentbus:state:acme:w", blob) == frame
    for key, data in (
        ("agentbus:state:acme:w", frame),  # written without the key
        ("agentbus:state:globex:w", blob),  # copied to another key
        ("agentbus:state:acme:w", blob[:-1] + bytes([blob[-1] ^ 1])),  # altered
        (
            "agentbus:state:acme:w",
            SnapshotStore(None, key=ClusterKey(b"o" * 32)).seal("agentbus:state:acme:w", frame),  # type: ignore[arg-type]
        ),
    ):
        with pytest.raises(CorruptStateError, match="bad_mac"):
            keyed.open(key, data)
    with pytest.raises(CorruptStateError, match="no_key"):
        plain.open("agentbus:state:acme:w", blob)
    assert plain.open("agentbus:state:acme:w", frame) == frame
