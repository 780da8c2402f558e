"""An edge site: a NATS leaf node with its own JetStream domain that keeps tasks while its uplink is down.

Edge publishers connect to the leaf node and publish to ``tasks.<tenant>.<kind>`` as
anywhere else. The leaf stores them in its own stream ``EDGE_TASKS`` (domain
``edge``, say) and acknowledges at once, uplink or not. The cloud's ``TASKS`` stream
*sources* ``EDGE_TASKS`` across the leaf connection (``$JS.<domain>.API``): while the
uplink is down the source simply lags; when it returns, the cloud catches up from the
last sequence it copied, and the cloud workers run the tasks. Nothing is lost as long
as ``EDGE_TASKS`` keeps a task longer than the longest outage (``max_age``, a week by
default) and has room (``discard=new``: a full edge store refuses a publish, it never
drops a stored task).

The leaf connection denies ``tasks.>`` both ways, so a task reaches the cloud only by
the source (never twice) and a cloud task never lands at the edge. Everything else
crosses it: a result published by a cloud worker to an edge publisher's reply inbox
(``_INBOX.``) or to ``results.<tenant>.<id>`` reaches edge subscribers while the uplink
is up. Results are core NATS messages: one produced while the uplink is down is not
kept for the edge (the cloud cannot run an edge task then anyway, because the task
crosses only with the uplink up; a result lost in a cut *during* the run is the gap).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)

from agentbus.errors import ConfigError
from bus._streams import ensure_stream
from bus.embedded import EmbeddedNats
from bus.subjects import TASKS_PREFIX, check_token
from bus.topology import TASKS_STREAM, StreamLimits

__all__ = [
    "EDGE_STREAM",
    "ensure_edge_stream",
    "leaf_config",
    "source_edge",
    "start_edge_server",
]

EDGE_STREAM = "EDGE_TASKS"


def leaf_config(hub_leaf_urls: Sequence[str], *, domain: str) -> str:
    """The server configuration of an edge leaf node: its JetStream domain goes in the
    ``jetstream`` block (:class:`EmbeddedNats` ``jetstream_config``), the rest here."""
    check_token("domain", domain)
    if not hub_leaf_urls:
        raise ConfigError("an edge site needs at least one hub leaf node URL")
    urls = ", ".join(f'"{u}"' for u in hub_leaf_urls)
    return (
        f"server_name: edge-{domain}\n"
        "leafnodes {\n  reconnect: 1\n  remotes: [\n"
        f'    {{ urls: [{urls}], deny_imports: ["{TASKS_PREFIX}.>"], deny_exports: ["{TASKS_PREFIX}.>"] }}\n'
        "  ]\n}\n"
    )


def start_edge_server(
    hub_leaf_urls: Sequence[str],
    *,
    domain: str = "edge",
    port: int = 0,
    store_dir: str | os.PathLike[str] | None = None,
    sync_always: bool = True,
) -> EmbeddedNats:
    """Start a leaf node of domain ``domain`` connecting to ``hub_leaf_urls``; returned running."""
    server = EmbeddedNats(
        port=port,
        store_dir=store_dir,
        sync_always=sync_always,
        extra_config=leaf_config(hub_leaf_urls, domain=domain),
        jetstream_config=f"domain: {domain}",
    )
    return server.start()


async def ensure_edge_stream(
    js: JetStreamContext, limits: StreamLimits | None = None, *, max_age_s: float = 7 * 24 * 3600.0
) -> None:
    """Create or update ``EDGE_TASKS`` on the edge (``js`` connected to the leaf node).

    Limits retention: the cloud's source reads it without deleting, so a task is kept
    ``max_age_s`` (longer than any outage you plan for) or until ``tasks_max_bytes``.
    """
    limits = limits or StreamLimits()
    config = StreamConfig(
        name=EDGE_STREAM,
        subjects=[f"{TASKS_PREFIX}.*.*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs=limits.tasks_max_msgs,
        max_bytes=limits.tasks_max_bytes,
        max_msg_size=limits.max_msg_bytes,
        max_age=max_age_s,
        duplicate_window=limits.duplicate_window_s,
        num_replicas=1,
    )
    await ensure_stream(js, config)


async def source_edge(js: JetStreamContext, domain: str) -> None:
    """Make the cloud's ``TASKS`` (``js`` connected to the cloud) source ``EDGE_TASKS`` of ``domain``.

    Idempotent; other sources of TASKS are kept. :func:`bus.topology.ensure_streams`
    keeps the sources when a worker provisions the stream again.
    """
    check_token("domain", domain)
    info = await js.stream_info(TASKS_STREAM)
    config = info.config
    api = f"$JS.{domain}.API"
    sources = [s for s in config.sources or [] if not (s.external and s.external.api == api)]
    sources.append(StreamSource(name=EDGE_STREAM, external=ExternalStream(api=api)))
    config.sources = sources
    await js.update_stream(config)
