"""``agentbus up``: the embedded default. nats-server (unless ``--nats-url``) plus N supervised workers.

The NATS URL and the workers' metrics ports are written to ``.agentbus/up.json`` so
``agentbus publish`` and ``agentbus status`` in the same directory find the cluster.
:func:`local_cluster` is the reusable part (``agentbus demo`` runs on it too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentbus.errors import AgentbusError
from agents.cli.scaler import add_autoscale_options, autoscaling
from agents.cli.worker import add_worker_options, worker_argv
from agents.config import UP_STATE_FILE, nats_auth_from_env
from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.topology import ensure_streams
from scaler.local import LocalSupervisor, python_command

__all__ = ["LocalCluster", "local_cluster", "register", "wait_ready"]


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
    add_autoscale_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM, then drain the workers and stop the server."""
    return asyncio.run(_up(args))


@dataclass
class LocalCluster:
    """What :func:`local_cluster` runs: the NATS URL, the worker supervisor, each worker's HTTP port."""

    url: str
    supervisor: LocalSupervisor
    ports: dict[str, int]
    """HTTP port (``/readyz``, ``/metrics``) by worker name; a restarted worker keeps its port."""


@contextlib.asynccontextmanager
async def local_cluster(
    *,
    workers: int,
    worker_args: Sequence[str] = (),
    nats_url: str | None = None,
    nats_port: int = 0,
    store_dir: str | None = None,
    stop_timeout_s: float = 30.0,
    worker_log_level: str | None = None,
) -> AsyncIterator[LocalCluster]:
    """Start nats-server (unless ``nats_url``), the streams and ``workers`` supervised workers.

    On exit the workers are drained (SIGTERM, ``stop_timeout_s``) and the server stopped.
    """
    server = None
    if nats_url:
        url = nats_url
    else:
        server = EmbeddedNats(port=nats_port, store_dir=store_dir).start()
        url = server.url
    try:
        nc = await connect(url, name="agentbus-up", auth=nats_auth_from_env() if nats_url else None)
        await ensure_streams(nc.jetstream())
        await nc.close()
        ports: dict[str, int] = {}
        prefix = ["--log-level", worker_log_level] if worker_log_level else []

        def command(name: str) -> list[str]:
            ports[name] = ports.get(name) or free_port()
            return python_command(
                *prefix,
                "worker",
                "--nats-url",
                url,
                "--worker-id",
                name,
                "--http-port",
                str(ports[name]),
                *worker_args,
            )

        supervisor = LocalSupervisor(command, stop_timeout_s=stop_timeout_s)
        try:
            await supervisor.scale_to(workers)
            yield LocalCluster(url=url, supervisor=supervisor, ports=ports)
        finally:
            await supervisor.stop()
    finally:
        if server is not None:
            server.close()


async def wait_ready(ports: Mapping[str, int], *, timeout_s: float) -> None:
    """Wait until every worker's ``/readyz`` answers 200; raise naming the laggards after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiting = dict(ports)
    while True:
        for name, port in list(waiting.items()):
            if await _http_status(port, "/readyz") == 200:
                del waiting[name]
        if not waiting:
            return
        if loop.time() >= deadline:
            raise AgentbusError(f"workers not ready after {timeout_s:g}s: {', '.join(sorted(waiting))}")
        await asyncio.sleep(0.05)  # a poll interval: readiness comes from /readyz, not from a guess


async def _http_status(port: int, path: str) -> int | None:
    """Status code of ``GET http://127.0.0.1:<port><path>``, None if nothing answers."""
    try:
        async with asyncio.timeout(1.0):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        return int(status_line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        return None


async def _up(args: argparse.Namespace) -> int:
    try:
        async with local_cluster(
            workers=args.workers,
            worker_args=worker_argv(args),
            nats_url=args.nats_url,
            nats_port=args.nats_port,
            store_dir=args.store_dir,
            stop_timeout_s=(args.drain_timeout_s or 25.0) + 5,
        ) as cluster:
            _write_state(cluster.url, cluster.ports)
            print(
                f"agentbus up: NATS {cluster.url}, {args.workers} workers; metrics on ports "
                f"{', '.join(str(p) for p in cluster.ports.values())}; Ctrl-C to stop",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)

            def resized() -> None:  # `agentbus status` finds the workers the autoscaler added
                _write_state(cluster.url, {n: cluster.ports[n] for n in cluster.supervisor.pids()})

            async with autoscaling(args, cluster.supervisor, cluster.ports, on_resize=resized):
                await stop.wait()
            print("agentbus up: draining workers", flush=True)
        return 0
    finally:
        _remove_state()


def _remove_state() -> None:
    Path(UP_STATE_FILE).unlink(missing_ok=True)


def _write_state(url: str, ports: dict[str, int]) -> None:
    path = Path(UP_STATE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "nats_url": url, "metrics_ports": ports}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)
