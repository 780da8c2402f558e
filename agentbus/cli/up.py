"""``agentbus up``: the embedded default. nats-server (unless ``--nats-url``) plus N supervised workers.

The NATS URL and the workers' metrics ports are written to ``.agentbus/up.json`` so
``agentbus publish`` and ``agentbus status`` in the same directory find the cluster.
:func:`local_cluster` is the reusable part (``agentbus demo`` runs on it too).

Both kinds of child are supervised: a worker that dies is restarted, and so is the
embedded nats-server (same port, same store). A worker that exits with a usage or
configuration error (exit 2 or 78) is not: ``up`` prints its error, drains the other
workers, stops the server and exits with that code.

``up.json`` is created with mode 0600, never holds a password or token (the URL is
stored without them; other commands take them from ``AGENTBUS_NATS_URL``), and is
removed on exit only while it still names this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentbus.cli.scaler import add_autoscale_options, autoscaling
from agentbus.cli.worker import EXIT_CONFIG, EXIT_USAGE, add_worker_options, worker_argv
from agentbus.errors import AgentbusError, UsageError
from agents.config import UP_STATE_FILE, nats_auth_from_env
from bus.authdir import IDENTITY_VARIABLES, AuthDir, server_auth_config
from bus.cluster import NatsCluster
from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port, keep_alive
from bus.permissions import Role
from bus.topology import StreamLimits, ensure_streams
from scaler.local import LocalSupervisor, ReplicaFailure, python_command

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
    p.add_argument(
        "--auth",
        metavar="DIR",
        help="credentials from `agentbus auth init DIR`: the server enforces them, workers use theirs",
    )
    p.add_argument(
        "--cluster",
        type=int,
        choices=(3, 5),
        help="run a NATS cluster of this many nodes (R3/R5 streams, fsync per ack) instead of one server",
    )
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
    server: EmbeddedNats | None = None
    """The embedded nats-server (None with ``nats_url``); restarted on its port when it dies."""
    nats_cluster: NatsCluster | None = None
    """The embedded NATS cluster (``cluster``); each node is restarted on its ports when it dies."""

    @property
    def public_url(self) -> str:
        """:attr:`url` without a user, password or token: what may be printed or written down."""
        return _without_credentials(self.url)


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
    worker_log_format: str | None = None,
    auth_dir: str | None = None,
    cluster: int = 0,
) -> AsyncIterator[LocalCluster]:
    """Start nats-server (unless ``nats_url``), the streams and ``workers`` supervised workers.

    The embedded server is restarted when it dies, on the same port and store. A
    worker that exits 2 or 78 is not restarted: ``supervisor.failed()`` returns it.
    On exit the workers are drained (SIGTERM, ``stop_timeout_s``) and the server stopped.
    ``auth_dir`` (``agentbus auth init``): the embedded server includes its ``auth.conf``, and
    the workers (and this function) connect with the worker credential. ``cluster`` (3 or 5)
    runs that many clustered servers (:mod:`bus.cluster`) instead of one, with streams of as
    many replicas; the workers get every node's URL as seeds.
    """
    server = None
    nodes: NatsCluster | None = None
    keepers: list[asyncio.Task[None]] = []
    limits = StreamLimits(replicas=cluster) if cluster and not nats_url else StreamLimits()
    auth = AuthDir(auth_dir) if auth_dir else None
    worker_env = auth.environment(Role.WORKER.value) if auth else {}
    if nats_url:
        url = nats_url
    elif cluster:
        nodes = await asyncio.to_thread(NatsCluster(cluster, base_dir=store_dir).start)
        url = nodes.url
        keepers = [
            asyncio.create_task(keep_alive(n), name=f"agentbus-nats-keeper-{n.port}") for n in nodes.nodes
        ]
    else:
        server = EmbeddedNats(port=nats_port, store_dir=store_dir)
        if auth is not None:
            server.extra_config = server_auth_config(auth, server.store_dir)
        server.start()
        url = server.url
        keepers = [asyncio.create_task(keep_alive(server), name="agentbus-nats-keeper")]
    try:
        # A URL with credentials reaches the workers in their environment: a command line is public.
        secret = _without_credentials(url) != url
        env = {**os.environ, _NATS_URL_VARIABLE: url} if secret else None
        if auth is not None:  # the worker identity, whatever identity this shell has
            inherited = env or os.environ
            env = {k: v for k, v in inherited.items() if k not in IDENTITY_VARIABLES} | worker_env
        if limits.replicas > 1:  # a worker provisions the streams too: with the same replicas
            env = {**(env or os.environ), "AGENTBUS_STREAM_REPLICAS": str(limits.replicas)}
        own_auth = nats_auth_from_env(env) if auth else nats_auth_from_env() if nats_url else None
        nc = await connect(url, name="agentbus-up", auth=own_auth)
        await ensure_streams(nc.jetstream(), limits)
        await nc.close()
        ports: dict[str, int] = {}
        prefix = ["--log-level", worker_log_level] if worker_log_level else []
        prefix += ["--log-format", worker_log_format] if worker_log_format else []
        url_args = [] if secret else ["--nats-url", url]

        def command(name: str) -> list[str]:
            ports[name] = ports.get(name) or free_port()
            return python_command(
                *prefix,
                "worker",
                *url_args,
                "--worker-id",
                name,
                "--http-port",
                str(ports[name]),
                *worker_args,
            )

        supervisor = LocalSupervisor(
            command, stop_timeout_s=stop_timeout_s, give_up_on=(EXIT_USAGE, EXIT_CONFIG), env=env
        )
        try:
            await supervisor.scale_to(workers)
            yield LocalCluster(url=url, supervisor=supervisor, ports=ports, server=server, nats_cluster=nodes)
        finally:
            await supervisor.stop()
    finally:
        for keeper in keepers:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if server is not None:
            server.close()
        if nodes is not None:
            nodes.close()


_NATS_URL_VARIABLE = "AGENTBUS_NATS_URL"
"""Where workers started by ``up`` find a NATS URL that carries credentials (read by agents.config)."""


def _without_credentials(url: str) -> str:
    """``url`` (or a comma-separated list of URLs) without user, password or token."""
    return ",".join(_redact_one(u) for u in url.split(","))


def _redact_one(url: str) -> str:
    parts = urllib.parse.urlsplit(url.strip())
    if "@" not in parts.netloc:
        return url.strip()
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


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
    if args.cluster and args.nats_url:
        raise UsageError("--cluster starts a NATS cluster; --nats-url uses one that runs: give one of them")
    if args.cluster and args.auth:  # docs/security.md: auth on a cluster is the chart's (NATS) config
        raise UsageError("--auth runs one embedded server with the credentials; not with --cluster")
    code = 0
    try:
        async with local_cluster(
            workers=args.workers,
            worker_args=worker_argv(args),
            nats_url=args.nats_url,
            nats_port=args.nats_port,
            store_dir=args.store_dir,
            stop_timeout_s=(args.drain_timeout_s or 25.0) + 5,
            worker_log_format=getattr(args, "log_format", None),
            auth_dir=args.auth,
            cluster=args.cluster or 0,
        ) as cluster:
            public_url = cluster.public_url
            needs_credentials = public_url != cluster.url
            _write_state(public_url, cluster.ports, needs_credentials=needs_credentials, auth_dir=args.auth)
            print(
                f"agentbus up: NATS {public_url}, {args.workers} workers; metrics on ports "
                f"{', '.join(str(p) for p in cluster.ports.values())}; Ctrl-C to stop",
                flush=True,
            )
            if args.auth:
                print(
                    f"agentbus up: NATS permissions from {args.auth}; here `agentbus publish --tenant NAME` "
                    "and `agentbus status` connect with its identities",
                    flush=True,
                )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)

            def resized() -> None:  # `agentbus status` finds the workers the autoscaler added
                live = {n: cluster.ports[n] for n in cluster.supervisor.pids()}
                _write_state(public_url, live, needs_credentials=needs_credentials, auth_dir=args.auth)

            async with autoscaling(
                args, cluster.supervisor, cluster.ports, on_resize=resized, announce=_announce
            ):
                failure = await _first(stop.wait(), cluster.supervisor.failed())
            if isinstance(failure, ReplicaFailure):
                _report(failure)
                code = failure.code
                print("agentbus up: stopping the other workers", flush=True)
            else:
                print("agentbus up: draining workers", flush=True)
    finally:
        _remove_state()
    return code


def _announce(line: str) -> None:
    print(line, flush=True)


async def _first(*aws: Any) -> Any:
    """The result of whichever awaitable finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()


