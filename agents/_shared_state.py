"""The worker's replica of the shared tenant state: gossip over NATS, Redis snapshots, usage counters.

A worker owns one :class:`SharedState` (docs/state.md):

* a :class:`~state.replica.ReplicaState` whose id is new on every start; handlers
  reach only their task's tenant's store (``Context.state``);
* :class:`~state.gossip.Gossip` over the worker's own NATS connection
  (:class:`~bus.gossip.NatsTransport`), its node id always the replica id (after a
  move to a new id, see ``state.replica``, the node rejoins under the new one);
* with a Redis URL, snapshots (:mod:`state.persistence`): every snapshot of the
  worker's tenants is merged at start, the replica's own are written every second
  and flushed on drain. **Redis down at start does not stop the worker**: it
  serves tasks with what gossip brings and retries the load in the background
  until it succeeds (merge is a join, so a late load is as good as an early one;
  until then, its budgets may under-count what only Redis remembers). Its own
  counts are never at risk: they go under its fresh replica id, to peers by gossip
  and to Redis once it answers;
* usage counters folded in from the worker's plain-int stats, not counted on the
  task path: every gossip round (200 ms) the increase of ``KindStats.tasks``
  (``ok`` -> ``tasks_completed``, ``dead_lettered`` -> ``tasks_failed``) and of the
  token counts agents gave at start (``Services.count_tokens``) is added to the tenant's
  counters. A count reaches this replica within one round and every replica within one round plus the
  gossip delay; the drain folds once more before leaving, so nothing is dropped;
* the live-agents set: the worker adds its name at start and removes it on drain;
  a killed worker's entry stays until gossip prunes its replica (``prune_after_s``),
  but the status answer leaves it out once gossip declares that replica dead;
* the answer to ``agentbus status`` (``agentbus.state.query``, one worker of a
  queue group answers with its replica's view).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from agentbus.backoff import Backoff
from agentbus.errors import ConfigError, PersistenceError, StateError
from agents._runner import KindRunner
from agents.config import WorkerConfig
from agents.metrics import Outcome, WorkerStats
from bus.gossip import NatsTransport
from bus.messages import StateQuery, StateReport, TenantUsage, encode
from bus.subjects import STATE_QUERY_QUEUE, STATE_QUERY_SUBJECT
from state.gossip import Gossip, GossipConfig
from state.persistence import SnapshotStore, SnapshotWriter
from state.replica import ReplicaState
from state.wire import SYSTEM_TENANT

__all__ = ["MAX_REPORT_TENANTS", "SharedState"]

log = logging.getLogger("agentbus.state")

SNAPSHOT_INTERVAL_S = 1.0
"""How often changed tenants are written to Redis (what a kill -9 can lose from Redis, not from peers)."""
REDIS_TIMEOUT_S = 2.0
"""Bound on one Redis round trip; a drain waits at most a few of these for the last flush."""
IDLE_TENANT_S = 3600.0
"""A tenant without state whose store nobody asked for this long is forgotten (far longer than
any task's timeout: a handler holding its store must not write into a forgotten one)."""
COLLECT_EVERY_S = 5.0
"""How often expired entries (rate windows, past budget periods) are dropped."""
LOAD_RETRY_MAX_S = 30.0
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_query_decoder = msgspec.json.Decoder(StateQuery)
MAX_REPORT_TENANTS = 1000
"""Tenants in one status answer at most, whatever the query asks: the answer stays far below
NATS's max_payload, and one query cannot make a worker serialise every tenant it knows."""
MAX_REPORT_AGENTS = 1000
_COUNTED = {Outcome.OK: True, Outcome.DEAD_LETTERED: False}
"""Outcomes that end a task, and whether they count as completed (retries and hand-backs do not end it)."""


class SharedState:
    """One worker's replica, its gossip node, its Redis snapshots and its usage counters."""

    def __init__(self, config: WorkerConfig, *, name: str, stats: WorkerStats) -> None:
        if config.redis_url is not None and not config.redis_url.startswith(REDIS_SCHEMES):
            raise ConfigError(f"a Redis URL is redis://, rediss:// or unix://, not {config.redis_url!r}")
        self.config = config
        self.name = name
        self.replica = ReplicaState(name)
        preset = GossipConfig.for_tests if config.gossip_preset == "test" else GossipConfig.lan
        self.gossip_config = preset(key=config.cluster_key)
        self.gossip: Gossip | None = None
        self.snapshots: SnapshotStore | None = None
        self.writer: SnapshotWriter | None = None
        self.loaded = config.redis_url is None
        """Every Redis snapshot of our tenants is merged (True at once without Redis)."""
        self._stats = stats
        self._token_counts: list[Mapping[str, int]] = []
        self._seen: dict[tuple[str, str, str], int] = {}
        self._bad_tenants: set[str] = set()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._sub: Subscription | None = None

    def install(self, runners: list[KindRunner]) -> None:
        """Give the handlers their tenant's store."""
        for runner in runners:
            runner.stores = self.replica.store

    def count_tokens(self, counts: Iterable[Mapping[str, int]]) -> None:
        """Fold these tenant -> tokens mappings (``Services.count_tokens``) into the usage counters."""
        self._token_counts.extend(counts)

    # -- life -------------------------------------------------------------------------------

    async def start(self, nc: Client) -> None:
        """Load snapshots (if Redis is configured and up), join gossip, start writing and answering."""
        if self.config.redis_url is not None:
            self.snapshots = SnapshotStore.from_url(
                self.config.redis_url, timeout_s=REDIS_TIMEOUT_S, key=self.config.cluster_key
            )
            self.writer = SnapshotWriter(self.snapshots, self.replica, interval_s=SNAPSHOT_INTERVAL_S)
            if not await self._load():
                self._spawn(self._load_until_done(), "agentbus-state-load")
        self.replica.live_agents.add(self.name)
        if self.config.gossip:
            self.gossip = Gossip(self.replica.replica_id, NatsTransport(nc), self.replica, self.gossip_config)
            await self.gossip.start()
        if self.writer is not None:
            self.writer.start()
        self._sub = await nc.subscribe(STATE_QUERY_SUBJECT, queue=STATE_QUERY_QUEUE, cb=self._answer)
        self._spawn(self._upkeep(), "agentbus-state-upkeep")
        log.info(
            "shared state: replica %s, gossip %s, redis %s",
            self.replica.replica_id,
            self.config.gossip_preset if self.gossip else "off",
            "on" if self.snapshots else "off",
        )

    async def stop(self) -> None:
        """Drain: count the last tasks, leave the live set, hand state to peers, flush to Redis."""
        self._stopping = True  # the loops check it too: redis-py can swallow a cancellation
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=REDIS_TIMEOUT_S + 1.0)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.warning("shared state task %s failed: %r", task.get_name(), task.exception())
            for task in pending:  # it ends at its next turn of the loop; the drain goes on
                log.warning("shared state task %s did not stop in time", task.get_name())
        self._tasks = []
        self.fold_usage()
        self.replica.live_agents.discard(self.name)
        if self._sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscription left
                await self._sub.unsubscribe()
            self._sub = None
        if self.gossip is not None:
            await self.gossip.stop(leave=True)
        if self.writer is not None:
            await self.writer.stop(flush=True)
            if self.writer.last_error is not None:
                log.warning("shared state: last snapshot not written: %s", self.writer.last_error)
        if self.snapshots is not None:
            await self.snapshots.close()

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    # -- Redis ------------------------------------------------------------------------------

    async def _load(self) -> bool:
        assert self.snapshots is not None
        tenants = None if self.config.tenants is None else [*sorted(self.config.tenants), SYSTEM_TENANT]
        try:
            report = await self.snapshots.load(self.replica, tenants)
        except PersistenceError as exc:
            log.warning("shared state: Redis unreachable, serving without its snapshots for now: %s", exc)
            return False
        self.loaded = True
        log.info("shared state: merged %d snapshots, rejected %d", len(report.merged), len(report.rejected))
        if report.merged:
            self._spawn(self._compact(), "agentbus-state-compact")
        return True

    async def _load_until_done(self) -> None:
        delays = Backoff(1.0, LOAD_RETRY_MAX_S, jitter=False)
        attempt = 0
        while not self._stopping:
            attempt += 1
            await asyncio.sleep(delays.delay_s(attempt))
            if self._stopping or await self._load():
                return

    async def _compact(self) -> None:
        """Once our own snapshots hold what we loaded, delete the loaded keys (restarts pile up none)."""
        writer, snapshots = self.writer, self.snapshots
        assert writer is not None
        assert snapshots is not None
        while not await writer.flush():  # only once Redis holds our snapshots are the loaded keys redundant
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)
            if self._stopping:
                return
        deleted = await snapshots.compact()
        log.info("shared state: compacted %d snapshot keys of earlier replicas", len(deleted))

    # -- upkeep -----------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        interval_s = self.gossip_config.gossip_interval_s
        next_collect = time.monotonic() + COLLECT_EVERY_S
        while not self._stopping:
            await asyncio.sleep(interval_s)
            try:
                self.fold_usage()
                gossip = self.gossip
                if gossip is not None and gossip.node != self.replica.replica_id:
                    await gossip.rejoin(self.replica.replica_id)  # pruned while alive: moved to a new id
                if time.monotonic() >= next_collect:
                    next_collect = time.monotonic() + COLLECT_EVERY_S
                    self.replica.collect_expired()
                    self.replica.evict_idle(idle_s=IDLE_TENANT_S)
            except Exception:  # one bad round must not end the upkeep
                log.exception("shared state upkeep failed")

    def fold_usage(self) -> None:
        """Add what the worker's task and token counts grew by since the last fold to the tenant counters."""
        seen = self._seen
        for kind, stats in self._stats.kinds.items():
            for (tenant, outcome), n in stats.tasks.items():
                ok = _COUNTED.get(outcome)
                key = (kind, tenant, outcome)
                if ok is None or (delta := n - seen.get(key, 0)) <= 0:
                    continue
                seen[key] = n
                try:
                    self.replica.record_task(tenant, ok=ok, n=delta)
                except (ValueError, StateError) as exc:
                    self._not_counted(tenant, exc)
        for index, counts in enumerate(self._token_counts):
            for tenant, n in counts.items():
                key = (str(index), tenant, "~tokens")
                if (delta := n - seen.get(key, 0)) <= 0:
                    continue
                seen[key] = n
                try:
                    self.replica.record_tokens(tenant, delta)
                except (ValueError, StateError) as exc:
                    self._not_counted(tenant, exc)

    def _not_counted(self, tenant: str, exc: Exception) -> None:
        if tenant not in self._bad_tenants:  # once per tenant: this runs every round
            self._bad_tenants.add(tenant)
            log.warning("shared state: usage of tenant %r not counted: %s", tenant, exc)

    # -- agentbus status --------------------------------------------------------------------

    def report(self, max_tenants: int = 1000) -> StateReport:
        """This replica's view: usage per tenant (the busiest ``max_tenants``) and the live agents."""
        max_tenants = max(0, min(max_tenants, MAX_REPORT_TENANTS))
        names = self.replica.tenants()
        usage = {t: TenantUsage(**self.replica.usage(t)) for t in names}
        if len(usage) > max_tenants:
            busiest = sorted(usage, key=lambda t: -(usage[t].tasks_completed + usage[t].tasks_failed))
            usage = {t: usage[t] for t in sorted(busiest[: max(0, max_tenants)])}
        return StateReport(
            worker=self.name,
            replica=self.replica.replica_id,
            gossip=self.gossip is not None,
            peers=len(self.gossip.live_peers()) if self.gossip is not None else 0,
            tenants=usage,
            tenants_total=len(names),
            live_agents=self.live_agents()[:MAX_REPORT_AGENTS],
        )

    def live_agents(self) -> list[str]:
        """Members of the live-agents set added by a replica that is alive as far as gossip knows.

        Drained workers remove themselves; a killed one stays in the set until its replica is
        pruned (minutes), but drops out of this view as soon as gossip declares it dead (seconds).
        """
        members = self.replica.live_agent_replicas()
        if self.gossip is None:
            return sorted(members)
        alive = {self.replica.replica_id, *self.gossip.live_peers()}
        return sorted(m for m, replicas in members.items() if replicas & alive)

    async def _answer(self, msg: Msg) -> None:
        try:
            query = _query_decoder.decode(msg.data) if msg.data else StateQuery()
        except msgspec.DecodeError:
            query = StateQuery()
        try:
            await msg.respond(encode(self.report(query.max_tenants)))
        except Exception as exc:  # the asker gave up or the connection is closing
            log.debug("state query not answered: %s", exc)
