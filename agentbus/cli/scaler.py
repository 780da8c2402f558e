"""``agentbus scaler``: the autoscaler as a process; and ``agentbus up --autoscale``'s options.

``agentbus scaler`` reads Prometheus (``--prometheus-url``) or scrapes the workers
(``--scrape URL``) and resizes a Kubernetes Deployment (``--deployment``). With
``--dry-run`` it prints each decision as a JSON line and changes nothing (without a
Deployment it simulates a pool that follows its decisions). Flags override
``AGENTBUS_SCALER_*`` variables, which override the ``--config`` file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import msgspec
from prometheus_client.registry import CollectorRegistry

from agentbus.errors import UsageError
from agentbus.http import HealthServer
from scaler._assemble import kubernetes_actuator, local_scaler, metric_source, scaler_for
from scaler.actuators import Actuator, MemoryActuator
from scaler.config import ScalerConfig, load_config
from scaler.local import LocalSupervisor
from scaler.loop import Evaluation, Scaler

__all__ = ["add_autoscale_options", "autoscaling", "config_from_args", "describe_resize", "register"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "scaler", help="resize a worker pool from Prometheus or the workers' /metrics"
    )
    p.add_argument("--config", help="TOML or JSON file (default: $AGENTBUS_SCALER_CONFIG)")
    p.add_argument("--prometheus-url", help="Prometheus to query (default: scrape --scrape URLs directly)")
    p.add_argument("--scrape", action="append", metavar="URL", help="a worker's /metrics URL (repeatable)")
    p.add_argument("--deployment", help="Kubernetes Deployment to scale")
    p.add_argument("--namespace", help="its namespace (default: default)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    _policy_options(p)
    p.add_argument("--interval-s", type=float, help="evaluation period (default 15)")
    p.add_argument("--dry-run", action="store_true", default=None, help="print decisions, never resize")
    p.add_argument("--once", action="store_true", help="evaluate once and exit")
    p.add_argument("--http-host", help="address of /healthz, /readyz, /metrics (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="serve the scaler's own /metrics and /readyz here")
    p.set_defaults(run=run)


def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min", type=int, dest="min_replicas", help="min replicas")
    p.add_argument("--max", type=int, dest="max_replicas", help="max replicas")
    p.add_argument("--target-cpu", type=float, help="CPU cores per replica to aim for (default 0.7)")
    p.add_argument(
        "--target-queue-depth", type=float, help="pending + unacked tasks per replica (default 10)"
    )
    p.add_argument("--up-window-s", type=float, help="scale-up stabilization window (default 0)")
    p.add_argument("--down-window-s", type=float, help="scale-down stabilization window (default 300)")


def config_from_args(args: argparse.Namespace, **extra: Any) -> ScalerConfig:
    """File, then environment, then the flags that were given (and ``extra`` dotted overrides)."""
    file_config = load_config(getattr(args, "config", None))
    overrides: dict[str, Any] = {
        "prometheus.url": getattr(args, "prometheus_url", None),
        "scrape_targets": getattr(args, "scrape", None),
        "kubernetes.deployment": getattr(args, "deployment", None),
        "kubernetes.namespace": getattr(args, "namespace", None),
        "kubernetes.kubeconfig": getattr(args, "kubeconfig", None),
        "policy.min_replicas": args.min_replicas,
        "policy.max_replicas": args.max_replicas,
        "policy.up_window_s": args.up_window_s,
        "policy.down_window_s": args.down_window_s,
        "interval_s": getattr(args, "interval_s", None),
        "dry_run": getattr(args, "dry_run", None),
        "http_host": getattr(args, "http_host", None),
        "http_port": getattr(args, "http_port", None),
        **extra,
    }
    targets = {"cpu": args.target_cpu, "queue_depth": args.target_queue_depth}
    if any(v is not None for v in targets.values()):
        metrics = [
            msgspec.to_builtins(msgspec.structs.replace(m, target=targets.get(m.name) or m.target))
            for m in file_config.policy.metrics
        ]
        overrides["policy.metrics"] = metrics
    return load_config(getattr(args, "config", None), overrides=overrides)


def run(args: argparse.Namespace) -> int:
    """Run the loop until SIGTERM/SIGINT (or one evaluation with ``--once``)."""
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    source = metric_source(config)
    actuator: Actuator
    if config.kubernetes.deployment:
        actuator = kubernetes_actuator(config, source)
    elif config.dry_run:
        actuator = MemoryActuator(max(config.policy.min_replicas, 1))  # a simulated pool
    else:
        await source.aclose()
        raise UsageError(
            "nothing to scale: give --deployment (Kubernetes); local workers scale with "
            "`agentbus up --autoscale`; --dry-run alone simulates a pool"
        )
    registry = CollectorRegistry()
    printer = _print_evaluation if config.dry_run else None
    scaler = scaler_for(config, source, actuator, registry=registry, on_evaluation=printer)
    http = None
    try:
        await scaler.start()
        if config.http_port >= 0:
            http = HealthServer(
                registry=registry,
                ready=lambda: _ready(scaler),
                alive=lambda: (True, "ok"),
                host=config.http_host,
                port=config.http_port,
            )
            await http.start()
        if args.once:
            ev = await scaler.evaluate()
            return 1 if ev.error else 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await scaler.run(stop)
        return 0
    finally:
        if http is not None:
            await http.close()
        await scaler.aclose()


def _ready(scaler: Scaler) -> tuple[bool, str]:
    last = scaler.last
    if last is None:
        return False, "no evaluation yet"
    return not last.error, f"{last.decision.reason}: {last.error or last.decision.detail}"


_encoder = msgspec.json.Encoder()


def _print_evaluation(ev: Evaluation) -> None:
    sys.stdout.write(_encoder.encode(ev).decode() + "\n")
    sys.stdout.flush()


# -- agentbus up --autoscale -------------------------------------------------------------------


class _Autoscale(argparse.Action):
    """``--autoscale``: also makes workers refresh their pending counts every second."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        namespace.autoscale = True
        if getattr(namespace, "consumer_info_interval_s", None) is None:
            # The backlog reaches /metrics at this period: 1 s keeps backlog -> decision near 1-2 s.
            namespace.consumer_info_interval_s = 1.0


