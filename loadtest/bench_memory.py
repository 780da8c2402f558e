"""(e) Memory per in-flight task: ``n`` tasks held at once, each handler awaiting one Event.

The agentbus child runs a worker with ``max_inflight = n`` on a consumer whose
``max_ack_pending`` is twice that; the anchor is raw nats-py holding ``n``
fetched messages, each decoded and parked in its own asyncio task on the same
kind of Event. After a warm-up batch (held and released, so every code path has
run once) a child reads its RSS, the parent publishes ``n`` tasks, and once all
are parked the child reads its RSS again: the delta over ``n`` is what one task
in flight costs (the NATS message, the decoded task, the Task and its frames, and
for agentbus its tracking slot, handler Context and tenant scope).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from agents.api import Context
from bus.messages import Task, decoder_for
from loadtest.bench_common import (
    BenchIn,
    Child,
    Countdown,
    Queue,
    bench_agent,
    bench_worker,
    publish,
    pull_subscription,
    rss_mib,
)

__all__ = ["MemoryParams", "memory_child", "raw_memory_child", "run_memory"]


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryParams:
    """What phase (e) runs."""

    n: int = 100_000
    warmup: int = 1_000


async def _until(countdown: Countdown, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while countdown.count < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{countdown.count} of {count} tasks after {timeout_s}s")
        await asyncio.sleep(0.01)


async def _measure(
    n: int, warmup: int, entered: Countdown, finished: Countdown, release: asyncio.Event
) -> dict[str, Any]:
    """The protocol both children follow, with the parent publishing at each READY."""
    print("READY", flush=True)  # the parent publishes the warm-up batch
    await _until(entered, warmup, 60)
    release.set()
    await _until(finished, warmup, 60)
    await asyncio.sleep(0.2)  # let the warm-up acks go out
    release.clear()
    gc.collect()
    base = rss_mib()
    print("READY", flush=True)  # the parent publishes the n tasks to hold
    await _until(entered, warmup + n, 120)
    await asyncio.sleep(0.2)
    gc.collect()
    loaded = rss_mib()
    release.set()
    await _until(finished, warmup + n, 120)
    return {"base_mib": base, "loaded_mib": loaded, "kb_per_task": (loaded - base) * 1024.0 / n}


async def memory_child(p: dict[str, Any]) -> dict[str, Any]:
    """agentbus: hold ``n`` tasks in flight in a worker and measure the RSS they add."""
    n, warmup, kind = int(p["n"]), int(p["warmup"]), str(p["kind"])
    entered, finished = Countdown(warmup + n), Countdown(warmup + n)
    release = asyncio.Event()

    @bench_agent(kind, n)
    async def hold(ctx: Context, task: BenchIn) -> None:
        entered.hit()
        await release.wait()
        finished.hit()

    worker = bench_worker(p["url"], hold, max_inflight=n)
    await worker.start()
    try:
        return await _measure(n, warmup, entered, finished, release)
    finally:
        await worker.stop()


async def raw_memory_child(p: dict[str, Any]) -> dict[str, Any]:
    """The anchor: raw nats-py holding ``n`` fetched messages, one asyncio task each."""
    n, warmup, kind = int(p["n"]), int(p["warmup"]), str(p["kind"])
    entered, finished = Countdown(warmup + n), Countdown(warmup + n)
    release = asyncio.Event()
    nc, _, psub = await pull_subscription(p["url"], kind)
    decode = decoder_for(BenchIn).decode
    running: set[asyncio.Task[None]] = set()

    async def hold(msg: Msg, task: Task[BenchIn]) -> None:
        entered.hit()
        await release.wait()
        await msg.ack()
        finished.hit()

    async def fetch_all() -> None:
        fetched = 0
        while fetched < warmup + n:
            try:
                msgs = await psub.fetch(500, timeout=1)
            except NatsTimeoutError:
                continue
            for msg in msgs:
                task = asyncio.create_task(hold(msg, decode(msg.data)))
                running.add(task)
                task.add_done_callback(running.discard)
            fetched += len(msgs)

    fetcher = asyncio.create_task(fetch_all())
    try:
        return await _measure(n, warmup, entered, finished, release)
    finally:
        await fetcher
        await nc.flush()
        await nc.close()


async def run_memory(
    nc: Client,
    url: str,
    params: MemoryParams,
    *,
    kind: str,
    owns_server: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Run the anchor, then agentbus, each holding ``n`` tasks."""
    out: dict[str, Any] = {"memory_n": params.n}
    for side, phase in (("raw", "raw_memory"), ("agentbus", "memory")):
        side_kind = f"{kind}-{side}"
        queue = Queue(nc.jetstream(), side_kind, owns_server=owns_server, per_tenant=side == "agentbus")
        await queue.create(max_ack_pending=2 * (params.n + params.warmup))
        child = await Child.start(
            phase, {"url": url, "kind": side_kind, "n": params.n, "warmup": params.warmup}
        )
        try:
            await child.ready()
            await publish(nc, side_kind, params.warmup)
            await child.ready()
            await publish(nc, side_kind, params.n, start=params.warmup)
        except BaseException:
            await child.kill()
            raise
        result = await child.result(timeout_s=300)
        await queue.delete()
        say(
            f"  {side:<12} {result['kb_per_task']:5.2f} KB per task in flight "
            f"({result['base_mib']:.1f} -> {result['loaded_mib']:.1f} MiB)"
        )
        prefix = "" if side == "agentbus" else "raw_"
        out[f"{prefix}rss_per_inflight_kb"] = result["kb_per_task"]
        out[f"{prefix}memory_base_mib"] = result["base_mib"]
        out[f"{prefix}memory_loaded_mib"] = result["loaded_mib"]
    return out
