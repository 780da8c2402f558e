"""The worker process: connect, provision, run one :class:`KindRunner` per kind, drain on SIGTERM.

Drain (docs/architecture.md, step 8): stop fetching and withdraw the pull requests the server
holds; tasks already on their way are handed back at once (``-NAK`` without delay); running
handlers get ``drain_timeout_s`` to finish; whatever still runs then is cancelled
and handed back, so another replica takes it at once instead of after ack_wait;
acks are flushed, the connection drained, exit 0.

Agents' ``on_start(services)`` hooks run first, before the probe server and the
connection: a plugin that cannot be configured raises ConfigError and the worker
exits 78 with readiness never green and no task taken. ``on_stop`` runs after the drain.

Shared tenant state (``agents._shared_state``) starts after the consumers' setup
and before the first fetch, so the first handler already finds its tenant's store;
it stops after the last handler and before the connection drains: the last counts
are folded in, the worker leaves the live-agents set, hands its state to peers and
flushes it to Redis.

Liveness: ``/healthz`` fails once the NATS connection is closed for good or its read
loop has ended while nats-py is not reconnecting (nothing will be read again); after
``nats_lost_exit_s`` of that the worker stops without waiting for handlers and exits
with :data:`EXIT_LOST_NATS` (70), so ``agentbus up``'s supervisor or Kubernetes
restarts it. (Exit codes 2 and 78 are start-up usage and configuration errors.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError
from prometheus_client import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from agentbus.backoff import Backoff
from agentbus.errors import ConfigError
from agentbus.http import HealthServer
from agents._runner import KindRunner
from agents._shared_state import SharedState
from agents._state_metrics import StateCollector
from agents.api import AgentSpec, Records, Services
from agents.config import WorkerConfig
from agents.lifecycle import Lifecycle, State
from agents.metrics import StatsCollector, WorkerStats
from agents.registry import Registry
from bus.connection import connect, redact_url
from bus.consumer import PullConsumer, TaskConsumer
from bus.dlq import DeadLetterQueue
from bus.fair import FairConsumer
from bus.ledger import Ledger
from bus.publisher import Publisher
from bus.records import KV_BUCKET, ONCE_BUCKET, bucket
from bus.subjects import TASKS_PREFIX
from bus.topology import (
    TASKS_STREAM,
    ConsumerSpec,
    consumer_name,
    ensure_consumer,
    ensure_streams,
    ensure_tenant_consumer,
    remove_kind_consumer,
    tenant_consumer_name,
)

__all__ = ["EXIT_LOST_NATS", "Worker", "run_worker", "tune_gc"]

log = logging.getLogger("agentbus.worker")

EXIT_LOST_NATS = 70
"""The worker's exit code after it lost NATS for good: restart me (EX_SOFTWARE)."""