def add_autoscale_options(p: argparse.ArgumentParser) -> None:
    """``--autoscale`` and the policy flags of ``agentbus up``."""
    g = p.add_argument_group("autoscaling")
    g.add_argument("--autoscale", nargs=0, action=_Autoscale, default=False, help="resize the pool by load")
    g.add_argument("--min", type=int, dest="min_replicas", help="min workers when autoscaling (default 1)")
    g.add_argument("--max", type=int, dest="max_replicas", help="max workers when autoscaling (default 4)")
    g.add_argument("--target-cpu", type=float, help="CPU cores per worker to aim for (default 0.7)")
    g.add_argument("--target-queue-depth", type=float, help="pending + unacked tasks per worker (default 10)")
    g.add_argument("--up-window-s", type=float, help="scale-up stabilization window (default 0)")
    g.add_argument("--down-window-s", type=float, help="scale-down stabilization window (default 300)")
    g.add_argument("--scale-interval-s", type=float, help="evaluation period (default 1)")
    g.add_argument("--scaler-config", dest="config", help="scaler TOML/JSON file (see docs/autoscaler.md)")
    g.add_argument("--prometheus-url", help="read metrics from this Prometheus (default: scrape the workers)")


@contextlib.asynccontextmanager
async def autoscaling(
    args: argparse.Namespace,
    supervisor: LocalSupervisor,
    ports: Mapping[str, int],
    *,
    on_resize: Callable[[], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> AsyncIterator[Scaler | None]:
    """Run the local autoscaler while the block runs (nothing without ``--autoscale``).

    ``announce`` is given one line per resize (:func:`describe_resize`: sizes, reason, each
    metric's value against its target). ``on_resize`` is called whenever the set of live
    worker processes changed.
    """
    if not getattr(args, "autoscale", False):
        yield None
        return
    extra: dict[str, Any] = {
        "interval_s": args.scale_interval_s or 1.0
    }  # 1 s: the laptop has no HPA to spare
    if args.min_replicas is None:
        extra["policy.min_replicas"] = 1
    if args.max_replicas is None:
        extra["policy.max_replicas"] = 4
    config = config_from_args(args, **extra)

    live: set[str] = set(supervisor.pids())

    def resized(ev: Evaluation) -> None:
        nonlocal live
        if announce is not None and ev.action is not None and ev.action.before != ev.action.after:
            announce(describe_resize(ev))
        now = set(supervisor.pids())  # replicas started, or retired ones that finished draining
        if now != live and on_resize is not None:
            live = now
            on_resize()

    scaler = local_scaler(supervisor, ports, config, on_evaluation=resized)
    await scaler.start()
    stop = asyncio.Event()
    task = asyncio.create_task(scaler.run(stop), name="agentbus-autoscaler")
    try:
        yield scaler
    finally:
        stop.set()
        await asyncio.wait([task], timeout=10)
        await scaler.aclose()


def describe_resize(ev: Evaluation) -> str:
    """One line for a resize: ``from -> to``, the reason, and each metric's value against its target."""
    d = ev.decision
    before, after = (ev.action.before, ev.action.after) if ev.action is not None else (d.current, d.desired)
    metrics = ", ".join(
        f"{m.name} {m.value:g} vs target {m.target:g}" if m.value is not None else f"{m.name} {m.status}"
        for m in d.metrics
    )
    line = f"agentbus up: resized {before} -> {after} workers ({d.reason}: {d.detail})"
    if metrics:
        line += f"; metrics: {metrics}"
    if ev.action is not None and ev.action.retired:
        line += f"; retired {', '.join(ev.action.retired)}"
    return line
