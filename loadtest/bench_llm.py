"""Benchmark: one worker process running thousands of concurrent LLM tasks against a slow model.

    python -m loadtest.bench_llm [--inflight 2000] [--delay-ms 200] [--tasks N]

Three processes on loopback besides this driver: nats-server, the scripted
OpenAI-compatible server (``agents.llm.testing``: every answer after
``--delay-ms``) and one ``agentbus worker`` serving the built-in ``assistant``
agent with ``--max-inflight`` slots and the model configured through
``AGENTBUS_LLM_*``. Each task is plan (a ``check_inventory`` tool call) -> tool ->
answer: two model calls, so the ideal rate is ``inflight / (2 * delay)`` tasks/s.

Phases: a warm-up round; memory: the worker's RSS idle, then with every slot
holding a task whose model call takes 5 s (``rss_per_inflight_kb = (held - idle) /
inflight``); the worker is stopped. The measured round is then published as a
backlog with no worker running, and a fresh worker started on it: the rate is what
the worker sustains, not what this driver can publish (on two shared cores the
publisher would take CPU from the worker it measures; in production publishers run
elsewhere). Every result is still received here and must say ``ok``; the rate is
measured between 20 % and 90 % of them (ramp-up and tail left out). The worker's
CPU per task is split into user and system (kernel: socket I/O) time.

On a host with two or more CPUs the measured process (worker or anchor) runs on a
CPU of its own and everything else (this driver, nats-server, the model) on another
(``--no-pin`` turns that off), as a worker pod with a CPU of its own would in
production while the model runs elsewhere: a model server woken 10,000 times a
second must not take its turns on the worker's core, which is what it measures.

The worker's busy slots (``agentbus_inflight``) are sampled once a second in the measured
window (``mean_inflight``): below ``--inflight``, slots wait for work. (Four scrapes of
the worker's /metrics a second took about 1 % of its CPU in py-spy, over half of it the
process collector, which counts the 2,000 open connections; production scrapes every 15 s.)

The anchor runs the same way (a backlog of the same size, then the process):
``loadtest.llm_raw``, a hand-written minimal worker sending the same bytes to the
same model (``raw_*``, and ``ratio_to_raw``). What it cannot reach, this machine
cannot. Both sides run ``--reps`` times in ABBA order (this machine's speed drifts by
10 % from minute to minute); the run with the median rate is reported, with all rates.
Last, the HTTP layer alone: ``ChatClient`` calls at the same concurrency from this
process (``client_*``), which separates the client's cost from the worker's.

Every process runs on this driver's interpreter (``python`` in the JSON), and its build
matters: a CPython without PGO and LTO (pyenv's default) spends about 15 % more CPU per
task than the optimized builds distributions and the ``python:3.11-slim`` image ship;
``make`` prefers the distribution's (docs/llm.md, "Which interpreter").
Ends with one JSON line: rate, ideal, overhead_pct, the anchor's, rss_per_inflight_kb
and the details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import psutil

from agents.llm import ChatClient, LLMConfig
from agents.llm.chat import ChatRequest, Message
from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.publisher import Publisher, TaskSpec
from bus.topology import ConsumerSpec, ensure_consumer, ensure_streams
from loadtest.bench_common import alternate, run_on_uvloop

__all__ = ["main"]

KIND = "assistant"
RAW_KIND = "assistant-raw"  # the anchor's queue
REQUEST = "customer U1 buys 1 of PROD-001"
TENANT = "bench"


def _start_model(delay_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agents.llm.testing", "--delay-ms", str(delay_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # readiness from the server itself
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError(f"scripted model did not start: {line!r}")
    return proc, line.split()[1]


def _start_worker(nats_url: str, model_url: str, inflight: int, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTBUS_LLM_BASE_URL": model_url,
        "AGENTBUS_LLM_MODEL": "scripted",
        "AGENTBUS_LLM_STREAM": "0",
    }
    argv = [sys.executable, "-m", "agentbus", "worker", "--nats-url", nats_url]
    argv += ["--agents", "agents.builtin.assistant", "--max-inflight", str(inflight)]
    argv += ["--http-port", str(port), "--worker-id", "bench-llm"]
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: the worker drains
        proc.wait(60)


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


async def _wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        if await asyncio.to_thread(_ready, port):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("worker not ready after 60 s")


async def _results(nc: Any, n: int, tag: str) -> tuple[Any, asyncio.Future[list[float]]]:
    """Subscribe to ``n`` results of round ``tag``: the arrival time of each, in arrival order."""
    arrivals: list[float] = []
    failed: list[str] = []
    done: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()
    prefix = f"results.{TENANT}.{tag}-"

    async def on_result(msg: Any) -> None:
        if not msg.subject.startswith(prefix) or done.done():
            return
        if b'"ok":false' in msg.data:
            failed.append(msg.data.decode()[:300])
        arrivals.append(time.perf_counter())
        if len(arrivals) >= n:
            if failed:
                done.set_exception(RuntimeError(f"{len(failed)} tasks failed, e.g. {failed[0]}"))
            else:
                done.set_result(arrivals)

    sub = await nc.subscribe(f"results.{TENANT}.*", cb=on_result)
    return sub, done


async def _publish(pub: Publisher, n: int, tag: str, stream: bool, text: str, kind: str = KIND) -> None:
    request = {"request": text}
    specs = (TaskSpec(TENANT, kind, request, task_id=f"{tag}-{i}", stream=stream) for i in range(n))
    await pub.submit_many(specs)


async def _round(pub: Publisher, nc: Any, n: int, tag: str, stream: bool, text: str = REQUEST) -> list[float]:
    """Publish ``n`` tasks and return the arrival time of each result, in arrival order."""
    sub, done = await _results(nc, n, tag)
    await _publish(pub, n, tag, stream, text)
    try:
        return await asyncio.wait_for(done, timeout=max(120.0, n / 200))
    finally:
        await sub.unsubscribe()


async def _measure(
    pub: Publisher,
    nc: Any,
    tasks: int,
    kind: str,
    rep: str,
    stream: bool,
    start: Callable[[], subprocess.Popen[bytes]],
    port: int | None,
    cpus: list[int],
) -> dict[str, float]:
    """Publish a backlog of ``tasks`` for ``kind``, start its consumer process, time the results.

    The rate is taken between 20 % and 90 % of the results (start-up and tail left out);
    CPU is the consumer's over the whole round, per task, split into user and system.
    """
    tag = f"run{rep}-{kind}"
    await _publish(pub, tasks, tag, stream, REQUEST, kind)
    sub, done = await _results(nc, tasks, tag)
    proc = start()
    _pin(proc.pid, cpus, worker=True)
    occupancy: list[tuple[float, float]] = []  # (time, tasks in the worker's slots)
    sampler = None
    try:
        if port is not None:
            await _wait_ready(port, proc)
            sampler = asyncio.ensure_future(_sample_inflight(port, occupancy))
        cpu0 = psutil.Process(proc.pid).cpu_times()
        arrivals = await asyncio.wait_for(done, timeout=max(120.0, tasks / 200))
        cpu1 = psutil.Process(proc.pid).cpu_times()
    finally:
        if sampler is not None:
            sampler.cancel()
        await sub.unsubscribe()
        _stop(proc)
    lo, hi = int(len(arrivals) * 0.2), int(len(arrivals) * 0.9)
    user_s, system_s = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    window = [n for t, n in occupancy if arrivals[lo] <= t <= arrivals[hi - 1]]
    return {
        "rate": round((hi - lo) / (arrivals[hi - 1] - arrivals[lo]), 1),
        "mean_inflight": round(sum(window) / len(window), 1) if window else -1.0,
        "cpu_us": round((user_s + system_s) / tasks * 1e6, 1),
        "user_us": round(user_s / tasks * 1e6, 1),
        "system_us": round(system_s / tasks * 1e6, 1),
    }


async def _sample_inflight(port: int, into: list[tuple[float, float]], every_s: float = 1.0) -> None:
    """Every ``every_s`` until cancelled: the worker's ``agentbus_inflight`` (its busy slots)."""
    gauge = f'agentbus_inflight{{kind="{KIND}"}}'
    while True:
        with contextlib.suppress(OSError):
            into.append((time.perf_counter(), await asyncio.to_thread(_metric, port, gauge)))
        await asyncio.sleep(every_s)


