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

Where the cloud resumes. nats-server records, per source, the last edge sequence it
copied (the ``seq`` of the stream info's source) and restarts the source after it on a
new stream leader, a server restart or a stream update, even though the work queue has
deleted every copied task. Only a *new* source (none of that name and API in ``TASKS``)
has no record; the server would then start at the time of ``TASKS``' last message and
skip every edge task stored before it. :func:`source_edge` therefore adds a new source
at edge sequence 1 and never replaces an existing one (removing and re-adding a source
loses that record).

After an uplink outage nats-server retries a failed source with a growing backoff (its
own request is lost in the cut, and the retry comes up to a couple of minutes later).
:func:`resume_on_reconnect` watches the edge's leaf connection and, when the uplink is
back but the cloud still has not heard from the edge's stream, steps down ``TASKS``'
leader: a new leader sets up every source at once from the recorded sequence.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)

from agentbus.errors import BusError, ConfigError
from bus._streams import ensure_stream
from bus.embedded import EmbeddedNats, monitor
from bus.subjects import TASKS_PREFIX, check_token
from bus.topology import TASKS_STREAM, StreamLimits

__all__ = [
    "EDGE_STREAM",
    "SourceStatus",
    "cloud_api",
    "ensure_edge_stream",
    "leaf_config",
    "restart_sources",
    "resume_on_reconnect",
    "source_edge",
    "source_stalled",
    "source_status",
    "start_edge_server",
]

EDGE_STREAM = "EDGE_TASKS"

log = logging.getLogger("agentbus.edge")


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


def cloud_api(hub_domain: str | None = None) -> str:
    """The JetStream API prefix of the cloud: ``$JS.<hub_domain>.API`` across a leaf
    connection, ``$JS.API`` when connected to the cloud itself."""
    return f"$JS.{check_token('domain', hub_domain)}.API" if hub_domain else "$JS.API"


async def source_edge(js: JetStreamContext, domain: str) -> None:
    """Make the cloud's ``TASKS`` (``js`` connected to the cloud) source ``EDGE_TASKS`` of ``domain``.

    Idempotent: a source of this site that ``TASKS`` has already is left exactly as it is
    (its recorded position is what keeps processed tasks from crossing twice). A new one
    starts at edge sequence 1, so tasks the edge stored before the cloud's latest task
    cross too. Other sources of TASKS are kept; :func:`bus.topology.ensure_streams` keeps
    the sources when a worker provisions the stream again.
    """
    check_token("domain", domain)
    info = await js.stream_info(TASKS_STREAM)
    config = info.config
    api = cloud_api(domain)
    if any(s.external is not None and s.external.api == api for s in config.sources or []):
        return
    source = StreamSource(name=EDGE_STREAM, opt_start_seq=1, external=ExternalStream(api=api))
    config.sources = [*(config.sources or []), source]
    await js.update_stream(config)


class SourceStatus(msgspec.Struct, frozen=True):
    """The cloud's view of one site's source (the source entry of ``TASKS``' stream info)."""

    seq: int
    """The last edge sequence the cloud copied (0: none yet)."""
    lag: int
    """Edge tasks not copied yet, as of the cloud's last contact with the edge's stream."""
    idle_s: float | None
    """Seconds since that contact (heartbeats count); None if the source never had one."""


class _External(msgspec.Struct):
    api: str = ""


class _Source(msgspec.Struct):
    name: str = ""
    external: _External | None = None
    seq: int = 0
    lag: int = 0
    active: int = -1  # nanoseconds since the last contact; negative: never


class _ApiError(msgspec.Struct):
    code: int = 0
    description: str = ""


class _Reply(msgspec.Struct):
    error: _ApiError | None = None


class _StreamInfo(_Reply):
    """The part of a ``STREAM.INFO`` reply read here (nats-py's own type drops ``seq`` and ``external``)."""

    sources: list[_Source] | None = None


class _Stepdown(_Reply):
    success: bool = False


_R = TypeVar("_R", bound=_Reply)


def _decode(kind: type[_R], data: bytes, what: str) -> _R:
    try:
        reply = msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:
        raise BusError(f"{what}: an undecodable reply ({exc})") from exc
    if reply.error is not None:
        raise BusError(f"{what}: {reply.error.description} (code {reply.error.code})")
    return reply


