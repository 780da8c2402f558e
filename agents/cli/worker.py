"""``agentbus worker``: one worker process (what the Helm chart runs).

Exit codes, which ``agentbus up`` and Kubernetes read: 0 after a clean drain;
2 (:data:`EXIT_USAGE`) for a bad command line; 78 (:data:`EXIT_CONFIG`, sysexits'
``EX_CONFIG``) when the worker cannot start as configured: an agent module that does
not import, an unknown kind, a bad setting. Restarting does not mend either, so ``up``
stops on them; any other non-zero exit (a lost connection, a crash) asks for a restart.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Any

from agentbus.errors import ConfigError
from agents.config import GOSSIP_PRESETS, WorkerConfig, resolve_nats_url
from agents.registry import Registry
from agents.worker import run_worker

__all__ = [
    "EXIT_CONFIG",
    "EXIT_USAGE",
    "WORKER_OPTIONS",
    "add_worker_options",
    "config_from_args",
    "register",
    "worker_argv",
]

EXIT_USAGE = 2
"""argparse's exit code for a bad command line."""
EXIT_CONFIG = 78
"""The worker cannot start as configured (sysexits.h ``EX_CONFIG``): a restart would fail the same way."""


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("worker", help="run one worker process")
    p.add_argument("--nats-url", help="NATS server (default: $AGENTBUS_NATS_URL or a running `agentbus up`)")
    p.add_argument("--worker-id", help="name reported in results and metrics")
    p.add_argument("--http-host", help="address of /healthz, /readyz, /metrics (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="port of the HTTP endpoint; 0 picks one, -1 disables")
    add_worker_options(p)
    p.set_defaults(run=run)


WORKER_OPTIONS = (
    "agents",
    "kinds",
    "max_inflight",
    "prefetch",
    "drain_timeout_s",
    "ack_wait_s",
    "max_deliver",
    "retry_base_s",
    "unrouted_grace_s",
    "sweep_interval_s",
    "consumer_info_interval_s",
    "redis_url",
    "gossip_preset",
)
"""Options ``agentbus up`` passes through to its workers unchanged."""


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``worker`` and ``up`` (which hands them to its workers)."""
    p.add_argument(
        "--agents",
        action="extend",
        type=_module_names,
        metavar="MODULE[,MODULE]",
        help="modules defining @agent specs (comma-separated or repeated)",
    )
    p.add_argument(
        "--kind",
        action="extend",
        type=_names,
        dest="kinds",
        metavar="KIND[,KIND]",
        help="serve only these kinds (comma-separated or repeated)",
    )
    p.add_argument("--max-inflight", type=int, help="override every agent's max_inflight")
    p.add_argument(
        "--prefetch", type=int, help="messages delivered ahead of free slots, per kind (default slots // 8)"
    )
    p.add_argument("--drain-timeout-s", type=float, help="grace for in-flight tasks on SIGTERM")
    p.add_argument("--ack-wait-s", type=float, help="consumer ack wait (redelivery of a dead worker's task)")
    p.add_argument("--max-deliver", type=int, help="deliveries before a failing task is dead-lettered")
    p.add_argument("--retry-base-s", type=float, help="first retry delay (doubles, jittered)")
    p.add_argument(
        "--unrouted-grace-s", type=float, help="age before tasks of unknown kinds are dead-lettered"
    )
    p.add_argument("--sweep-interval-s", type=float, help="how often unknown kinds are looked for")
    p.add_argument(
        "--consumer-info-interval-s",
        type=float,
        help="how often the consumer's pending counts are refreshed for /metrics (default 5; autoscaling: 1)",
    )
    p.add_argument("--no-provision", action="store_true", help="do not create streams and consumers")
    p.add_argument(
        "--redis-url",
        help="persist shared tenant state in Redis, e.g. redis://127.0.0.1:6379/0"
        " (default: $AGENTBUS_REDIS_URL; none: gossip only)",
    )
    p.add_argument(
        "--gossip-preset",
        choices=GOSSIP_PRESETS,
        help="gossip timings of shared state: lan (200 ms rounds, the default) or test (~10x faster)",
    )
    p.add_argument(
        "--no-gossip",
        action="store_true",
        help="keep shared state in this process only (not replicated to the other workers)",
    )


def _names(value: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``; an empty name is a usage error."""
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty name in {value!r}")
    return names


def _module_names(value: str) -> list[str]:
    names = _names(value)
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise argparse.ArgumentTypeError(f"not a module name: {name!r}")
    return names


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The worker options of ``args`` as command-line arguments again."""
    argv: list[str] = []
    for name in WORKER_OPTIONS:
        value = getattr(args, name, None)
        flag = "--" + ("kind" if name == "kinds" else name).replace("_", "-")
        if isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    for flag in ("no_provision", "no_gossip"):
        if getattr(args, flag, False):
            argv.append("--" + flag.replace("_", "-"))
    return argv


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """Environment defaults, overridden by flags."""
    base = WorkerConfig.from_env()
    return base.with_(
        nats_url=resolve_nats_url(args.nats_url),
        agent_modules=tuple(args.agents) if args.agents else None,
        kinds=tuple(args.kinds) if args.kinds else None,
        worker_id=args.worker_id,
        max_inflight=args.max_inflight,
        prefetch=args.prefetch,
        http_host=args.http_host,
        http_port=args.http_port,
        drain_timeout_s=args.drain_timeout_s,
        ack_wait_s=args.ack_wait_s,
        max_deliver=args.max_deliver,
        retry_base_s=args.retry_base_s,
        unrouted_grace_s=args.unrouted_grace_s,
        sweep_interval_s=args.sweep_interval_s,
        consumer_info_interval_s=args.consumer_info_interval_s,
        provision=False if args.no_provision else None,
        redis_url=args.redis_url,
        gossip_preset=args.gossip_preset,
        gossip=False if args.no_gossip else None,
    )


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM; exit 0 after a clean drain, :data:`EXIT_CONFIG` if it cannot start."""
    try:
        config = config_from_args(args)
        registry = _import_agents(config.agent_modules)
        return run_worker(config, registry)
    except ConfigError as exc:
        print(f"agentbus: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG


def _import_agents(modules: tuple[str, ...]) -> Registry:
    """The registry of ``modules``; a module that raises while it is imported is a ConfigError too."""
    try:
        return Registry.from_modules(modules)
    except ConfigError:
        raise
    except Exception as exc:  # a SyntaxError, NameError ... in the user's module
        traceback.print_exc(file=sys.stderr)
        raise ConfigError(f"cannot import agent modules {', '.join(modules)}: {exc!r}") from exc
