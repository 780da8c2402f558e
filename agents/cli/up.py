"""``agentbus up``: the embedded default. nats-server (unless ``--nats-url``) plus N supervised workers.

The NATS URL and the workers' metrics ports are written to ``.agentbus/up.json`` so
``agentbus publish`` and ``agentbus status`` in the same directory find the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

from agents.cli.worker import add_worker_options, worker_argv
from agents.config import UP_STATE_FILE
from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.topology import ensure_streams
from scaler.local import LocalSupervisor, python_command

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("up", help="run nats-server and N workers on this machine")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default %(default)s)")
    p.add_argument("--nats-url", help="use this NATS server instead of starting one")
    p.add_argument(
        "--nats-port", type=int, default=0, help="port of the embedded server (default: a free one)"
    )
    p.add_argument("--store-dir", help="JetStream store of the embedded server (default: a temp dir)")
    add_worker_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM, then drain the workers and stop the server."""
    return asyncio.run(_up(args))


async def _up(args: argparse.Namespace) -> int:
    server = None
    if args.nats_url:
        url = args.nats_url
    else:
        server = EmbeddedNats(port=args.nats_port, store_dir=args.store_dir).start()
        url = server.url
    try:
        nc = await connect(url, name="agentbus-up")
        await ensure_streams(nc.jetstream())
        await nc.close()
        ports: dict[str, int] = {}

        def command(name: str) -> list[str]:
            ports[name] = ports.get(name) or free_port()
            return python_command(
                "worker",
                "--nats-url",
                url,
                "--worker-id",
                name,
                "--http-port",
                str(ports[name]),
                *worker_argv(args),
            )

        supervisor = LocalSupervisor(command, stop_timeout_s=(args.drain_timeout_s or 25.0) + 5)
        await supervisor.scale_to(args.workers)
        _write_state(url, ports)
        print(
            f"agentbus up: NATS {url}, {args.workers} workers; metrics on ports "
            f"{', '.join(str(p) for p in ports.values())}; Ctrl-C to stop",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("agentbus up: draining workers", flush=True)
        await supervisor.stop()
        return 0
    finally:
        _remove_state()
        if server is not None:
            server.close()


def _remove_state() -> None:
    Path(UP_STATE_FILE).unlink(missing_ok=True)


def _write_state(url: str, ports: dict[str, int]) -> None:
    path = Path(UP_STATE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "nats_url": url, "metrics_ports": ports}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)
