"""The system under test of the chaos suite: a 3-node R3 cluster, worker processes, one publisher.

Everything it observes goes into a :class:`~loadtest.chaos_history.History`: the time each
task was sent and acknowledged (or that its ack never came), the workers' journals of
completed runs (:mod:`loadtest.chaos_agent`) and the dead letters stored in ``DLQ``.
Workers get every node's URL as seeds and fail over between them on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ClusterInfo
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from agentbus.cli.up import wait_ready
from agentbus.errors import AgentbusError
from bus.cluster import NatsCluster
from bus.connection import connect
from bus.embedded import free_port
from bus.messages import DeadLetter
from bus.publisher import Publisher, TaskRef, TaskSpec
from bus.topology import DLQ_STREAM, TASKS_STREAM, StreamLimits, consumer_name, ensure_streams
from loadtest.chaos_agent import JOURNAL_GLOB, ChaosIn, JournalLine
from loadtest.chaos_history import Execution, History
from loadtest.chaos_net import RouteNet

__all__ = ["Fleet"]

log = logging.getLogger("agentbus.chaos")

_NO_PEERS_FOR_PLACEMENT = 10005
"""JetStream's error code while the meta leader has not yet heard from every node of a new cluster."""

ROOT = Path(__file__).resolve().parent.parent
_line = msgspec.json.Decoder(JournalLine)
_letter = msgspec.json.Decoder(DeadLetter)


_BURST_ACK_WAIT_S = 30.0


class _Exited(AgentbusError):
    """A worker process exited before it was ready."""


