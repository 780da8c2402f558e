"""Redis persistence: each replica writes its own key per tenant; a starting one merges them all.

Layout: ``agentbus:state:<tenant>:<replica_id>`` holds one framed, checksummed
``TenantSnapshot`` (see ``state.wire``). A replica only ever writes its own keys, so
writers never race, and a key is replaced whole by one ``SET`` (no torn writes).

Start: ``SnapshotStore.load`` scans the keys of the replica's tenants (or all of
them) and merges every valid blob into the replica's state. Merge is a join, so
the order and any overlap between snapshots do not matter and restoring never
overwrites newer state. A blob with a bad checksum, a truncation, a foreign
version, or a tenant or replica that does not match its key is rejected whole,
logged with the reason and listed in the report.

Authenticity: with a cluster key (``state.mac``), every blob is written as
``"ABM" | HMAC-SHA256(key, "agentbus-snapshot", redis key, frame) | frame``, so a
blob written by anyone without the key, or copied from another key, is refused
(``bad_mac``, logged and counted in ``SnapshotStore.rejected``) and never merged.
Without a key blobs are the bare frame, and a tagged blob is refused (``no_key``):
a worker never merges what it cannot check.

Replica identity: the restoring replica has a NEW replica id (``ReplicaState``
takes one on every start). If it kept its old id and the snapshot were stale (the
crash came after increments that reached peers but not Redis), it would count on
from the stale slot value and its new increments would be masked by the higher
value the peers hold: lost. The alternative, learning one's own latest slot from
peers before accepting writes, needs a quorum answer at start; a fresh id needs
nothing and costs one counter slot per restart.

Writing: ``SnapshotWriter`` runs in its own task. Every ``interval_s`` it writes
the tenants whose state changed (every tenant each ``full_every_s``, so a Redis
that lost its data is refilled), at most ``max_tenants_per_tick`` of them (the rest
go next tick, so one tick's encoding stays short), one pipeline at a time, each
bounded by ``timeout_s``. The task path never waits for it: a write that fails or times out
is logged and retried on the next tick with the then-current state (there is no
backlog to grow). ``compact()`` deletes other replicas' keys whose content this
replica's own snapshot now includes (checked with WATCH, so a key rewritten
meanwhile stays): restarts do not pile up keys forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from agentbus.errors import CorruptStateError, PersistenceError
from state.mac import TAG_BYTES, ClusterKey
from state.replica import ReplicaState

__all__ = ["KEY_PREFIX", "LoadReport", "SnapshotStore", "SnapshotWriter"]

log = logging.getLogger(__name__)

KEY_PREFIX = "agentbus:state"
_SEALED = b"ABM"
_DOMAIN = b"agentbus-snapshot"


@dataclass
class LoadReport:
    """What ``SnapshotStore.load`` merged and what it refused."""

    merged: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    """Key -> reason."""


class SnapshotStore:
    """Reads and writes tenant snapshots in Redis (``redis.asyncio``)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = KEY_PREFIX,
        timeout_s: float = 5.0,
        key: ClusterKey | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster_key = key
        self.rejected: dict[str, int] = {}
        """Snapshots refused at load, by reason: ``bad_mac``, ``no_key``, ``corrupt``."""
        self.timeout_s = timeout_s
        """Bound on one Redis round trip (a write pipeline, a scan page, a get batch)."""
        self._loaded: dict[str, bytes] = {}
        # other replicas' keys merged at load, with the bytes seen, for compact()

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = KEY_PREFIX, timeout_s: float = 5.0, key: ClusterKey | None = None
    ) -> SnapshotStore:
        """A store on a new client for ``url`` (``redis://host:port/db``)."""
        client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, prefix=prefix, timeout_s=timeout_s, key=key)

    def seal(self, key: str, frame: bytes) -> bytes:
        """The blob stored under ``key``: the frame, tagged when there is a cluster key."""
        if self.cluster_key is None:
            return frame
        return _SEALED + self.cluster_key.tag(_DOMAIN, key.encode(), frame) + frame

    def open(self, key: str, blob: bytes) -> bytes:
        """The frame inside a stored blob; CorruptStateError (reason ``bad_mac``/``no_key``) if its tag
        does not verify."""
        sealed = blob.startswith(_SEALED)
        if self.cluster_key is None:
            if sealed:
                raise CorruptStateError("no_key: a tagged snapshot, and this worker has no cluster key")
            return blob
        tag, frame = blob[len(_SEALED) : len(_SEALED) + TAG_BYTES], blob[len(_SEALED) + TAG_BYTES :]
        if not sealed or not self.cluster_key.verify(tag, _DOMAIN, key.encode(), frame):
            raise CorruptStateError("bad_mac: the snapshot's tag does not verify with the cluster key")
        return frame

    def key(self, tenant: str, replica: str) -> str:
        """Where ``replica`` keeps ``tenant``'s snapshot."""
        return f"{self.prefix}:{tenant}:{replica}"

    async def write(self, replica: ReplicaState, tenants: list[str]) -> int:
        """Write ``tenants``' snapshots of ``replica`` in one pipeline; returns the bytes written."""
        keys = {t: self.key(t, replica.replica_id) for t in tenants}
        blobs = {k: self.seal(k, replica.tenant_snapshot(t)) for t, k in keys.items()}
        if not blobs:
            return 0
        async with asyncio.timeout(self.timeout_s):
            await self.client.mset(blobs)
        return sum(len(b) for b in blobs.values())

    async def load(self, replica: ReplicaState, tenants: list[str] | None = None) -> LoadReport:
        """Merge all snapshots of ``tenants`` (None: every tenant); PersistenceError on Redis errors."""
        report = LoadReport()
        patterns = [f"{self.prefix}:*"] if tenants is None else [f"{self.prefix}:{t}:*" for t in tenants]
        try:
            keys: list[str] = []
            for pattern in patterns:
                keys += await self._scan(pattern)
            for i in range(0, len(keys), 100):
                batch = keys[i : i + 100]
                async with asyncio.timeout(self.timeout_s):
                    values = await self.client.mget(batch)
                for key, blob in zip(batch, values, strict=True):
                    if isinstance(blob, bytes):  # a client with decode_responses=True cannot load
                        self._restore_one(replica, key, blob, report)
        except (RedisError, OSError, TimeoutError) as e:
            raise PersistenceError(f"could not read snapshots from Redis: {e!r}") from e
        return report

    def _restore_one(self, replica: ReplicaState, key: str, blob: bytes, report: LoadReport) -> None:
        tail = key[len(self.prefix) + 1 :]
        tenant, _, owner = tail.partition(":")
        try:
            if owner == replica.replica_id:
                raise CorruptStateError("a key of this very replica id (ids are never reused)")
            replica.restore(self.open(key, blob), tenant=tenant, replica=owner)
        except (CorruptStateError, ValueError) as e:
            reason = e.reason if isinstance(e, CorruptStateError) else str(e)
            report.rejected[key] = reason
            kind = reason.split(":", 1)[0] if reason.startswith(("bad_mac", "no_key")) else "corrupt"
            self.rejected[kind] = self.rejected.get(kind, 0) + 1
            log.warning("snapshot %s rejected, not merged: %s", key, reason)
            return
        report.merged.append(key)
        self._loaded[key] = blob

    async def _scan(self, pattern: str) -> list[str]:
        keys: list[str] = []
        cursor = 0
        while True:
            async with asyncio.timeout(self.timeout_s):
                cursor, page = await self.client.scan(cursor, match=pattern, count=500)
            keys += [k.decode() if isinstance(k, bytes) else k for k in page]
            if cursor == 0:
                return sorted(set(keys))

    async def compact(self) -> list[str]:
        """Delete loaded keys still holding what was loaded; call only after this replica wrote its own.

        Each deleted key's content is in this replica's snapshot (merge only grows
        state), and WATCH keeps any key that its owner rewrote in between.
        """
        deleted: list[str] = []
        for key, blob in list(self._loaded.items()):
            try:
                async with asyncio.timeout(self.timeout_s), self.client.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    if await pipe.get(key) == blob:
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.delete(key)
                        await pipe.execute()
                        deleted.append(key)
                    else:
                        await pipe.unwatch()  # type: ignore[no-untyped-call]
            except WatchError:
                pass  # rewritten by its owner: keep it
            except (RedisError, OSError, TimeoutError) as e:
                log.warning("compacting %s failed: %r", key, e)
                continue
            del self._loaded[key]
        return deleted

    async def close(self) -> None:
        """Close the client."""
        await self.client.aclose()


