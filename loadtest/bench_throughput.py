"""Throughput of a no-op agent: (a) a raw nats-py pull loop, the anchor, against (b) agentbus.

Both consume the same queue shape: ``n`` tasks of ~200 B published with agentbus's
Publisher (so the envelope and headers are the real ones) into ``TASKS``, then a
durable consumer provisioned by :func:`~bus.topology.ensure_consumer`. Only the
consume phase is timed, from the first pull (raw) or ``Worker.start()`` (agentbus,
so its connect counts against it) until the server reports every task acked. The
two alternate (a b, b a, a b ...) so the drift of a noisy machine falls on both.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from agents.api import Context
from bus.messages import decoder_for
from loadtest.bench_common import (
    BenchIn,
    Child,
    Countdown,
    Queue,
    alternate,
    bench_agent,
    bench_worker,
    publish,
    pull_subscription,
    wait_drained,
)

__all__ = ["ThroughputParams", "agentbus_child", "raw_child", "run_throughput"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ThroughputParams:
    """What phases (a) and (b) run."""

    n: int = 200_000
    reps: int = 3  # per side; medians are reported
    raw_batch: int = 500  # the anchors' fastest fetch batch: the hardest anchor to match
    max_inflight: int = 1024  # agentbus slots: four 256-message pull requests in flight (256-1024 tried)
    audit_tasks: bool = False  # agentbus writes a minimal audit record per task (AGENTBUS_AUDIT_TASKS)


async def raw_child(p: dict[str, Any]) -> dict[str, Any]:
    """(a) fetch(batch) -> msgspec decode -> no-op async handler -> ``await msg.ack()``."""
    n, kind, batch = int(p["n"]), str(p["kind"]), int(p["batch"])
    nc, js, psub = await pull_subscription(p["url"], kind)
    decode = decoder_for(BenchIn).decode
    countdown = Countdown(n)

    async def handler(task: Any) -> None:
        countdown.hit()

    got = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while got < n:
        try:
            msgs = await psub.fetch(batch, timeout=5)
        except NatsTimeoutError:
            if time.perf_counter() - t0 > 120:
                raise
            continue
        for msg in msgs:
            await handler(decode(msg.data))
            await msg.ack()
        got += len(msgs)
    handled = time.perf_counter()
    await nc.flush()
    await wait_drained(js, kind)
    drained, cpu = time.perf_counter(), time.process_time() - cpu0
    await nc.close()
    return _result(n, t0, handled, drained, cpu)


async def agentbus_child(p: dict[str, Any]) -> dict[str, Any]:
    """(b) the in-process Worker running a no-op agent without an output (no result publish)."""
    n, kind = int(p["n"]), str(p["kind"])
    countdown = Countdown(n)

    @bench_agent(kind, int(p["max_inflight"]))
    async def noop(ctx: Context, task: BenchIn) -> None:
        countdown.hit()

    worker = bench_worker(p["url"], noop, audit_tasks=bool(p.get("audit_tasks")))
    observer = await nats.connect(p["url"])
    cpu0, t0 = time.process_time(), time.perf_counter()
    await worker.start()
    try:
        await asyncio.wait_for(countdown.done.wait(), 120)
        handled = time.perf_counter()
        await wait_drained(observer.jetstream(), kind)
        drained, cpu = time.perf_counter(), time.process_time() - cpu0
    finally:
        await worker.stop()
        await observer.close()
    return _result(n, t0, handled, drained, cpu)


def _result(n: int, t0: float, handled: float, drained: float, cpu_s: float) -> dict[str, Any]:
    return {
        "rate": n / (drained - t0),
        "handled_rate": n / (handled - t0),
        "seconds": drained - t0,
        "cpu_us_per_task": cpu_s / n * 1e6,  # this process only: steadier than rates on a busy box
    }


async def run_throughput(
    nc: Client,
    url: str,
    params: ThroughputParams,
    *,
    kind: str,
    owns_server: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Alternate raw and agentbus ``reps`` times each; medians, every rep, and the ratio."""
    publish_rates: list[float] = []

    async def one(side: str, rep: int) -> dict[str, Any]:
        side_kind = f"{kind}-{side}{rep}"
        queue = Queue(nc.jetstream(), side_kind, owns_server=owns_server, per_tenant=side == "agentbus")
        await queue.create()
        publish_rates.append(await publish(nc, side_kind, params.n))
        child = await Child.start(
            side,
            {
                "url": url,
                "kind": side_kind,
                "n": params.n,
                "batch": params.raw_batch,
                "max_inflight": params.max_inflight,
                "audit_tasks": params.audit_tasks,
            },
        )
        result = await child.result(timeout_s=180)
        await queue.delete()
        say(
            f"  {side:<12} {result['rate']:>9,.0f} tasks/s, "
            f"{result['cpu_us_per_task']:5.1f} us CPU/task (rep {rep + 1})"
        )
        return result

    reps = await alternate(params.reps, ("raw", "agentbus"), one)
    raw = statistics.median(r["rate"] for r in reps["raw"])
    ours = statistics.median(r["rate"] for r in reps["agentbus"])
    raw_cpu = statistics.median(r["cpu_us_per_task"] for r in reps["raw"])
    our_cpu = statistics.median(r["cpu_us_per_task"] for r in reps["agentbus"])
    return {
        "raw_rate": raw,
        "agentbus_rate": ours,
        "ratio": ours / raw,
        "raw_cpu_us_per_task": raw_cpu,
        "agentbus_cpu_us_per_task": our_cpu,
        "cpu_ratio": raw_cpu / our_cpu,
        "raw_rates": [r["rate"] for r in reps["raw"]],
        "agentbus_rates": [r["rate"] for r in reps["agentbus"]],
        "publish_rate": statistics.median(publish_rates),
        "n": params.n,
        "reps": params.reps,
        "raw_batch": params.raw_batch,
        "max_inflight": params.max_inflight,
        "audit_tasks": params.audit_tasks,
    }
