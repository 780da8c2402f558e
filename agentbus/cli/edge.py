"""``agentbus edge``: run an edge site, a NATS leaf node that keeps tasks while its uplink is down.

The leaf node (its own JetStream domain, ``--domain``) connects to the cloud's leaf node
port(s) (``--hub``), stores every task published to it in ``EDGE_TASKS`` and asks the
cloud's ``TASKS`` stream to source that stream (:mod:`bus.edge`). The cloud's JetStream
API is reached through the leaf connection (``--hub-domain``, the cloud servers'
JetStream domain) or directly (``--cloud-url``); while the uplink is down at start, the
request is retried until it gets through. After an uplink outage it makes the cloud resume
the source at once (``--resume-grace-s``, :func:`bus.edge.resume_on_reconnect`) instead
of after nats-server's retry backoff. Edge publishers use the printed URL, for
example ``agentbus publish --nats-url <url> echo '{"text": "hi"}' --wait``: the result
comes back from a cloud worker over the leaf connection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from nats.aio.client import Client

from agents.config import nats_auth_from_env
from bus.connection import connect
from bus.edge import cloud_api, ensure_edge_stream, resume_on_reconnect, source_edge, start_edge_server
from bus.embedded import keep_alive

__all__ = ["register"]

log = logging.getLogger("agentbus.edge")

_RETRY_S = 2.0


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "edge", help="run an edge site: a leaf node that keeps tasks offline"
    )
    p.add_argument(
        "--hub",
        required=True,
        help="the cloud's leaf node URLs, comma-separated (nats-leaf://host:7422,...)",
    )
    p.add_argument("--domain", default="edge", help="JetStream domain of this site (default %(default)s)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--hub-domain", help="the cloud's JetStream domain, reached through the leaf connection"
    )
    where.add_argument("--cloud-url", help="a NATS URL of the cloud (credentials: $AGENTBUS_NATS_URL style)")
    p.add_argument("--port", type=int, default=0, help="client port of the edge server (default: a free one)")
    p.add_argument("--store-dir", help="JetStream store of the edge server (default: a temp dir)")
    p.add_argument(
        "--max-age-h",
        type=float,
        default=168.0,
        help="hours the edge keeps a task: longer than any uplink outage (default %(default)s)",
    )
    p.add_argument(
        "--resume-grace-s",
        type=float,
        default=5.0,
        help="seconds after the uplink returns before a source the cloud has not resumed is "
        "restarted (a TASKS leader stepdown); 0: leave it to the server's retry backoff "
        "(default %(default)s)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM, then stop the leaf node."""
    return asyncio.run(_edge(args))


async def _edge(args: argparse.Namespace) -> int:
    hubs = [u.strip() for u in args.hub.split(",") if u.strip()]
    server = await asyncio.to_thread(
        start_edge_server, hubs, domain=args.domain, port=args.port, store_dir=args.store_dir
    )
    keeper = asyncio.create_task(keep_alive(server), name="agentbus-edge-keeper")
    sourcing: asyncio.Task[None] | None = None
    try:
        nc = await connect(server.url, name="agentbus-edge", first_connect_timeout_s=30)
        try:
            await ensure_edge_stream(nc.jetstream(), max_age_s=args.max_age_h * 3600)
            sourcing = asyncio.create_task(_source(args, nc, server.http_port), name="agentbus-edge-source")
            print(
                f"agentbus edge: NATS {server.url} (JetStream domain {args.domain}), uplink to "
                f"{', '.join(hubs)}; tasks published here run in the cloud; Ctrl-C to stop",
                flush=True,
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            if sourcing is not None:
                sourcing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sourcing
            await nc.close()
    finally:
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        server.stop()
    return 0


async def _source(args: argparse.Namespace, edge_nc: Client, http_port: int) -> None:
    """Ask the cloud's TASKS to source this site's stream, retried until it gets through; then
    keep the source going across uplink outages (:func:`bus.edge.resume_on_reconnect`)."""
    cloud = None
    try:
        while True:
            try:
                if args.cloud_url:
                    if cloud is None:
                        cloud = await connect(args.cloud_url, name="agentbus-edge", auth=nats_auth_from_env())
                    js = cloud.jetstream()
                else:
                    js = edge_nc.jetstream(domain=args.hub_domain)
                await source_edge(js, args.domain)
            except Exception as exc:  # uplink down, cloud stream not there yet: retry
                log.warning("the cloud does not source this site yet (%s); retrying", exc)
                await asyncio.sleep(_RETRY_S)
                continue
            print(f"agentbus edge: the cloud's TASKS sources EDGE_TASKS of domain {args.domain}", flush=True)
            break
        if args.resume_grace_s > 0:
            nc, api = (cloud, cloud_api()) if cloud is not None else (edge_nc, cloud_api(args.hub_domain))
            await resume_on_reconnect(nc, args.domain, http_port, api=api, grace_s=args.resume_grace_s)
    finally:
        if cloud is not None:
            await cloud.close()