class SnapshotWriter:
    """Writes one replica's changed tenants every ``interval_s`` in a background task."""

    def __init__(
        self,
        store: SnapshotStore,
        replica: ReplicaState,
        *,
        interval_s: float = 1.0,
        full_every_s: float = 60.0,
        max_tenants_per_tick: int = 64,
    ) -> None:
        self.store = store
        self.replica = replica
        self.interval_s = interval_s
        self.full_every_s = full_every_s
        self.max_tenants_per_tick = max_tenants_per_tick
        self.writes = 0
        self.failures = 0
        self.last_error: str | None = None
        self._written: dict[str, int] = {}
        self._last_full = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Start the background task (from a running loop)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(), name="state-snapshot-writer")

    async def flush(self) -> bool:
        """Write everything that changed, tick by tick; True on success (failures are logged)."""
        while True:
            left = await self.tick()
            if left is None:
                return False
            if left == 0:
                return True

    async def tick(self) -> int | None:
        """One bounded write: how many changed tenants are still unwritten, None if it failed."""
        async with self._lock:
            versions = self.replica.tenant_versions()
            full = time.monotonic() - self._last_full >= self.full_every_s
            todo = [t for t, v in versions.items() if full or self._written.get(t) != v]
            rest = todo[self.max_tenants_per_tick :]
            todo = todo[: self.max_tenants_per_tick]
            try:
                await self.store.write(self.replica, todo)
            except (RedisError, OSError, TimeoutError) as e:
                self.failures += 1
                self.last_error = repr(e)
                self._last_full = float("-inf")  # Redis may have lost data: rewrite everything next
                log.warning("state snapshot write failed (retrying next tick): %r", e)
                return None
            self.writes += 1
            self.last_error = None
            self._written.update({t: versions[t] for t in todo})
            if full:  # the rest of a full pass stays due: it counts as changed until written
                self._last_full = time.monotonic()
                for t in rest:
                    self._written.pop(t, None)
            return len(rest)

    async def stop(self, *, flush: bool = True) -> None:
        """Stop the task, writing once more first if ``flush``.

        The loop also checks a flag: redis-py can swallow a cancellation that lands
        inside a command (seen when a hung Redis resumes: the write's timeout and the
        cancel race), and a worker's drain must not wait forever for a writer that
        never saw it.
        """
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if flush:
            await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.interval_s)
            if not self._stopping:
                await self.tick()