def _pin(pid: int, cpus: list[int], *, worker: bool) -> None:
    """Unless ``cpus`` is empty: a worker on the last of them, any other process on the rest."""
    if cpus:
        os.sched_setaffinity(pid, cpus[-1:] if worker else cpus[:-1])


def _interpreter() -> str:
    """The version and real path of the interpreter every process of the run uses."""
    return f"{platform.python_version()} {os.path.realpath(sys.executable)}"


def _median_run(runs: list[dict[str, float]]) -> dict[str, Any]:
    """The run with the median rate (CPU figures from that same run), and every rate."""
    ordered = sorted(runs, key=lambda r: r["rate"])
    return {**ordered[(len(ordered) - 1) // 2], "rates": [r["rate"] for r in runs]}


async def _memory(pub: Publisher, nc: Any, port: int, pid: int, inflight: int) -> tuple[int, int]:
    """RSS idle, and with every slot holding a task waiting on the model (``__hold__`` requests)."""
    rss_idle = psutil.Process(pid).memory_info().rss
    held = asyncio.ensure_future(_round(pub, nc, inflight, "hold", True, text="__hold__"))
    gauge = f'agentbus_inflight{{kind="{KIND}"}}'
    for _ in range(1200):
        if await asyncio.to_thread(_metric, port, gauge) >= inflight:
            break
        await asyncio.sleep(0.05)
    else:
        raise RuntimeError(f"the worker never held {inflight} tasks")
    rss_held = psutil.Process(pid).memory_info().rss
    await held
    return rss_idle, rss_held


async def _client_only(model_url: str, concurrency: int, seconds: float = 6.0) -> tuple[float, float]:
    """The HTTP layer alone: ``ChatClient`` calls/s at ``concurrency``, and CPU us per call."""
    config = LLMConfig(base_url=model_url, model="scripted", stream=False)
    client = ChatClient(config)
    request = ChatRequest(model="scripted", messages=[Message("user", "customer U1 buys 1 of PROD-001")])
    calls = 0
    stop = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal calls
        while time.monotonic() < stop:
            await client.chat(request)
            calls += 1

    runs = asyncio.gather(*(loop() for _ in range(concurrency)))
    await asyncio.sleep(seconds / 3)  # connections are open and warm from here on
    n0, t0, c0 = calls, time.monotonic(), time.process_time()
    await asyncio.sleep(seconds / 2)
    n1, t1, c1 = calls, time.monotonic(), time.process_time()
    await runs
    await client.aclose()
    return (n1 - n0) / (t1 - t0), (c1 - c0) / max(1, n1 - n0) * 1e6


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; the summary as a dict."""
    ideal = args.inflight / (2 * args.delay_ms / 1000)
    tasks = args.tasks or int(ideal * 12)
    cpus = [] if args.no_pin else sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:  # one CPU: nothing to keep apart
        cpus = []
    _pin(0, cpus, worker=False)  # this driver, and the nats-server and model it starts
    with EmbeddedNats() as nats:
        model, model_url = _start_model(args.delay_ms)
        port = free_port()
        worker = _start_worker(nats.url, model_url, args.inflight, port)
        _pin(worker.pid, cpus, worker=True)
        try:
            nc = await connect(nats.url, name="bench-llm")
            await ensure_streams(nc.jetstream())
            pub = Publisher(nc, max_pending_acks=8192)
            await _wait_ready(port, worker)
            await _round(pub, nc, min(args.inflight, 500), "warm", args.events)
            rss_idle, rss_held = await _memory(pub, nc, port, worker.pid, args.inflight)
            _stop(worker)

            def start_ours() -> subprocess.Popen[bytes]:
                return _start_worker(nats.url, model_url, args.inflight, port)

            def start_anchor() -> subprocess.Popen[bytes]:
                argv = [sys.executable, "-m", "loadtest.llm_raw", "--nats-url", nats.url]
                argv += ["--model-url", model_url, "--kind", RAW_KIND, "--tasks", str(tasks)]
                return subprocess.Popen([*argv, "--inflight", str(args.inflight)], stdout=subprocess.DEVNULL)

            await ensure_consumer(nc.jetstream(), ConsumerSpec(kind=RAW_KIND))
            stream = args.events
            sides = {"agentbus": (KIND, start_ours, port), "raw": (RAW_KIND, start_anchor, None)}

            async def one(side: str, rep: int) -> dict[str, float]:
                kind, start, ready_port = sides[side]
                return await _measure(pub, nc, tasks, kind, f"{rep}", stream, start, ready_port, cpus)

            runs = await alternate(args.reps, list(sides), one)
            measured = {side: _median_run(runs[side]) for side in sides}
            await nc.close()
            client_rate, client_cpu_us = await _client_only(model_url, args.inflight)
        finally:
            _stop(worker)
            model.terminate()
            model.wait(10)
    ours, raw = measured["agentbus"], measured["raw"]
    return {
        "bench": "llm",
        "inflight": args.inflight,
        "delay_ms": args.delay_ms,
        "stream_events": args.events,
        "pinned": bool(cpus),
        "python": _interpreter(),  # its build matters
        "tasks": tasks,
        "rate": ours["rate"],
        "ideal": round(ideal, 1),
        "overhead_pct": round((1 - ours["rate"] / ideal) * 100, 2),
        "rates": ours["rates"],
        "raw_rate": raw["rate"],
        "raw_rates": raw["rates"],
        "raw_overhead_pct": round((1 - raw["rate"] / ideal) * 100, 2),
        "ratio_to_raw": round(ours["rate"] / raw["rate"], 3),
        "mean_inflight": ours["mean_inflight"],  # busy slots, sampled once a second in the measured window
        "rss_idle_mib": round(rss_idle / 2**20, 1),
        "rss_held_mib": round(rss_held / 2**20, 1),
        "rss_per_inflight_kb": round((rss_held - rss_idle) / args.inflight / 1024, 1),
        "worker_cpu_us_per_task": ours["cpu_us"],
        "worker_user_us_per_task": ours["user_us"],
        "worker_system_us_per_task": ours["system_us"],
        "raw_cpu_us_per_task": raw["cpu_us"],
        "raw_user_us_per_task": raw["user_us"],
        "raw_system_us_per_task": raw["system_us"],
        # the HTTP layer alone at the same concurrency (one model call per request)
        "client_rate": round(client_rate, 1),
        "client_ideal": round(args.inflight / (args.delay_ms / 1000), 1),
        "client_overhead_pct": round((1 - client_rate * args.delay_ms / 1000 / args.inflight) * 100, 2),
        "client_cpu_us_per_call": round(client_cpu_us, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints the summary as one JSON line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inflight", type=int, default=2000, help="worker slots (concurrent LLM tasks)")
    parser.add_argument("--delay-ms", type=float, default=200.0, help="the model's answer time")
    parser.add_argument(
        "--reps", type=int, default=3, help="measured rounds per side, alternated ABBA; medians reported"
    )
    parser.add_argument(
        "--tasks", type=int, default=0, help="tasks in the measured round (default: 12 s worth)"
    )
    parser.add_argument(
        "--events",
        action="store_true",
        help='tasks ask for live events ("stream": true, as `publish --stream` does); nobody listens',
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="leave CPU placement to the scheduler (default: the measured process on a CPU of its own)",
    )
    args = parser.parse_args(argv)
    summary = run_on_uvloop(run(args))
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
