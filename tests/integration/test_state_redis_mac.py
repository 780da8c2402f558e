"""Redis snapshots carry a keyed MAC (a real redis-server): a forged one is never merged.

Anyone who can write to Redis could otherwise set any tenant's usage or budget for
every worker that starts. With the cluster key, a snapshot written without it (or with
another key), copied to another tenant's key, or altered by one byte is refused with a
log line and ``SnapshotStore.rejected["bad_mac"]``, and the good ones still load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from conftest import RedisServer

from state.mac import ClusterKey
from state.persistence import SnapshotStore
from state.replica import ReplicaState

pytestmark = pytest.mark.integration

KEY = ClusterKey(b"r" * 32)


@pytest.fixture
async def keyed(redis_server: RedisServer) -> AsyncIterator[SnapshotStore]:
    store = SnapshotStore.from_url(redis_server.url, timeout_s=2.0, key=KEY)
    yield store
    await store.close()


async def test_forged_snapshots_are_refused_and_counted(
    keyed: SnapshotStore, redis_server: RedisServer
) -> None:
    good = ReplicaState("good", replica_id="good")
    good.store("acme").counter("c").increment(5)
    await keyed.write(good, ["acme"])

    forger = ReplicaState("forger", replica_id="forger")
    forger.store("acme").counter("c").increment(10**9)
    plain = SnapshotStore.from_url(redis_server.url, timeout_s=2.0)  # no key: a bare frame
    other = SnapshotStore.from_url(redis_server.url, timeout_s=2.0, key=ClusterKey(b"o" * 32))
    try:
        await plain.write(forger, ["acme"])
        forger2 = ReplicaState("forger2", replica_id="forger2")
        forger2.store("acme").counter("c").increment(10**9)
        await other.write(forger2, ["acme"])
        blob = await keyed.client.get(keyed.key("acme", "good"))
        assert isinstance(blob, bytes)
        await keyed.client.set(keyed.key("globex", "good"), blob)  # copied to another tenant's key
        altered = blob[:-1] + bytes([blob[-1] ^ 1])
        await keyed.client.set(keyed.key("acme", "altered"), altered)
    finally:
        await plain.close()
        await other.close()

    fresh = ReplicaState("fresh", replica_id="fresh")
    report = await keyed.load(fresh)
    assert report.merged == [keyed.key("acme", "good")]
    assert sorted(report.rejected) == sorted(
        keyed.key(t, r)
        for t, r in (("acme", "forger"), ("acme", "forger2"), ("globex", "good"), ("acme", "altered"))
    )
    assert keyed.rejected == {"bad_mac": 4}
    assert fresh.store("acme").counter("c").value == 5
    assert fresh.tenants() == ["acme"]