class Worker:
    """One worker process's runtime (usable in-process by tests and embedders)."""

    def __init__(
        self,
        config: WorkerConfig,
        registry: Registry,
        *,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.registry = registry.only(config.kinds) if config.kinds else registry
        if not len(self.registry):
            raise ConfigError("no agents to run")
        self.name = config.worker_name
        self.lifecycle = Lifecycle()
        self.stats = WorkerStats(self.name)
        self.metrics = metrics_registry or CollectorRegistry()
        if metrics_registry is None:
            ProcessCollector(registry=self.metrics)  # process_cpu_seconds_total for the scaler
        StatsCollector(self.stats, self.metrics)
        for spec in self.registry:
            if spec.collector is not None:  # an agent's own metrics (the LLM agents' breakers)
                self.metrics.register(spec.collector)
        self.runners: list[KindRunner] = []
        self.state = SharedState(config, name=self.name, stats=self.stats)
        """Shared tenant state: this worker's replica, gossip, Redis snapshots (docs/state.md)."""
        StateCollector(self.state, self.metrics)
        self.http: HealthServer | None = None
        self._nc: Client | None = None
        self._background: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self.exit_code = 0
        """What the process exits with: 0, or :data:`EXIT_LOST_NATS` once NATS was lost for good."""
        self._bounded: set[str] = set()  # kinds whose consumer has a server-side max_deliver (warned)
        self._started_specs: list[AgentSpec[Any, Any]] = []  # on_start ran: on_stop runs at the end

    # -- probes -----------------------------------------------------------------------------

    def _ready(self) -> tuple[bool, str]:
        state = self.lifecycle.state
        connected = self._nc is not None and self._nc.is_connected
        ok = state is State.RUNNING and connected
        return ok, f"state={state} nats={'connected' if connected else 'disconnected'}"

    def _alive(self) -> tuple[bool, str]:
        state = self.lifecycle.state
        if state is State.STOPPED:
            return False, f"state={state}"
        lost = self._nats_lost() if state is not State.STOPPING else ""
        return not lost, f"state={state}" + (f" nats={lost}" if lost else "")

    def _nats_lost(self) -> str:
        """Why nothing will be read from NATS again ("" while it may): closed, or the read loop ended."""
        nc = self._nc
        if nc is None:
            return ""  # still connecting: a broker that comes up later is normal
        if nc.is_closed:
            return "closed"
        reading = nc._reading_task
        if (reading is None or reading.done()) and not (nc.is_reconnecting or nc.is_connecting):
            return "read-loop-ended"
        return ""

    def _move(self, state: State) -> None:
        if self.lifecycle.move(state):
            self.stats.state = str(state)
            log.info("worker %s is %s", self.name, state)

    # -- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the agents' plugins, connect, provision, start consuming. Returns once running."""
        await self._start_agents()
        try:
            await self._start()
        except BaseException:  # a failed or cancelled start closes what the plugins opened
            await self._stop_agents()
            raise

    async def _start(self) -> None:
        cfg = self.config
        if cfg.http_port >= 0:
            self.http = HealthServer(
                registry=self.metrics,
                ready=self._ready,
                alive=self._alive,
                host=cfg.http_host,
                port=cfg.http_port,
            )
            await self.http.start()
        self._nc = nc = await connect(
            cfg.nats_url,
            auth=cfg.nats_auth,
            name=f"agentbus-worker-{self.name}",
            on_disconnect=self._on_disconnect,
            on_reconnect=self._on_reconnect,
            on_closed=self._on_disconnect,
            fast_path=cfg.nats_fast_path,
        )
        self.stats.bad_frames = lambda: getattr(nc, "bad_frames", {})
        log.info("connected to NATS at %s (client %s)", redact_url(cfg.nats_url), type(nc).__name__)
        self.stats.connected = True
        js = nc.jetstream()
        if cfg.provision:
            await ensure_streams(js, cfg.stream_limits, cfg.records)
        publisher = Publisher(
            nc,
            max_msg_bytes=cfg.stream_limits.max_msg_bytes,
            tenant_quota=cfg.stream_limits.tenant_max_queued,
        )
        dlq = DeadLetterQueue(nc, worker=self.name)
        retry = Backoff(cfg.retry_base_s, cfg.retry_max_s)
        for spec in self.registry:
            if cfg.provision and cfg.fairness == "kind":
                await ensure_consumer(js, self._consumer_spec(spec.kind))
            elif cfg.provision and await remove_kind_consumer(js, spec.kind):
                log.warning("removed the per-kind consumer of %s: tenants get their own", spec.kind)
            slots = cfg.max_inflight or spec.max_inflight
            runner = KindRunner(
                spec,
                nc=nc,
                publisher=publisher,
                dlq=dlq,
                stats=self.stats.kind(spec.kind),
                worker=self.name,
                max_deliver=cfg.max_deliver,
                retry=retry,
                tenants=cfg.tenants,
                consumer=self._strategy(nc, dlq, spec.kind, slots),
                reply_prefixes=cfg.reply_prefixes,
            )
            runner.stats.inflight = lambda r=runner: r.consumer.held  # type: ignore[misc]
            runner.stats.prefetched = lambda r=runner: r.consumer.prefetched  # type: ignore[misc]
            self.runners.append(runner)
        self.state.install(self.runners)
        await _install_records(js, self.runners, self.name)
        for runner in self.runners:
            runner.audit_tasks = cfg.audit_tasks and not runner.spec.audits
        await self.state.start(nc)
        for runner in self.runners:
            await runner.consumer.start()
        served = {r.kind for r in self.runners}
        self._background = [
            asyncio.create_task(self._watch_nats(), name="agentbus-nats-watchdog"),
            asyncio.create_task(self._heartbeats(), name="agentbus-heartbeats"),
            asyncio.create_task(self._consumer_info(), name="agentbus-consumer-info"),
            asyncio.create_task(
                dlq.sweep_forever(served, interval_s=cfg.sweep_interval_s, grace_s=cfg.unrouted_grace_s),
                name="agentbus-unrouted-sweep",
            ),
        ]
        self._move(State.RUNNING)

    async def _start_agents(self) -> None:
        """Run every agent's ``on_start``; a failure stops the ones already started and propagates."""
        services = Services(worker=self.name, stores=self.state.replica.store)
        for spec in self.registry:
            if spec.on_start is None:
                continue
            try:
                await spec.on_start(services)
            except BaseException:
                await self._stop_agents()
                raise
            self._started_specs.append(spec)
        self.state.count_tokens(services.token_counts)

    async def _stop_agents(self) -> None:
        specs, self._started_specs = self._started_specs, []
        for spec in reversed(specs):
            if spec.on_stop is not None:
                try:
                    await spec.on_stop()
                except Exception as exc:  # the drain goes on
                    log.warning("agent %s: on_stop failed: %s", spec.kind, exc)

    def _strategy(
        self, nc: Client, dlq: DeadLetterQueue, kind: str, slots: int
    ) -> Callable[[Callable[[Msg], None]], TaskConsumer]:
        """How ``kind`` is consumed: per kind in arrival order, or fair between tenants."""
        cfg = self.config
        prefetch = cfg.prefetch_for(slots)
        if cfg.fairness == "kind":
            return lambda on_message: PullConsumer(
                nc,
                stream=TASKS_STREAM,
                consumer=consumer_name(kind),
                slots=slots,
                on_message=on_message,
                prefetch=prefetch,
            )
        js = nc.jetstream()
        spec = self._consumer_spec(kind)

        async def provision(tenant: str) -> str:
            if not cfg.provision:
                return tenant_consumer_name(kind, tenant)
            try:
                return await ensure_tenant_consumer(js, spec, tenant)
            except BadRequestError as exc:
                if exc.err_code != _FILTER_NOT_UNIQUE:
                    raise
                # a worker of the per-kind strategy (a rolling update) brought agents-<kind> back
                await remove_kind_consumer(js, kind)
                return await ensure_tenant_consumer(js, spec, tenant)

        return lambda on_message: FairConsumer(
            nc,
            stream=TASKS_STREAM,
            kind=kind,
            slots=slots,
            on_message=on_message,
            provision=provision,
            on_invalid=lambda: dlq.sweep_invalid(kind),
            prefetch=prefetch,
            tenant_cap=cfg.tenant_max_inflight,
            weights=cfg.tenant_weights,
        )

    def _consumer_spec(self, kind: str) -> ConsumerSpec:
        cfg = self.config
        return ConsumerSpec(kind=kind, ack_wait_s=cfg.ack_wait_s, max_deliver=cfg.max_deliver)

    def request_stop(self) -> None:
        """Begin the drain (signal handlers call this)."""
        self._stop.set()

    async def start_unless_stopped(self) -> bool:
        """:meth:`start`, given up when :meth:`request_stop` comes first; True once running.

        A worker waits for NATS as long as it takes (a broker that comes up later is
        normal under Kubernetes), so a SIGTERM or Ctrl-C while it waits must end the
        wait: the start is cancelled and whatever it opened (the probe server, a
        connection) is closed, and this returns False.
        """
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if starting.done():
            starting.result()  # a failed start raises here
            return True
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.warning(
            "worker %s stopped while starting (NATS at %s)", self.name, redact_url(self.config.nats_url)
        )
        await self.stop()
        return False

    async def run_until_stopped(self) -> None:
        """Wait for :meth:`request_stop`, then drain and stop."""
        await self._stop.wait()
        await self.stop()

    async def stop(self) -> None:
        """Drain: stop fetching, let handlers finish within the grace period, hand back the rest."""
        if self.lifecycle.state in (State.STOPPING, State.STOPPED):
            return
        self._move(State.STOPPING)
        for runner in self.runners:
            runner.draining = True
        for runner in self.runners:
            await runner.consumer.stop_fetching()
        loop = asyncio.get_running_loop()
        # with NATS lost nothing can be acked: hand the slots back at once (they return after ack_wait)
        drain_s = 0.0 if self.exit_code == EXIT_LOST_NATS else self.config.drain_timeout_s
        deadline = loop.time() + drain_s
        while any(r.slots for r in self.runners) and loop.time() < deadline:
            pending = [t for r in self.runners for t in r.slots]
            await asyncio.wait(pending, timeout=min(0.5, max(0.0, deadline - loop.time())))
        cancelled = sum(r.cancel_handlers() for r in self.runners)
        if cancelled:
            log.warning("drain timeout: handing back %d running tasks", cancelled)
        settle_by = loop.time() + 5.0  # cancelled handlers hand their tasks back (a Task may follow)
        while (leftovers := [t for r in self.runners for t in r.slots]) and loop.time() < settle_by:
            await asyncio.wait(leftovers, timeout=max(0.0, settle_by - loop.time()))
        for task in self._background:
            task.cancel()
        for runner in self.runners:
            await runner.consumer.close()
        await self._stop_agents()
        try:
            await self.state.stop()
        except Exception as exc:  # the drain goes on: peers and Redis keep what they already have
            log.warning("stopping shared state failed: %s", exc)
        if self._nc is not None and not self._nc.is_closed:
            try:
                await asyncio.wait_for(self._nc.drain(), 10.0)  # flushes the last acks
            except Exception as exc:
                log.warning("nats drain failed: %s", exc)
        self.stats.connected = False
        self._move(State.STOPPED)
        if self.http is not None:
            await self.http.close()

    # -- background -------------------------------------------------------------------------

    async def _on_disconnect(self) -> None:
        self.stats.connected = False

    async def _on_reconnect(self) -> None:
        self.stats.connected = True
        for runner in self.runners:
            runner.consumer.reset_credit()

    async def _watch_nats(self) -> None:
        """Stop the worker with :data:`EXIT_LOST_NATS` once NATS stayed lost ``nats_lost_exit_s``."""
        grace_s = self.config.nats_lost_exit_s
        every_s = min(1.0, grace_s / 2) or 0.05
        loop = asyncio.get_running_loop()
        since: float | None = None
        while True:
            await asyncio.sleep(every_s)
            lost = self._nats_lost()
            if not lost:
                since = None
                continue
            if since is None:
                since = loop.time()
                log.error("lost NATS (%s): exiting in %gs unless it recovers", lost, grace_s)
            if loop.time() - since >= grace_s:
                log.error("lost NATS (%s) for %gs: exiting %d to be restarted", lost, grace_s, EXIT_LOST_NATS)
                self.exit_code = EXIT_LOST_NATS
                self._stop.set()
                return

    async def _heartbeats(self) -> None:
        every_s = self.config.ack_wait_s / 4  # two heartbeats fit in half an ack wait
        while True:
            await asyncio.sleep(every_s)
            for runner in self.runners:
                try:
                    await runner.heartbeat(older_than_s=every_s)
                except Exception as exc:
                    log.debug("heartbeat failed: %s", exc)

    async def _consumer_info(self) -> None:
        """Refresh pending counts from the consumer leader; recreate a consumer that vanished."""
        assert self._nc is not None
        js = self._nc.jetstream()
        while True:
            for runner in self.runners:
                if self.config.fairness != "kind":
                    await self._queue_depth(js, runner)
                    continue
                try:
                    info = await js.consumer_info(TASKS_STREAM, consumer_name(runner.kind), timeout=2.0)
                except NotFoundError:
                    if self.config.provision:
                        log.warning("consumer of %s is gone: recreating it", runner.kind)
                        await _quietly(ensure_consumer(js, self._consumer_spec(runner.kind)))
                        runner.consumer.reset_credit()
                    continue
                except Exception as exc:
                    log.debug("consumer info failed: %s", exc)
                    continue
                runner.stats.pending = info.num_pending or 0
                runner.stats.ack_pending = info.num_ack_pending or 0
                bounded = info.config.max_deliver or -1
                if bounded > 0 and runner.kind not in self._bounded:  # provisioned by someone else
                    self._bounded.add(runner.kind)
                    log.warning(
                        "consumer %s has max_deliver %d on the server: a task whose last delivery "
                        "dies stays in the work queue; set it to -1 (docs/wire.md, 'Deliveries')",
                        consumer_name(runner.kind),
                        bounded,
                    )
            await asyncio.sleep(self.config.consumer_info_interval_s)

    async def _queue_depth(self, js: JetStreamContext, runner: KindRunner) -> None:
        """The kind's depth over all its tenants' consumers: the messages its subjects hold
        (a work queue keeps exactly the queued and the unacknowledged ones)."""
        try:
            info = await js.stream_info(TASKS_STREAM, subjects_filter=f"{TASKS_PREFIX}.*.{runner.kind}")
        except Exception as exc:
            log.debug("stream info failed: %s", exc)
            return
        total = sum((info.state.subjects or {}).values())
        mine = runner.consumer.held + runner.consumer.prefetched
        runner.stats.pending = max(0, total - mine)
        runner.stats.ack_pending = min(total, mine)


_FILTER_NOT_UNIQUE = 10100  # "filtered consumer not unique on workqueue stream"


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except Exception as exc:
        log.warning("%s", exc)


def tune_gc(gen0_threshold: int) -> None:
    """Collect once, freeze what start-up built, then collect young objects less often.

    Frozen objects (modules, classes, the registry: everything alive after start-up) are
    never traversed again, so a full collection costs only what tasks allocated. With
    thousands of tasks in flight, each holding a few dozen container objects, Python's
    gen-0 threshold of 700 means a collection every few tasks, each walking every young
    in-flight object: 17 % of the LLM benchmark's CPU (docs/llm.md). 0 keeps
    Python's thresholds.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def run_worker(config: WorkerConfig, registry: Registry) -> int:
    """Run a worker until SIGTERM/SIGINT, on uvloop; returns the exit code (0 after a clean drain)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        runner = asyncio.Runner()

    async def main() -> int:
        worker = Worker(config, registry)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        if not await worker.start_unless_stopped():
            return 0
        tune_gc(config.gc_gen0_threshold)
        if worker.http is not None:
            log.info("worker %s serving /metrics on port %d", worker.name, worker.http.port)
        await worker.run_until_stopped()
        return worker.exit_code

    with runner:
        return runner.run(main())


async def _install_records(js: JetStreamContext, runners: list[KindRunner], worker: str) -> None:
    """Give every runner the effects ledger and the tenant KV (``bus.ledger``), if provisioned."""
    try:
        once, kv = await bucket(js, ONCE_BUCKET), await bucket(js, KV_BUCKET)
    except Exception as exc:  # not provisioned, or no permission: say so, steps run unguarded
        log.warning("no effects ledger (ctx.once runs steps without it, ctx.kv fails): %s", exc)
        return
    ledger = Ledger(once, worker=worker)
    for runner in runners:
        runner.records = Records(ledger=ledger, kv=kv, lease_s=runner.spec.timeout_s + 1.0, worker=worker)
