"""Redis persistence against a real redis-server.

* snapshots of several replicas and tenants load back as their join;
* ``kill -9`` of redis-server (and a SIGSTOP hang) while a replica keeps counting:
  the task path never waits, the writer recovers, and a fresh replica restored
  from Redis has exactly the total;
* corrupt, truncated, foreign and mislabelled blobs are rejected with a reason
  and nothing of them is merged;
* a replica restored from a stale snapshot keeps counting and loses nothing
  (it takes a new replica id; reusing the old one demonstrably loses increments);
* compaction deletes only keys whose content the compacting replica's own
  snapshot includes.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator

import pytest
from conftest import RedisServer, async_wait_until

from state.persistence import SnapshotStore, SnapshotWriter
from state.replica import ReplicaState

pytestmark = pytest.mark.integration


@pytest.fixture
async def snapshots(redis_server: RedisServer) -> AsyncIterator[SnapshotStore]:
    store = SnapshotStore.from_url(redis_server.url, timeout_s=0.5)
    try:
        yield store
    finally:
        await store.close()


def fill(replica: ReplicaState, tenant: str, n: int) -> None:
    s = replica.store(tenant)
    s.counter("tasks").increment(n)
    s.pncounter("budget").decrement(n)
    s.set("agents").add(f"{replica.replica_id}-agent")
    s.register("mode").set({"by": replica.replica_id})


async def test_snapshots_of_many_replicas_load_back_as_their_join(snapshots: SnapshotStore) -> None:
    replicas = [ReplicaState(f"w{i}") for i in range(3)]
    for i, r in enumerate(replicas):
        fill(r, "A", i + 1)
        fill(r, "B", 10 * (i + 1))
        assert await snapshots.write(r, r.tenants()) > 0
    restored = ReplicaState("fresh")
    report = await snapshots.load(restored)
    assert len(report.merged) == 6
    assert report.rejected == {}
    expected = ReplicaState("model")
    for r in replicas:
        expected.merge(r.full_state())
    assert restored.digest() == expected.digest()
    assert restored.store("A").counter("tasks").value == 6
    assert restored.store("B").pncounter("budget").value == -60
    assert len(restored.store("A").set("agents")) == 3

    only_a = ReplicaState("only-a")
    report = await snapshots.load(only_a, ["A"])
    assert only_a.tenants() == ["A"]
    assert len(report.merged) == 3


async def test_kill9_and_hang_of_redis_during_writes_keep_totals_exact(
    redis_server: RedisServer, snapshots: SnapshotStore
) -> None:
    replica = ReplicaState("worker")
    writer = SnapshotWriter(snapshots, replica, interval_s=0.02, full_every_s=0.5)
    writer.start()
    counted = 0
    stop = asyncio.Event()

    async def task_path() -> None:
        nonlocal counted
        while not stop.is_set():
            for _ in range(20):
                replica.record_task("A", ok=True)
                replica.store("B").counter("tokens").increment(3)
                counted += 1
            await asyncio.sleep(0.001)

    worker = asyncio.create_task(task_path())
    await async_wait_until(lambda: writer.writes >= 5, 30, "first snapshot writes")

    redis_server.kill()  # kill -9 mid-stream of writes
    before = counted
    await async_wait_until(lambda: writer.failures >= 3, 30, "writes failing while redis is down")
    assert counted > before, "the task path kept counting while Redis was dead"

    redis_server.start()
    writes = writer.writes
    await async_wait_until(lambda: writer.writes > writes + 3, 30, "writes resuming after restart")

    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)  # a hung Redis: every write times out
    try:
        failures, before = writer.failures, counted
        t0 = time.monotonic()
        await async_wait_until(lambda: writer.failures > failures, 30, "a write timing out")
        assert counted > before, "the task path kept counting while Redis hung"
        assert time.monotonic() - t0 < 20  # generous: the write bound is 0.5 s
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)

    stop.set()
    await worker
    await writer.stop(flush=True)
    assert writer.last_error is None

    restored = ReplicaState("restored")
    report = await snapshots.load(restored)
    assert report.rejected == {}
    assert restored.usage("A")["tasks_completed"] == counted
    assert restored.store("B").counter("tokens").value == 3 * counted


def corruptions(blob: bytes, rnd: random.Random) -> list[bytes]:
    """100 damaged copies: bit flips, truncations, garbage tails, zeroed spans, empty."""
    out: list[bytes] = [b"", blob[:10], blob[:-1], blob + b"\x00"]
    while len(out) < 100:
        b = bytearray(blob)
        kind = rnd.randrange(4)
        if kind == 0:
            for _ in range(rnd.randint(1, 8)):
                bit = rnd.randrange(len(b) * 8)
                b[bit // 8] ^= 1 << (bit % 8)
        elif kind == 1:
            del b[rnd.randrange(1, len(b)) :]
        elif kind == 2:
            b += rnd.randbytes(rnd.randint(1, 16))
        else:
            start = rnd.randrange(len(b))
            b[start : start + 8] = bytes(len(b[start : start + 8]))
        if bytes(b) != blob:
            out.append(bytes(b))
    return out


async def test_corrupt_truncated_and_mislabelled_blobs_are_rejected_not_merged(
    snapshots: SnapshotStore,
) -> None:
    good = ReplicaState("good")
    fill(good, "A", 5)
    await snapshots.write(good, ["A"])
    victim = ReplicaState("victim")
    fill(victim, "A", 1000)
    blob = victim.tenant_snapshot("A")
    bad: dict[str, bytes] = {}
    for i, damaged in enumerate(corruptions(blob, random.Random(14))):
        bad[snapshots.key("A", f"victim-{i}")] = damaged
    other = ReplicaState("other")
    fill(other, "B", 7)
    bad[snapshots.key("A", other.replica_id)] = other.tenant_snapshot("B")  # another tenant's blob
    bad[snapshots.key("A", "someone-else")] = blob  # valid, but not the replica its key names
    bad[snapshots.key("A", "gossip")] = victim.full_state()  # a gossip message, not a snapshot
    await snapshots.client.mset(bad)

    restored = ReplicaState("restored")
    report = await snapshots.load(restored)
    assert report.merged == [snapshots.key("A", good.replica_id)]
    assert set(report.rejected) == set(bad)
    reasons = " ".join(report.rejected.values())
    for reason in (
        "checksum mismatch",
        "truncated",
        "trailing bytes",
        "of B/",
        "not a tenant snapshot",
    ):
        assert reason in reasons
    only_good = ReplicaState("only-good")
    only_good.merge(good.full_state())
    assert restored.digest() == only_good.digest()
    assert restored.store("A").counter("tasks").value == 5
    assert restored.tenants() == ["A"]


async def test_stale_snapshot_restore_keeps_every_increment(snapshots: SnapshotStore) -> None:
    a, b = ReplicaState("a"), ReplicaState("b")
    old_id = a.replica_id
    a.store("T").counter("tasks").increment(100)
    await snapshots.write(a, ["T"])  # the snapshot that will be stale
    a.store("T").counter("tasks").increment(50)  # reaches b by gossip, never Redis
    b.merge(a.pending() or b"")
    assert b.store("T").counter("tasks").value == 150
    del a  # crash

    # the rule: a restored replica takes a new id, so its increments land in a fresh slot
    a2 = ReplicaState("a")
    await snapshots.load(a2)
    assert a2.replica_id != old_id
    assert a2.store("T").counter("tasks").value == 100  # stale, for now
    a2.store("T").counter("tasks").increment(30)
    a2.merge(b.full_state())
    b.merge(a2.full_state())
    assert a2.store("T").counter("tasks").value == b.store("T").counter("tasks").value == 180

    # the pitfall it avoids: counting on in the old slot from the stale value. The loader
    # refuses a key of its own id; merged anyway, the new increments hide under b's copy.
    reused = ReplicaState("a", replica_id=old_id)
    report = await snapshots.load(reused)
    assert list(report.rejected) == [snapshots.key("T", old_id)]
    stale_blob = await snapshots.client.get(snapshots.key("T", old_id))
    assert isinstance(stale_blob, bytes)
    reused.restore(stale_blob, tenant="T", replica=old_id)
    reused.store("T").counter("tasks").increment(30)  # old slot: 130, but b already holds 150 there
    reused.merge(b.full_state())
    made = 150 + 30 + 30
    assert reused.store("T").counter("tasks").value == made - 30, "reusing the id loses the 30"

    # and Redis alone, restored by a third replica, is exact once a2 has written
    await snapshots.write(a2, ["T"])
    await snapshots.write(b, ["T"])
    c = ReplicaState("c")
    await snapshots.load(c)
    assert c.store("T").counter("tasks").value == 180


async def test_compaction_deletes_only_keys_the_new_snapshot_covers(snapshots: SnapshotStore) -> None:
    olds = [ReplicaState(f"old{i}") for i in range(3)]
    for i, r in enumerate(olds):
        r.store("T").counter("tasks").increment(i + 1)
        await snapshots.write(r, ["T"])
    heir = ReplicaState("heir")
    await snapshots.load(heir)
    heir.store("T").counter("tasks").increment(10)
    await snapshots.write(heir, ["T"])
    olds[0].store("T").counter("tasks").increment(100)  # old0 is alive and rewrites its key meanwhile
    await snapshots.write(olds[0], ["T"])

    deleted = await snapshots.compact()
    assert sorted(deleted) == sorted(snapshots.key("T", r.replica_id) for r in olds[1:])
    keys = {
        k.decode() if isinstance(k, bytes) else k
        for k in await snapshots.client.keys(f"{snapshots.prefix}:*")
    }
    assert keys == {snapshots.key("T", r.replica_id) for r in (olds[0], heir)}
    fresh = ReplicaState("fresh")
    await snapshots.load(fresh)
    assert fresh.store("T").counter("tasks").value == 1 + 2 + 3 + 10 + 100


async def test_the_writer_bounds_each_tick_and_flush_writes_everything(snapshots: SnapshotStore) -> None:
    replica = ReplicaState("many")
    for i in range(10):
        replica.store(f"t{i}").counter("c").increment(i + 1)
    writer = SnapshotWriter(snapshots, replica, max_tenants_per_tick=4)
    assert await writer.tick() == 6
    assert len(await snapshots.client.keys(f"{snapshots.prefix}:*")) == 4
    replica.store("t0").counter("c").increment(100)
    assert await writer.flush()
    assert len(await snapshots.client.keys(f"{snapshots.prefix}:*")) == 10
    assert await writer.tick() == 0
    restored = ReplicaState("restored")
    await snapshots.load(restored)
    assert sum(restored.store(f"t{i}").counter("c").value for i in range(10)) == 55 + 100