async def source_status(
    nc: Client, domain: str, *, api: str = "$JS.API", timeout_s: float = 5.0
) -> SourceStatus | None:
    """How the cloud's ``TASKS`` (reached at JetStream API prefix ``api``) sources site ``domain``;
    None if it does not. Raises :class:`BusError` when the cloud answers with an error."""
    reply = await nc.request(f"{api}.STREAM.INFO.{TASKS_STREAM}", b"", timeout=timeout_s)
    info = _decode(_StreamInfo, reply.data, f"stream info of {TASKS_STREAM}")
    want = cloud_api(domain)
    for s in info.sources or []:
        if s.name == EDGE_STREAM and s.external is not None and s.external.api == want:
            idle = s.active / 1e9 if s.active >= 0 else None
            return SourceStatus(seq=s.seq, lag=s.lag, idle_s=idle)
    return None


def source_stalled(status: SourceStatus, *, up_for_s: float, grace_s: float) -> bool:
    """Whether a source waits on the server's retry backoff: its uplink has been up for
    ``up_for_s`` seconds, at least ``grace_s``, and the cloud has not heard from the edge's
    stream since (a running source hears heartbeats every second)."""
    if up_for_s < grace_s:
        return False
    return status.idle_s is None or status.idle_s >= up_for_s


async def restart_sources(nc: Client, *, api: str = "$JS.API", timeout_s: float = 10.0) -> None:
    """Step down ``TASKS``' leader: the new leader sets up every source of TASKS at once, each
    from the edge sequence the cloud recorded for it (nothing copied is copied again).
    Publishes to TASKS pause for the election (well under a second on a healthy cluster)."""
    reply = await nc.request(f"{api}.STREAM.LEADER.STEPDOWN.{TASKS_STREAM}", b"", timeout=timeout_s)
    if not _decode(_Stepdown, reply.data, f"leader stepdown of {TASKS_STREAM}").success:
        raise BusError(f"leader stepdown of {TASKS_STREAM} was not done")


def _leaf_ids(http_port: int) -> frozenset[int]:
    """Connection ids of the leaf connections of the server monitored at ``http_port`` (``/leafz``)."""
    status, body = monitor(f"http://127.0.0.1:{http_port}", "/leafz")
    if status != 200:
        raise OSError(f"/leafz answered {status or 'nothing'}")
    leafs = body.get("leafs") if isinstance(body, dict) else None
    return frozenset(
        leaf["id"] for leaf in leafs or [] if isinstance(leaf, dict) and isinstance(leaf.get("id"), int)
    )


async def resume_on_reconnect(
    nc: Client,
    domain: str,
    http_port: int,
    *,
    api: str = "$JS.API",
    grace_s: float = 5.0,
    min_interval_s: float = 60.0,
    poll_s: float = 1.0,
) -> None:
    """Watch the edge server's leaf connection (monitoring port ``http_port``) until cancelled.

    After each new connection, once it has been up ``grace_s``: if the cloud has heard from
    site ``domain``'s stream since, nothing to do until the next connection; if not
    (:func:`source_stalled`), restart the cloud's sources (:func:`restart_sources`), at most
    once per ``min_interval_s``. ``nc`` reaches the cloud's JetStream API at prefix ``api``
    (across the leaf connection or directly). A stepdown restarts the sources of every
    site, so sites that reconnect together mostly find theirs running again.
    """
    check_token("domain", domain)
    conn: frozenset[int] = frozenset()
    up_since = 0.0
    settled = True  # no connection yet: nothing to watch
    last_restart = -min_interval_s
    while True:
        await asyncio.sleep(poll_s)
        try:
            ids = await asyncio.to_thread(_leaf_ids, http_port)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the edge server's /leafz (%s)", exc)
            continue
        now = time.monotonic()
        if ids != conn:  # a new leaf connection (or none): watch what the cloud does with it
            conn, up_since, settled = ids, now, not ids
        if settled or now - up_since < grace_s or now - last_restart < min_interval_s:
            continue
        try:
            status = await source_status(nc, domain, api=api)
            if status is None:  # not sourced (yet): that is source_edge's business
                continue
            if not source_stalled(status, up_for_s=now - up_since, grace_s=grace_s):
                settled = True
                continue
            log.warning(
                "the cloud has not heard from this site's stream since the uplink returned "
                "%.0fs ago: restarting its sources (a TASKS leader stepdown)",
                now - up_since,
            )
            last_restart = now
            await restart_sources(nc, api=api)
        except Exception as exc:  # the uplink dropped again, the cloud is electing: next round
            log.warning("resuming the cloud's source of this site failed (%s)", exc)
