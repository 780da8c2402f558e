"""``make loadtest``: run a Locust scenario against agentbus, then judge it against its SLOs.

::

    python -m loadtest.run [--scenario steady|spike|noisy|long|all] [--duration-s S] [--users N]
                           [--processes N] [--nats-url URL [--metrics URL ...]] [--reports DIR]
                           [-- extra locust options]

Without ``--nats-url`` it starts what ``agentbus up`` starts, sized by the scenario's
``[<name>.cluster]`` table: nats-server on a free port, N supervised workers, and the
autoscaler when ``max_workers`` is above ``workers``. With ``--nats-url`` it loads that
cluster instead and reads the workers' counters from ``--metrics`` (or from a running
``agentbus up`` in this directory; without any, the gate counts on JetStream alone).

Locust runs headless as a subprocess (``locust -f loadtest/locustfile.py``) and writes
``<reports>/<scenario>.html``, ``<scenario>.json`` and ``<scenario>.failures.json``; the
gate (:mod:`loadtest.slo`) prints its tables and writes ``<scenario>.slo.json``. The
exit code is the gate's: 0 when every scenario passed, 1 when one failed, 2 on bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
from rich.console import Console

from agentbus.cli import up
from agentbus.cli.scaler import autoscaling
from agentbus.cli.worker import worker_argv
from agentbus.errors import AgentbusError, ConfigError
from agents.config import nats_auth_from_env, read_up_state
from bus.connection import connect
from bus.embedded import free_port
from loadtest.cluster_counts import ClusterDelta, settle, snapshot
from loadtest.locust_report import failures_path, read_report, stats_path
from loadtest.slo import SLO_FILE, ClusterSpec, Scenario, judge, load_scenarios, render

__all__ = ["LOCUSTFILE", "main"]

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description="Run a Locust scenario against agentbus and judge it against loadtest/slo.toml.",
        epilog="Arguments after `--` go to locust unchanged.",
    )
    p.add_argument("--scenario", default="steady", help="a table of the SLO file, or `all` (default steady)")
    p.add_argument("--duration-s", type=float, help="load duration (default: the scenario's)")
    p.add_argument("--users", type=int, help="Locust users (the spike has 10x; default: the scenario's)")
    p.add_argument("--task-rate", type=float, help="tasks/s per user (default: the scenario's)")
    p.add_argument("--result-timeout-s", type=float, help="how long a call waits for its Result")
    p.add_argument("--settle-s", type=float, help="how long the gate waits for the backlog after the load")
    p.add_argument("--processes", type=int, help="Locust worker processes (distributed mode); default 1")
    p.add_argument("--nats-url", help="load this cluster instead of starting the embedded default")
    p.add_argument(
        "--metrics", action="append", default=[], metavar="URL", help="a worker's /metrics URL (repeatable)"
    )
    p.add_argument("--reports", default="reports", help="folder of the reports (default %(default)s)")
    p.add_argument("--slo-file", default=str(SLO_FILE), help="scenarios and SLOs (default loadtest/slo.toml)")
    p.add_argument("--quiet", action="store_true", help="no Locust progress, only warnings and the verdict")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios one after the other; the worst exit code wins."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = _parser().parse_args(argv)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
    try:
        scenarios = load_scenarios(Path(args.slo_file))
        names = list(scenarios) if args.scenario == "all" else [args.scenario]
        if args.scenario != "all" and args.scenario not in scenarios:
            raise ConfigError(f"unknown scenario {args.scenario!r}; the SLO file has {', '.join(scenarios)}")
        code = 0
        for name in names:
            code = max(code, asyncio.run(_run_scenario(console, name, scenarios[name], args, extra)))
        return code
    except AgentbusError as exc:
        console.print(f"[red]loadtest:[/] {exc}")
        return 2


@dataclass
class _Target:
    """The cluster under test: where NATS is, where the workers' counters are, and its pool (if ours)."""

    nats_url: str
    metrics_urls: Callable[[], list[str]]
    """Re-read at the end: the autoscaler may have added workers."""
    peak_workers: Callable[[], int] | None = None
    restarts: Callable[[], int] | None = None


async def _run_scenario(
    console: Console, name: str, scenario: Scenario, args: argparse.Namespace, extra: list[str]
) -> int:
    prefix = Path(args.reports) / name
    prefix.parent.mkdir(parents=True, exist_ok=True)
    # A crashed run must not be judged on the last run's files.
    for stale in (stats_path(prefix), failures_path(prefix), _verdict_path(prefix)):
        stale.unlink(missing_ok=True)
    prefix.with_suffix(".html").unlink(missing_ok=True)
    async with _cluster(console, scenario.cluster, args) as target:
        return await _measure(console, name, scenario, args, extra, target, prefix)


@contextlib.asynccontextmanager
async def _cluster(console: Console, spec: ClusterSpec, args: argparse.Namespace) -> AsyncIterator[_Target]:
    """The remote cluster of ``--nats-url``, or the embedded default started for the scenario."""
    if args.nats_url:
        yield _Target(nats_url=args.nats_url, metrics_urls=lambda: _remote_metrics(args))
        return
    up_args = _up_args(spec)
    async with up.local_cluster(
        workers=spec.workers, worker_args=worker_argv(up_args), stop_timeout_s=30.0, worker_log_level="ERROR"
    ) as cluster:
        await up.wait_ready(cluster.ports, timeout_s=60.0)
        scaling = f", autoscaling to {spec.max_workers}" if spec.max_workers > spec.workers else ""
        console.print(f"cluster: nats-server {cluster.url}, {spec.workers} workers{scaling}")
        peak = len(cluster.supervisor.pids())

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, len(cluster.supervisor.pids()))
                await asyncio.sleep(0.5)  # sampling period of the pool size

        async with autoscaling(up_args, cluster.supervisor, cluster.ports):
            watcher = asyncio.create_task(watch(), name="loadtest-pool-watch")
            try:
                yield _Target(
                    nats_url=cluster.url,
                    metrics_urls=lambda: [f"http://127.0.0.1:{p}/metrics" for p in cluster.ports.values()],
                    peak_workers=lambda: peak,
                    restarts=lambda: sum(r.restarts for r in cluster.supervisor.replicas.values()),
                )
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)


