"""Shared pieces of ``python -m loadtest``: the task, queues, publishing, and phases in child processes.

Every measured phase runs in a fresh interpreter (``python -m loadtest.bench_child``)
on uvloop, so one phase's garbage, allocator state and connections never weigh on
the next; the parent process owns the server, provisions the queue, publishes the
tasks with agentbus's :class:`~bus.publisher.Publisher` and collects one JSON line
per phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from agents.api import AgentSpec, Handler, agent
from agents.config import WorkerConfig
from agents.registry import Registry
from agents.worker import Worker, tune_gc
from bus.messages import Task, encode
from bus.publisher import Publisher
from bus.topology import (
    TASKS_STREAM,
    ConsumerSpec,
    consumer_name,
    ensure_consumer,
    ensure_streams,
    ensure_tenant_consumer,
    tenant_consumer_name,
)
from loadtest.stats import percentile

__all__ = [
    "TASK_BYTES",
    "TENANT",
    "BenchIn",
    "Child",
    "Countdown",
    "Queue",
    "alternate",
    "bench_agent",
    "bench_worker",
    "fetch_all",
    "payload",
    "percentile",
    "publish",
    "pull_subscription",
    "rss_mib",
    "run_on_uvloop",
    "wait_drained",
]

T = TypeVar("T")

TENANT = "bench"
TASK_BYTES = 200  # the size of the anchors' tasks (docs/performance.md)


class BenchIn(msgspec.Struct):
    """The input of every benchmark agent."""

    seq: int
    sent_at: float
    """Wall clock when the bench published it (the latency phase reads it)."""
    text: str


def _padding() -> str:
    now = time.time()
    sample = Task(id="0" * 32, payload=BenchIn(seq=99_999, sent_at=now, text=""), created_at=now)
    return "x" * max(0, TASK_BYTES - len(encode(sample)))


_PAD = _padding()


def payload(seq: int) -> BenchIn:
    """A task input whose envelope encodes to about ``TASK_BYTES`` bytes."""
    return BenchIn(seq=seq, sent_at=time.time(), text=_PAD)


def bench_worker(url: str, spec: AgentSpec[Any, Any], **config: Any) -> Worker:
    """An in-process worker serving ``spec``, in the process as ``agentbus worker`` runs it: with
    its garbage collector tuned (:func:`~agents.worker.tune_gc`, Python's thresholds otherwise).
    Tuned here, before any clock starts, so its one full collection is not timed (the worker
    process tunes after connecting, which freezes a few more objects; no other difference)."""
    cfg = WorkerConfig(nats_url=url, worker_id="bench", http_port=-1, provision=False, **config)
    tune_gc(cfg.gc_gen0_threshold)
    return Worker(cfg, Registry([spec]))


def bench_agent(kind: str, max_inflight: int) -> Callable[[Handler[BenchIn, None]], AgentSpec[BenchIn, None]]:
    """``@agent(kind=kind, input=BenchIn, max_inflight=...)``: no output type, so no result publish."""
    return agent(kind=kind, input=BenchIn, max_inflight=max_inflight)


class Countdown:
    """Counts handler calls and wakes a waiter when ``target`` is reached (the handlers' only work)."""

    __slots__ = ("count", "done", "target")

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = asyncio.Event()

    def hit(self) -> None:
        """One more call."""
        self.count += 1
        if self.count == self.target:
            self.done.set()


class Queue:
    """The work queue of one phase: a fresh durable consumer for one kind on ``TASKS``: the
    kind's (raw anchors), or with ``per_tenant`` the bench tenant's, which the worker's default
    fair strategy serves (docs/fairness.md; the bench worker does not provision)."""

    def __init__(
        self, js: JetStreamContext, kind: str, *, owns_server: bool, per_tenant: bool = False
    ) -> None:
        self.js = js
        self.kind = kind
        self._owns_server = owns_server
        self._name = tenant_consumer_name(kind, TENANT) if per_tenant else consumer_name(kind)

    async def create(self, *, max_ack_pending: int = 20_000) -> None:
        """Provision the stream (recreated when we own the server) and this kind's consumer."""
        if self._owns_server:  # a clean stream per phase: no dedup window carried over
            with contextlib.suppress(NotFoundError):
                await self.js.delete_stream(TASKS_STREAM)
            await ensure_streams(self.js)
        else:  # someone else's server: create what is missing, change nothing that exists
            try:
                await self.js.stream_info(TASKS_STREAM)
            except NotFoundError:
                await ensure_streams(self.js)
        spec = ConsumerSpec(kind=self.kind, max_ack_pending=max_ack_pending)
        if self._name == consumer_name(self.kind):
            await ensure_consumer(self.js, spec)
        else:
            await ensure_tenant_consumer(self.js, spec, TENANT)

    async def delete(self) -> None:
        """Drop the consumer (and with it any pull request a finished phase left behind)."""
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(TASKS_STREAM, self._name)


async def publish(nc: Client, kind: str, n: int, *, start: int = 0) -> float:
    """Publish ``n`` tasks of ``kind`` through agentbus's Publisher; returns tasks/s."""
    publisher = Publisher(nc, max_pending_acks=1024)
    t0 = time.perf_counter()
    futures = [await publisher.submit_nowait(TENANT, kind, payload(start + i)) for i in range(n)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n} publishes failed, first: {failed[0]!r}")
    return n / (time.perf_counter() - t0)


async def wait_drained(js: JetStreamContext, kind: str, *, timeout_s: float = 60.0) -> None:
    """Wait until the server has applied every ack of ``kind``: the work queue holds none of its
    tasks (neither pending nor unacked), whichever consumer served them."""
    deadline = time.monotonic() + timeout_s
    subject = f"tasks.{TENANT}.{kind}"
    while True:
        info = await js.stream_info(TASKS_STREAM, subjects_filter=subject)
        left = (info.state.subjects or {}).get(subject, 0)
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{subject}: {left} tasks not acked")
        await asyncio.sleep(0.01)


async def pull_subscription(url: str, kind: str) -> tuple[Client, JetStreamContext, Any]:
    """A plain nats-py connection bound to ``kind``'s durable consumer (the raw anchors)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(durable=consumer_name(kind), stream=TASKS_STREAM)
    return nc, js, psub


async def fetch_all(
    psub: Any,
    n: int,
    work: Callable[[Any], Coroutine[Any, Any, None]],
    running: set[asyncio.Task[None]],
    *,
    batch: int,
    slots: int,
    on_done: Callable[[asyncio.Task[None]], None] | None = None,
) -> None:
    """The raw anchors' loop: ``fetch(batch)`` whenever ``batch`` of ``slots`` are free, one
    asyncio task running ``work(msg)`` per message (kept in ``running`` until it ends), until
    ``n`` messages were fetched; ``on_done`` sees each task as it ends."""
    room = asyncio.Event()

    def done(task: asyncio.Task[None]) -> None:
        running.discard(task)
        room.set()
        if on_done is not None:
            on_done(task)

    fetched = 0
    while fetched < n:
        want = min(batch, slots, n - fetched)  # a batch never bigger than the slots
        if slots - len(running) < want:
            room.clear()
            await room.wait()
            continue
        try:
            msgs = await psub.fetch(want, timeout=5)
        except NatsTimeoutError:
            continue
        for msg in msgs:
            task = asyncio.create_task(work(msg))
            running.add(task)
            task.add_done_callback(done)
        fetched += len(msgs)


async def alternate(
    reps: int, sides: Sequence[str], one: Callable[[str, int], Awaitable[dict[str, Any]]]
) -> dict[str, list[dict[str, Any]]]:
    """Run ``one(side, rep)`` for every side ``reps`` times, in ABBA order so drift hits both."""
    out: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for rep in range(reps):
        for side in sides if rep % 2 == 0 else tuple(reversed(sides)):
            out[side].append(await one(side, rep))
    return out


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set (``VmHWM`` for the peak) in MiB, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def run_on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a fresh uvloop event loop (the benchmark's entry points only)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


class Child:
    """One phase in a fresh interpreter; it prints ``READY`` lines, then one JSON result line."""

    def __init__(self, proc: asyncio.subprocess.Process, phase: str) -> None:
        self._proc = proc
        self.phase = phase

    @classmethod
    async def start(cls, phase: str, params: dict[str, Any]) -> Child:
        """Start ``python -m loadtest.bench_child PHASE PARAMS``."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "loadtest.bench_child",
            phase,
            json.dumps(params),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            limit=64 << 20,  # a result line carries every latency sample of a phase
        )
        return cls(proc, phase)

    async def _line(self, timeout_s: float) -> str:
        assert self._proc.stdout is not None
        raw = await asyncio.wait_for(self._proc.stdout.readline(), timeout_s)
        if not raw:
            code = await self._proc.wait()
            raise RuntimeError(f"bench phase {self.phase} exited with {code} (see stderr above)")
        return raw.decode().strip()

    async def ready(self, timeout_s: float = 60.0) -> None:
        """Wait for the child's next ``READY`` line."""
        while (line := await self._line(timeout_s)) != "READY":
            print(line, file=sys.stderr)

    async def result(self, timeout_s: float) -> dict[str, Any]:
        """Wait for the result line and the exit; kills the child (and only it) on timeout."""
        try:
            while not (line := await self._line(timeout_s)).startswith("{"):
                print(line, file=sys.stderr)
            await asyncio.wait_for(self._proc.wait(), 30.0)
        except BaseException:
            await self.kill()
            raise
        out: dict[str, Any] = json.loads(line)
        return out

    async def kill(self) -> None:
        """Kill the child if it still runs."""
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