def _report(failure: ReplicaFailure) -> None:
    what = "a usage error" if failure.code == EXIT_USAGE else "a configuration error"
    print(
        f"agentbus up: worker {failure.name} exited with {failure.code} ({what}); "
        "restarting it would fail the same way",
        file=sys.stderr,
    )
    for line in failure.stderr_tail[-10:]:
        print(f"  {line}", file=sys.stderr)
    print("agentbus: error: a worker cannot start; see its error above", file=sys.stderr, flush=True)


def _remove_state() -> None:
    """Remove ``up.json`` if it still names this process (another ``up`` may have taken over)."""
    path = Path(UP_STATE_FILE)
    try:
        if json.loads(path.read_text()).get("pid") != os.getpid():
            return
    except (OSError, ValueError, AttributeError):
        return
    path.unlink(missing_ok=True)


def _write_state(
    url: str, ports: dict[str, int], *, needs_credentials: bool = False, auth_dir: str | None = None
) -> None:
    """Write ``up.json`` atomically, created with mode 0600; ``url`` must carry no credentials;
    ``auth_dir``: the credentials directory of ``--auth`` (publish and status take theirs there)."""
    path = Path(UP_STATE_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {"pid": os.getpid(), "nats_url": url, "metrics_ports": ports}
    if auth_dir:
        state["auth_dir"] = str(Path(auth_dir).absolute())
    if needs_credentials:
        state["nats_credentials"] = (
            "required: --nats-url carried them and they are not stored here; "
            f"give other commands the full URL in {_NATS_URL_VARIABLE}"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(state))
    tmp.replace(path)