def _remote_metrics(args: argparse.Namespace) -> list[str]:
    """``--metrics``, else the workers of an ``agentbus up`` here serving ``--nats-url`` (read each time)."""
    if args.metrics:
        return list(args.metrics)
    state = read_up_state()
    if state is None or state.get("nats_url") != args.nats_url:
        return []
    return [f"http://127.0.0.1:{port}/metrics" for port in state["metrics_ports"].values()]


def _up_args(spec: ClusterSpec) -> argparse.Namespace:
    """The scenario's cluster as ``agentbus up`` options, parsed by ``agentbus up``'s own parser."""
    parser = argparse.ArgumentParser(prog="agentbus")
    up.register(parser.add_subparsers())
    argv = ["up", "--workers", str(spec.workers), *spec.worker_args]
    if spec.max_workers > spec.workers:
        # No scale-down during a run: a retired worker would take its counters with it.
        argv += ["--autoscale", "--min", str(spec.workers), "--max", str(spec.max_workers)]
        argv += ["--down-window-s", "3600"]
    return parser.parse_args(argv)


async def _measure(
    console: Console,
    name: str,
    scenario: Scenario,
    args: argparse.Namespace,
    extra: list[str],
    target: _Target,
    prefix: Path,
) -> int:
    auth = nats_auth_from_env()
    nc = await connect(target.nats_url, name="agentbus-loadtest", first_connect_timeout_s=10.0, auth=auth)
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            before = await snapshot(nc, target.metrics_urls(), http)
            if before.tasks_queued:
                console.print(f"[yellow]note:[/] TASKS holds {before.tasks_queued:,} tasks before the run")
            locust_rc = await _locust(console, name, scenario, args, extra, target.nats_url, prefix)
            settle_s = args.settle_s if args.settle_s is not None else scenario.settle_s
            urls = target.metrics_urls()
            after = await settle(nc, urls, http, before, timeout_s=settle_s)
    finally:
        await nc.close()
    if not stats_path(prefix).exists():
        console.print(f"[red]loadtest:[/] locust exited {locust_rc} without writing {stats_path(prefix)}")
        return 1
    verdict = judge(
        name,
        scenario,
        read_report(prefix),
        ClusterDelta.between(before, after, scraped=bool(urls)),
        peak_workers=target.peak_workers() if target.peak_workers else None,
    )
    if target.peak_workers is not None:
        verdict.notes.append(f"worker pool: {target.peak_workers()} at its peak")
    restarts = target.restarts() if target.restarts else 0
    if restarts:
        verdict.notes.append(f"{restarts} worker restart(s): their counters started again from 0")
    if locust_rc not in (0, 1):  # 1 is Locust's "there were failures", judged above
        verdict.notes.append(f"locust exited {locust_rc}")
        verdict.passed = False
    _verdict_path(prefix).write_bytes(msgspec.json.format(msgspec.json.encode(verdict)))
    render(verdict, console)
    console.print(f"reports: {prefix.with_suffix('.html')}, {stats_path(prefix)}, {_verdict_path(prefix)}")
    return 0 if verdict.passed else 1


async def _locust(
    console: Console,
    name: str,
    scenario: Scenario,
    args: argparse.Namespace,
    extra: list[str],
    nats_url: str,
    prefix: Path,
) -> int:
    duration_s = args.duration_s or scenario.duration_s
    users = args.users or scenario.users
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", nats_url]
    # The class selects the scenario (the tag would too, but Locust warns about every other class).
    cmd += [scenario.user_class, "-u", str(users), "-t", f"{math.ceil(duration_s)}s"]
    cmd += ["--html", str(prefix.with_suffix(".html")), "--json-file", str(prefix)]
    if args.task_rate:
        cmd += ["--task-rate", str(args.task_rate)]
    if args.result_timeout_s:
        cmd += ["--result-timeout-s", str(args.result_timeout_s)]
    if args.processes and args.processes > 1:
        # Locust's master binds 5557 by default: two runs at once (CI, shared hosts) would
        # refuse each other, or one run's workers would join the other's master.
        port = str(free_port())
        cmd += ["--processes", str(args.processes), "--master-bind-port", port, "--master-port", port]
    if args.quiet:
        cmd += ["--only-summary", "--loglevel", "WARNING"]
    rate = args.task_rate or scenario.task_rate_per_user
    console.print(
        f"locust: scenario {name} ({scenario.description}); {users} users x {rate:g} tasks/s "
        f"for {duration_s:g} s against {nats_url}"
    )
    proc = await asyncio.create_subprocess_exec(*cmd, *extra, stdin=asyncio.subprocess.DEVNULL)
    return await proc.wait()


def _verdict_path(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".slo.json")


if __name__ == "__main__":
    sys.exit(main())