class _Worker:
    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name, self.port = name, free_port()
        with open(workdir / f"{name}.log", "ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--worker-id", name, "--http-port", str(self.port)],
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def ready(self, timeout_s: float = 60.0) -> None:
        """Wait for ``/readyz``; raise at once if the process exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise _Exited(f"chaos worker {self.name} exited {self.proc.returncode}")
            try:
                await wait_ready({self.name: self.port}, timeout_s=1.0)
                return
            except AgentbusError:
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Fleet:
    """The cluster, its route proxies, ``workers`` worker processes and a publisher, in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        workers: int = 3,
        ack_wait_s: float = 2.0,
        max_deliver: int = 3,
        sync_always: bool = True,
    ) -> None:

        self.workdir = workdir
        self.cluster = NatsCluster(3, base_dir=workdir / "nats", sync_always=sync_always)
        self.net = RouteNet(self.cluster)
        self._size = workers
        self.replicas = 3
        self.ack_wait_s = ack_wait_s
        self._flags = ["--max-deliver", str(max_deliver), "--retry-base-s", "0.1"]
        self.workers: list[_Worker] = []
        self._kills = 0
        self._pending: set[asyncio.Future[TaskRef]] = set()
        self._conns: list[Client] = []
        self._pubs: list[Publisher] = []

    @property
    def js(self) -> JetStreamContext:
        """JetStream through the first publisher's connection."""
        return self._conns[0].jetstream()

    async def __aenter__(self) -> Fleet:
        try:
            await self._start()
        except BaseException:  # no __aexit__ after a failed __aenter__: stop what started
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self.net.start()
        await asyncio.to_thread(self.cluster.start)
        # One publisher per node, as clients spread over a cluster; each fails over to the
        # servers its node announces when that node goes away.
        for i, url in enumerate(self.cluster.urls):
            self._conns.append(
                await connect(url, name=f"chaos-publisher-{i + 1}", first_connect_timeout_s=30)
            )
        self._pubs = [Publisher(nc, ack_timeout_s=10.0) for nc in self._conns]
        await self._provision(timeout_s=60.0)
        self.workers = list(
            await asyncio.gather(*(self._start_worker(f"cw{i + 1}") for i in range(self._size)))
        )

    async def _provision(self, *, timeout_s: float) -> None:
        """Create the streams, retrying while the new cluster's meta group still settles (a
        request to a cluster that has just formed can time out on a busy machine)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await ensure_streams(self.js, StreamLimits(replicas=3))
                return
            except (NatsTimeoutError, ServiceUnavailableError, BadRequestError) as exc:
                unplaced = isinstance(exc, BadRequestError) and exc.err_code == _NO_PEERS_FOR_PLACEMENT
                if time.monotonic() > deadline or (isinstance(exc, BadRequestError) and not unplaced):
                    raise
                log.warning("provisioning the streams: %r; retrying", exc)
                await asyncio.sleep(1.0)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for nc in self._conns:
            with contextlib.suppress(Exception):
                await nc.close()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers))
        self.cluster.stop()
        self.net.close()

    def _spawn(self, name: str) -> _Worker:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "AGENTBUS_STREAM_REPLICAS": str(self.replicas),
        }
        argv = [
            sys.executable,
            "-m",
            "agentbus",
            "--log-level",
            "WARNING",
            "worker",
            "--nats-url",
            self.cluster.url,
        ]
        argv += ["--agents", "loadtest.chaos_agent", "--kind", "chaos", "--no-gossip", *self._flags]
        argv += ["--ack-wait-s", str(self.ack_wait_s)]
        return _Worker(name, argv, self.workdir, env)

    def kill_worker(self) -> int:
        """``kill -9`` the next worker in turn; its index."""
        i = self._kills % len(self.workers)
        self._kills += 1
        self.workers[i].proc.kill()
        self.workers[i].proc.wait()
        return i

    async def restart_worker(self, i: int) -> None:
        """Start worker ``i`` again (a new process: a new pid in the journals)."""
        self.workers[i] = await self._start_worker(self.workers[i].name)

    async def _start_worker(self, name: str, attempts: int = 5) -> _Worker:
        """A ready worker process. One whose start fails (its consumer request timed out while the
        cluster was still electing) exits; it is started again, as ``agentbus up`` or Kubernetes would."""
        for attempt in range(1, attempts + 1):
            worker = self._spawn(name)
            try:
                await worker.ready()
                return worker
            except _Exited as exc:
                if attempt == attempts:
                    raise
                log.warning("%s; starting it again", exc)
            except BaseException:
                worker.stop()
                raise
        raise AssertionError("unreachable")

    def _send(
        self, history: History, task_id: str, poison: bool, fut: asyncio.Future[TaskRef] | None
    ) -> None:
        history.sent[task_id] = time.monotonic()
        if poison:
            history.expected_dead.add(task_id)
        if fut is None:
            history.unacked.add(task_id)
            return
        self._pending.add(fut)

        def done(f: asyncio.Future[TaskRef]) -> None:
            self._pending.discard(f)
            if f.cancelled() or f.exception() is not None:
                history.unacked.add(task_id)
            else:
                history.acked[task_id] = time.monotonic()

        fut.add_done_callback(done)

    async def _submit(self, history: History, task_id: str, poison: bool, pub: Publisher) -> None:
        try:
            fut = await pub.submit_nowait("t" + task_id[-1], "chaos", ChaosIn(poison=poison), task_id=task_id)
        except Exception:
            fut = None
        self._send(history, task_id, poison, fut)

    async def publish_steadily(self, history: History, rate_per_s: float, poison_every: int) -> None:
        """Publish ``rate_per_s`` tasks a second until cancelled; every ``poison_every``-th is poison."""
        start, n = time.monotonic(), 0
        while True:
            due = int((time.monotonic() - start) * rate_per_s)
            while n < due:
                n += 1
                pub = self._pubs[n % len(self._pubs)]
                await self._submit(history, f"c{n}", poison_every > 0 and n % poison_every == 0, pub)
            await asyncio.sleep(0.02)

    async def wait_published(self, history: History) -> None:
        """Every outstanding publish resolved (acked, or failed after the ack timeout)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=30)

    async def settle(self, timeout_s: float, lag_timeout_s: float = 15.0) -> list[str]:
        """Wait until the live nodes agree on a meta leader and stream TASKS has a leader and a
        quorum of current replicas (up to ``timeout_s``), then up to ``lag_timeout_s`` more for
        every replica; returns the replicas still not current (the run goes on: they are
        reported, and a stream left without quorum shows as lost tasks at the end)."""
        deadline = time.monotonic() + timeout_s
        lagging = ["(no quorum)"]
        while time.monotonic() < deadline:
            c = await self._stream_cluster()
            if c is not None:
                lagging = [p.name or "?" for p in c.replicas or [] if not p.current]
                if not lagging:
                    return []
                if len(lagging) < (1 + len(c.replicas or [])) / 2:  # a quorum is current
                    deadline = min(deadline, time.monotonic() + lag_timeout_s)
            await asyncio.sleep(0.2)
        return lagging

    async def reseed(self, replicas: list[str], settle_timeout_s: float) -> list[str]:
        """Give each of ``replicas`` (TASKS replicas that stayed behind while a quorum is
        current) a fresh copy of the stream (:meth:`NatsCluster.reseed_replica`); the ones still
        not current after that."""
        for name in replicas:
            i = self.cluster.index_of(name)
            log.warning("reseeding TASKS on %s (its replica did not catch up)", name)
            await asyncio.to_thread(self.cluster.reseed_replica, i, TASKS_STREAM)
        return await self.settle(settle_timeout_s)

    async def _stream_cluster(self) -> ClusterInfo | None:
        """TASKS's cluster info when the live nodes agree on a meta leader and TASKS has a leader."""
        live = [i for i in range(self.cluster.size) if self.cluster.alive(i)]
        leaders = set(await asyncio.gather(*(asyncio.to_thread(self.cluster.meta_leader, i) for i in live)))
        if len(leaders) != 1 or "" in leaders:
            return None
        try:
            info = await self.js.stream_info(TASKS_STREAM)
        except Exception:  # no leader yet, or this connection's server is the one still catching up
            return None
        return info.cluster if info.cluster is not None and info.cluster.leader else None

    async def collect(self, history: History) -> None:
        """Read every journal and every dead letter into ``history`` (replacing what was read before)."""
        history.executions = [
            Execution(line.task_id, str(line.pid), line.attempt, line.start, line.end, line.delivery)
            for line in self._journal_lines()
        ]
        history.dead_letters = await self._dead_letter_ids()

    def _journal_lines(self) -> list[JournalLine]:
        out: list[JournalLine] = []
        for path in sorted(self.workdir.glob(JOURNAL_GLOB)):
            for raw in path.read_bytes().splitlines():
                with contextlib.suppress(msgspec.DecodeError):
                    out.append(_line.decode(raw))
        return out

    async def _dead_letter_ids(self) -> list[str]:
        state = (await self.js.stream_info(DLQ_STREAM)).state
        out: list[str] = []
        for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
            try:
                raw = await self.js.get_msg(DLQ_STREAM, seq)
            except NotFoundError:
                continue
            with contextlib.suppress(msgspec.DecodeError):
                out.append(_letter.decode(raw.data or b"").task_id)
        return out

    async def wait_steady(self, max_backlog: int, timeout_s: float) -> bool:
        """Wait until stream TASKS holds at most ``max_backlog`` tasks (queued or unacked): the
        backlog a fault left has been worked off, so the next healthy window measures the
        offered load, not a catch-up. False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # no leader for a moment: ask again
                if (await self.js.stream_info(TASKS_STREAM)).state.messages <= max_backlog:
                    return True
            await asyncio.sleep(0.2)
        return False

    async def drain(self, history: History, timeout_s: float) -> None:
        """Wait until every acknowledged task ran or was dead-lettered, or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await self.collect(history)
                accounted = {e.task_id for e in history.executions} | set(history.dead_letters)
                if history.acked.keys() <= accounted:
                    return
            await asyncio.sleep(1.0)

    async def rescale(self, replicas: int, ack_wait_s: float) -> None:
        """Give TASKS ``replicas`` and the consumer ``ack_wait_s``: workers stopped (drained), the
        consumer deleted, workers started again.

        Scaling the stream in place under running workers is not what this measures: in that
        case the checker saw acks lost for seconds and tasks run twice with no fault.
        """
        if (replicas, ack_wait_s) == (self.replicas, self.ack_wait_s):
            return
        self.ack_wait_s = ack_wait_s
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in self.workers))
        for name in await self._chaos_consumers():  # the kind's and every tenant's
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(TASKS_STREAM, name)
        await ensure_streams(self.js, StreamLimits(replicas=replicas))
        self.replicas = replicas
        await self.settle(60)
        self.workers = list(await asyncio.gather(*(self._start_worker(w.name) for w in self.workers)))

    async def _chaos_consumers(self) -> list[str]:
        """Names of the consumers of kind ``chaos`` on TASKS: ``agents-chaos`` and the tenants'."""
        return [
            c.name
            for c in await self.js.consumers_info(TASKS_STREAM)
            if c.name == consumer_name("chaos") or (c.config.filter_subject or "").endswith(".chaos")
        ]

    async def burst(self, history: History, n: int, *, replicas: int, tag: str = "") -> float:
        """Publish ``n`` tasks at once to TASKS with ``replicas``; tasks per second until the last ran.

        The consumer gets the default ack wait (30 s) for it: the rounds' 2 s is there to make
        redeliveries after faults quick, and with R1 and an fsync per ack on a loaded disk an ack
        could take longer than that (the checker then flags a redelivery that no fault explains).
        """
        await self.rescale(replicas, _BURST_ACK_WAIT_S)
        ids = [f"{tag or f'r{replicas}'}-{i}" for i in range(n)]
        start = time.monotonic()
        refs = await self._pubs[0].submit_many(
            [TaskSpec("t" + t[-1], "chaos", ChaosIn(), task_id=t) for t in ids], return_exceptions=True
        )
        for t, ref in zip(ids, refs, strict=True):
            history.sent[t] = start
            if isinstance(ref, TaskRef):
                history.acked[t] = time.monotonic()
            else:
                history.unacked.add(t)
        want = {t for t in ids if t in history.acked}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ends = {ln.task_id: ln.end for ln in self._journal_lines() if ln.task_id in want}
            if len(ends) == len(want):
                return len(want) / max(max(ends.values()) - start, 1e-9)
            await asyncio.sleep(0.2)
        raise AgentbusError(f"R{replicas} burst: not every task ran within 120 s")
