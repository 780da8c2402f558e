"""``agentbus demo``: the embedded default under a mixed workload, with a progress bar and a summary.

Starts what ``agentbus up`` starts (nats-server on a free port, a temp store, two
supervised workers), waits for the workers' ``/readyz``, subscribes to ``results.>``
and ``dlq.>``, then publishes a few thousand tasks for three tenants: good work of
every built-in kind, plus tasks that fail once, poison tasks, invalid and malformed
ones, an unknown kind, an oversized payload and an order the planner cannot parse.
When every task has an outcome it reads the ``DLQ`` stream back and prints the
summary. Exit 1 if a task was lost, met another fate than planned, or the timeout
passed first (the report then names what is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agentbus.cli._demo_workload import (
    COMPLETED,
    RETRIED,
    TENANTS,
    Planned,
    Tally,
    by_expectation,
    expected_counts,
    percentile,
    plan,
    publish,
    read_dead_letters,
)
from agentbus.cli.up import local_cluster, wait_ready
from agentbus.errors import ConfigError, UsageError
from bus.connection import connect
from bus.messages import DlqReason

__all__ = ["DEMO_WORKER_ARGS", "register"]

DEMO_WORKER_ARGS = (
    "--max-deliver",
    "3",  # poison tasks reach the DLQ after three quick attempts
    "--retry-base-s",
    "0.1",
    "--unrouted-grace-s",
    "1",  # the unknown kind is dead-lettered within seconds, not after a minute
    "--sweep-interval-s",
    "1",
    "--drain-timeout-s",
    "5",
)
"""Worker options of the demo: everything that normally waits for minutes waits for a second."""


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the demo workload on the embedded default")
    p.add_argument("--tasks", type=int, default=3000, help="tasks to publish (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    p.add_argument(
        "--timeout-s", type=float, default=120.0, help="give up and report after this (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the workload mix (default %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every task met its planned fate."""
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    try:
        tasks = plan(args.tasks, seed=args.seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return asyncio.run(_interruptible(_demo(tasks, workers=args.workers, timeout_s=args.timeout_s)))


async def _interruptible(demo: Coroutine[Any, Any, int]) -> int:
    """SIGTERM cancels the demo as Ctrl-C does, so the workers and the server are still stopped."""
    main = asyncio.current_task()
    assert main is not None
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        main.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await demo
    except asyncio.CancelledError:
        if not terminated:
            raise  # Ctrl-C: asyncio.run turns it into KeyboardInterrupt (exit 130)
        return 128 + signal.SIGTERM


async def _demo(tasks: list[Planned], *, workers: int, timeout_s: float) -> int:
    console = Console(highlight=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with local_cluster(
        workers=workers, worker_args=DEMO_WORKER_ARGS, stop_timeout_s=15.0, worker_log_level="ERROR"
    ) as cluster:
        console.print(f"[bold]agentbus demo[/]: nats-server at {cluster.url}, starting {workers} workers")
        await wait_ready(cluster.ports, timeout_s=max(1.0, deadline - loop.time()))
        console.print(f"workers ready: {', '.join(f'{n} (:{p})' for n, p in cluster.ports.items())}")
        console.print(f"publishing {len(tasks):,} tasks for tenants {', '.join(TENANTS)}")
        nc = await connect(cluster.url, name="agentbus-demo")
        try:
            tally = Tally()
            # Core subscriptions, registered on the server (flush) before the first publish.
            await nc.subscribe("results.>", cb=tally.on_result, pending_msgs_limit=-1, pending_bytes_limit=0)
            await nc.subscribe("dlq.>", cb=tally.on_dead_letter, pending_msgs_limit=-1, pending_bytes_limit=0)
            await nc.flush()
            started = loop.time()
            finished = await _run(console, nc, tasks, tally, deadline)
            timing = _Timing(
                completing_s=max(0.0, tally.last_completion - started),
                elapsed_s=(tally.last_outcome if finished else loop.time()) - started,
            )
            dead = await read_dead_letters(nc.jetstream())
        finally:
            await nc.close()
        code = _report(console, tasks, tally, dead, timing, timed_out=not finished, timeout_s=timeout_s)
        console.print("stopping: draining the workers, then nats-server")
    return code


async def _run(console: Console, nc: Client, tasks: list[Planned], tally: Tally, deadline: float) -> bool:
    """Publish while showing progress until every task has an outcome; False at the deadline."""
    loop = asyncio.get_running_loop()
    progress = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )
    publishing = asyncio.create_task(publish(nc, tasks, tally), name="demo-publish")
    with progress:
        pub_bar = progress.add_task("published", total=len(tasks), detail="")
        fin_bar = progress.add_task("finished", total=None, detail="")

        def refresh() -> None:
            refused = f"  refused {len(tally.refused)}" if tally.refused else ""
            progress.update(pub_bar, completed=len(tally.published), detail=refused)
            dead = len(tally.dead_seen & tally.published)
            progress.update(
                fin_bar,
                total=len(tally.published) or None,
                completed=tally.finished(),
                detail=f"completed {len(tally.completed)}  dead-lettered {dead}",
            )

        try:
            while not tally.all_done():
                if publishing.done():
                    publishing.result()  # raises what stopped publishing early, if anything
                if loop.time() >= deadline:
                    return False
                refresh()
                await asyncio.sleep(0.1)  # the refresh rate of the display, not a wait for readiness
            return True
        finally:
            refresh()
            if not publishing.done():
                publishing.cancel()
                # Its outcome no longer matters (and nats-py reports a cancel while the
                # ack window is full as TooManyStalledMsgsError).
                await asyncio.wait([publishing])
            if not publishing.cancelled():
                publishing.exception()  # retrieved, so asyncio does not log it


@dataclass(frozen=True, slots=True)
class _Timing:
    completing_s: float
    """First publish -> last completion."""
    elapsed_s: float
    """First publish -> last outcome (dead letters included), or -> the timeout."""


def _report(
    console: Console,
    tasks: list[Planned],
    tally: Tally,
    dead: dict[str, DlqReason],
    timing: _Timing,
    *,
    timed_out: bool,
    timeout_s: float,
) -> int:
    """Print the summary table and anything wrong; returns the exit code."""
    published = tally.published
    completed = {tid: r for tid, r in tally.completed.items() if tid in published}
    dead = {tid: reason for tid, reason in dead.items() if tid in published}
    lost = published - completed.keys() - dead.keys()
    retried = {tid for tid, r in completed.items() if r.attempts > 1}
    latencies_ms = [(r.finished_at - r.created_at) * 1000 for r in completed.values()]
    expected = expected_counts(tasks)
    by_reason: dict[str, int] = {}
    for reason in dead.values():
        by_reason[reason] = by_reason.get(reason, 0) + 1

    table = Table(title="agentbus demo: summary")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_column("planned", justify="right")

    def row(name: str, value: int, want: int | None) -> None:
        mark = "" if want is None or value == want else " [red]✗[/]"
        table.add_row(name, f"{value:,}{mark}", "" if want is None else f"{want:,}")

    row("published", len(published), len(tasks))
    if tally.refused:
        row("refused by JetStream", len(tally.refused), 0)
    row("completed", len(completed), expected[COMPLETED])
    row("  of which retried", len(retried), expected[RETRIED])
    row("dead-lettered", len(dead), sum(n for k, n in expected.items() if k not in (COMPLETED, RETRIED)))
    for reason in DlqReason:
        if by_reason.get(reason) or expected[reason]:
            row(f"  {reason}", by_reason.get(reason, 0), expected[reason])
    table.add_row(
        "[bold]unfinished[/]" if timed_out else "[bold]lost[/]",
        f"[bold {'red' if lost else 'green'}]{len(lost):,}[/]",
        "0",
    )
    window_s = timing.completing_s
    throughput = len(completed) / window_s if window_s > 0 else 0.0
    table.add_row("throughput", f"{throughput:,.0f} completed/s", "")
    table.add_row("latency p50", f"{percentile(latencies_ms, 50):,.1f} ms", "")
    table.add_row("latency p99", f"{percentile(latencies_ms, 99):,.1f} ms", "")
    table.add_row("elapsed", f"{timing.elapsed_s:.1f} s", "")
    table.caption = "latency: publish -> result, queueing included (one burst of tasks)"
    console.print(table)
    console.print(_by_tenant(tasks, published, completed.keys(), dead.keys()))

    wrong = _wrong_fates(tasks, completed.keys() - retried, retried, dead)
    for line in wrong[:5]:
        console.print(f"[red]unexpected fate:[/] {line}")
    if lost:
        what = f"had no outcome after {timeout_s:g} s" if timed_out else "were lost"
        console.print(f"[red]{len(lost):,} tasks {what}[/] (by kind/planned fate):")
        for group, ids in sorted(by_expectation(tasks, lost).items()):
            console.print(f"  {group}: {len(ids)}, e.g. {', '.join(ids[:3])}")
    unpublished = len(tasks) - len(published) - len(tally.refused)
    if timed_out and unpublished:
        console.print(f"[red]timed out after {timeout_s:g} s[/]: {unpublished:,} tasks not published yet")
    ok = not (lost or timed_out or tally.refused or wrong)
    console.print("[bold green]OK[/]: no task lost" if ok else "[bold red]FAILED[/]")
    return 0 if ok else 1


def _by_tenant(
    tasks: list[Planned], published: set[str], completed: Iterable[str], dead: Iterable[str]
) -> Table:
    """Published, completed and dead-lettered tasks per tenant."""
    tenant_of = {t.task_id: t.tenant for t in tasks}
    counts = {tenant: [0, 0, 0] for tenant in TENANTS}
    for column, ids in enumerate((published, completed, dead)):
        for tid in ids:
            counts[tenant_of[tid]][column] += 1
    table = Table(title="by tenant")
    for col in ("tenant", "published", "completed", "dead-lettered"):
        table.add_column(col, justify="left" if col == "tenant" else "right")
    for tenant, row in counts.items():
        table.add_row(tenant, *(f"{n:,}" for n in row))
    return table


def _wrong_fates(
    tasks: list[Planned], completed: set[str], retried: set[str], dead: dict[str, DlqReason]
) -> list[str]:
    """One line per task that finished differently from the plan (unfinished ones are reported apart)."""
    out = []
    for t in tasks:
        if t.task_id in dead and (t.task_id in completed or t.task_id in retried):
            out.append(f"{t.task_id} ({t.tenant}/{t.kind}): completed and dead-lettered")
            continue
        if t.task_id in retried:
            got = RETRIED
        elif t.task_id in completed:
            got = COMPLETED
        elif t.task_id in dead:
            got = dead[t.task_id]
        else:
            continue
        if got != t.expect:
            out.append(f"{t.task_id} ({t.tenant}/{t.kind}): planned {t.expect}, got {got}")
    return out
