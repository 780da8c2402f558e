"""(c) I/O-bound agents: each handler awaits ``asyncio.sleep(sleep_s)``, as if waiting on an LLM.

With ``max_inflight`` slots busy ``sleep_s`` each, the ideal rate is
``max_inflight / sleep_s`` (20,000 tasks/s for 1,000 slots and 50 ms); what is lost
below it is the consumer's own CPU and the slots its pulling leaves empty. The
anchor is a raw nats-py loop that fetches ``batch`` whenever that many slots are
free and runs each message as an asyncio task. Each child reports its rate from the
moment it is connected and subscribed (as the research anchor measures) until every
task is acked, its mean number in flight, its CPU use and peak RSS (``VmHWM``).
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
from nats.aio.msg import Msg

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
    fetch_all,
    publish,
    pull_subscription,
    rss_mib,
    wait_drained,
)

__all__ = ["IoParams", "io_child", "raw_io_child", "run_io"]


@dataclass(frozen=True, kw_only=True, slots=True)
class IoParams:
    """What phase (c) runs."""

    n: int = 100_000
    reps: int = 2  # per side
    sleep_s: float = 0.05
    max_inflight: int = 1000
    raw_batch: int = 100  # the anchor fetches this much once as many slots are free

    @property
    def ideal_rate(self) -> float:
        """Tasks/s if every slot were busy all the time."""
        return self.max_inflight / self.sleep_s


class _Meter:
    """Samples how many tasks are in flight (the rate is that over ``sleep_s``) and the CPU used."""

    def __init__(self, inflight: Callable[[], int]) -> None:
        self._inflight = inflight
        self._samples: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = self._t0 = 0.0

    def start(self) -> None:
        self._cpu0, self._t0 = time.process_time(), time.perf_counter()
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self._samples.append(self._inflight())

    def result(self, n: int) -> dict[str, Any]:
        seconds, cpu_s = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        if self._task is not None:
            self._task.cancel()
        return {
            "rate": n / seconds,
            "seconds": seconds,
            "mean_inflight": statistics.fmean(self._samples) if self._samples else 0.0,
            "cpu_busy": cpu_s / seconds,  # near 1.0: this process was CPU-bound (or starved)
            "cpu_us_per_task": cpu_s / n * 1e6,
            "peak_rss_mib": rss_mib("VmHWM"),
        }


async def io_child(p: dict[str, Any]) -> dict[str, Any]:
    """agentbus: the sleeping agent on the in-process Worker over ``n`` queued tasks."""
    n, kind, sleep_s = int(p["n"]), str(p["kind"]), float(p["sleep_s"])
    countdown = Countdown(n)

    @bench_agent(kind, int(p["max_inflight"]))
    async def io_bound(ctx: Context, task: BenchIn) -> None:
        await asyncio.sleep(sleep_s)
        countdown.hit()

    worker = bench_worker(p["url"], io_bound)
    observer = await nats.connect(p["url"])
    meter = _Meter(lambda: worker.runners[0].consumer.held if worker.runners else 0)
    await worker.start()  # connected and subscribed, as the anchor is when its clock starts
    meter.start()  # (the first delivery arrives after start returns: no task runs before the clock)
    try:
        await asyncio.wait_for(countdown.done.wait(), 60 + 10 * n * sleep_s / int(p["max_inflight"]))
        await wait_drained(observer.jetstream(), kind)
        return meter.result(n)
    finally:
        await worker.stop()
        await observer.close()


async def raw_io_child(p: dict[str, Any]) -> dict[str, Any]:
    """The anchor: fetch(batch) when ``batch`` slots are free, one asyncio task per message."""
    n, kind, sleep_s = int(p["n"]), str(p["kind"]), float(p["sleep_s"])
    slots, batch = int(p["max_inflight"]), int(p["batch"])
    nc, js, psub = await pull_subscription(p["url"], kind)
    decode = decoder_for(BenchIn).decode
    countdown = Countdown(n)
    running: set[asyncio.Task[None]] = set()

    async def work(msg: Msg) -> None:
        try:
            decode(msg.data)
            await asyncio.sleep(sleep_s)
            await msg.ack()
        finally:
            countdown.hit()

    meter = _Meter(lambda: len(running))
    meter.start()
    await fetch_all(psub, n, work, running, batch=batch, slots=slots)
    await countdown.done.wait()
    await nc.flush()
    await wait_drained(js, kind)
    result = meter.result(n)
    await nc.close()
    return result


async def run_io(
    nc: Client,
    url: str,
    params: IoParams,
    *,
    kind: str,
    owns_server: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Alternate the anchor and agentbus; medians of the rates against the ideal."""

    async def one(side: str, rep: int) -> dict[str, Any]:
        side_kind = f"{kind}-{side}{rep}"
        queue = Queue(nc.jetstream(), side_kind, owns_server=owns_server, per_tenant=side == "agentbus")
        await queue.create()
        await publish(nc, side_kind, params.n)
        child = await Child.start(
            "io" if side == "agentbus" else "raw_io",
            {
                "url": url,
                "kind": side_kind,
                "n": params.n,
                "sleep_s": params.sleep_s,
                "max_inflight": params.max_inflight,
                "batch": params.raw_batch,
            },
        )
        result = await child.result(timeout_s=120 + 10 * params.n / params.ideal_rate)
        await queue.delete()
        say(
            f"  {side:<12} {result['rate']:>9,.0f} tasks/s, {result['mean_inflight']:5.0f} in flight on "
            f"average, CPU {100 * result['cpu_busy']:3.0f}% busy (rep {rep + 1})"
        )
        return result

    reps = await alternate(params.reps, ("raw", "agentbus"), one)
    ours, raw = reps["agentbus"], reps["raw"]
    rate = statistics.median(r["rate"] for r in ours)
    raw_rate = statistics.median(r["rate"] for r in raw)
    return {
        "io_rate": rate,
        "io_pct_of_ideal": 100.0 * rate / params.ideal_rate,
        "io_ideal_rate": params.ideal_rate,
        "io_peak_rss_mib": max(r["peak_rss_mib"] for r in ours),
        "io_mean_inflight": statistics.median(r["mean_inflight"] for r in ours),
        "io_cpu_busy": statistics.median(r["cpu_busy"] for r in ours),
        "io_cpu_us_per_task": statistics.median(r["cpu_us_per_task"] for r in ours),
        "raw_io_rate": raw_rate,
        "raw_io_pct_of_ideal": 100.0 * raw_rate / params.ideal_rate,
        "raw_io_peak_rss_mib": max(r["peak_rss_mib"] for r in raw),
        "io_rates": [r["rate"] for r in ours],
        "raw_io_rates": [r["rate"] for r in raw],
        "io_n": params.n,
        "io_reps": params.reps,
        "io_sleep_s": params.sleep_s,
        "io_max_inflight": params.max_inflight,
    }
