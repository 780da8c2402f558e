"""Worker configuration: typed, keyword-only, read from the environment once, at the edge.

Every ``AGENTBUS_*`` variable is read here and nowhere else; the CLI layers its
flags on top. Units are in the names (``_s``, ``_bytes``).

Shared tenant state (docs/state.md): every worker keeps a replica; ``gossip`` replicates
it to the other workers over the worker's NATS connection (timings from
``gossip_preset``: ``lan``, memberlist's LAN defaults with 200 ms rounds, or ``test``,
about 10x faster for tests); ``redis_url`` adds snapshots in Redis (None: gossip only,
state lives as long as some worker does).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agentbus.env import Env
from agentbus.errors import ConfigError
from bus.admission import DEFAULT_REPLY_PREFIXES, check_reply_prefix
from bus.connection import NatsAuth
from bus.records import RecordLimits
from bus.subjects import is_token
from bus.topology import StreamLimits
from state.mac import ClusterKey

__all__ = [
    "DEFAULT_NATS_URL",
    "FAIRNESS",
    "GOSSIP_PRESETS",
    "NATS_AUTH_VARIABLES",
    "UP_STATE_FILE",
    "WorkerConfig",
    "nats_auth_from_env",
    "read_up_state",
    "resolve_nats_url",
]

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
GOSSIP_PRESETS = ("lan", "test")
"""``GossipConfig.lan()`` (production) and ``GossipConfig.for_tests()`` (timings ~10x shorter)."""


NATS_AUTH_VARIABLES = {
    "AGENTBUS_NATS_CREDS": "creds_file",
    "AGENTBUS_NATS_NKEY_SEED": "nkey_seed_file",
    "AGENTBUS_NATS_TLS_CA": "tls_ca_file",
    "AGENTBUS_NATS_TLS_CERT": "tls_cert_file",
    "AGENTBUS_NATS_TLS_KEY": "tls_key_file",
}
"""The variables of :class:`~bus.connection.NatsAuth`: each names a file (every command reads them)."""
_INBOX_PREFIX_VARIABLE = "AGENTBUS_NATS_INBOX_PREFIX"
"""The credential's inbox prefix (``_INBOX_<tenant>`` for a tenant's, docs/security.md)."""


def nats_auth_from_env(environ: Mapping[str, str] | None = None) -> NatsAuth:
    """NATS credentials, TLS files and the inbox prefix from ``AGENTBUS_NATS_*``; a file that is not
    there is a ConfigError."""
    env = Env(environ)
    files = {name: env.file(var) for var, name in NATS_AUTH_VARIABLES.items()}
    prefix = (env.text(_INBOX_PREFIX_VARIABLE) or "").strip() or None
    if prefix is not None:
        try:
            NatsAuth(inbox_prefix=prefix)  # the one check of a prefix
        except ConfigError:
            raise env.error(_INBOX_PREFIX_VARIABLE, "a plain subject such as _INBOX_acme") from None
    return NatsAuth(inbox_prefix=prefix, **{name: path for name, path in files.items() if path is not None})


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkerConfig:
    """Everything one worker process needs to know."""

    nats_url: str = DEFAULT_NATS_URL
    nats_auth: NatsAuth = field(default_factory=NatsAuth)  # creds, NKEY seed, TLS files (not in the URL)
    # the fast lane for deliveries and publishes (bus._client, nats-py 2.16 only); off: nats-py's
    # own paths, same frame guard. A switch for a nats-py regression, not a tuning knob
    nats_fast_path: bool = True
    # how long /healthz may report NATS lost (connection closed, read loop ended) before the
    # worker exits 70 to be restarted; checked every second. Short: a lost worker holds no slot
    # anyone else can use, its tasks wait for ack_wait
    nats_lost_exit_s: float = 10.0
    agent_modules: tuple[str, ...] = ("agents.builtin",)
    kinds: tuple[str, ...] = ()  # empty: every kind the modules define
    worker_id: str = ""  # empty: <hostname>-<pid>
    max_inflight: int | None = None  # overrides every agent's max_inflight when set
    prefetch: int | None = None  # messages delivered ahead of free slots, per kind; None: see prefetch_for
    http_host: str = "127.0.0.1"  # the chart sets 0.0.0.0
    http_port: int = 0  # 0: a free port; -1: no HTTP endpoint
    drain_timeout_s: float = 25.0  # < the pod's terminationGracePeriodSeconds (30 s default)
    ack_wait_s: float = 30.0  # JetStream redelivers a dead worker's task after this
    max_deliver: int = 5  # deliveries before max_deliveries dead-lettering
    retry_base_s: float = 1.0  # first nak delay; doubles per delivery, jittered
    retry_max_s: float = 60.0
    provision: bool = True  # create/update streams and consumers at start
    tenants: frozenset[str] | None = None  # None: any tenant; else others are dead-lettered
    reply_prefixes: tuple[str, ...] = DEFAULT_REPLY_PREFIXES
    """Subjects a task's ``Agentbus-Reply`` may name (each a prefix ending with a dot); a task
    asking for any other reply is dead-lettered (``invalid_envelope``) before it runs."""
    unrouted_grace_s: float = 60.0  # age before a task of an unserved kind is dead-lettered
    sweep_interval_s: float = 10.0
    consumer_info_interval_s: float = 5.0  # how often pending counts are read for /metrics (autoscale: 1)
    stream_limits: StreamLimits = field(default_factory=StreamLimits)
    records: RecordLimits = field(default_factory=RecordLimits)  # results, audit, ledgers (bus.records)
    # a minimal audit record (fate, attempt, worker) per attempt of every generic task; off by
    # default: one more publish per task (docs/records.md has its measured cost)
    audit_tasks: bool = False
    gossip: bool = True  # replicate shared state to the other workers; off: this process's state only
    gossip_preset: str = "lan"  # one of GOSSIP_PRESETS
    redis_url: str | None = None  # snapshots of shared state in Redis; None: gossip only
    # tags gossip packets and Redis snapshots (AGENTBUS_CLUSTER_KEY_FILE, 64 hex characters);
    # None: neither is authenticated (one user's laptop), docs/state.md "Security"
    cluster_key: ClusterKey | None = field(default=None, repr=False)
    gc_gen0_threshold: int = 50_000  # the worker process's gen-0 GC threshold; 0: Python's (700)
    # fair share between tenants (docs/fairness.md): "tenant", a consumer per tenant served by
    # deficit round robin; "kind", one consumer per kind in arrival order (the old path, kept
    # as the benchmarks' baseline; a kind cannot be served both ways at once)
    fairness: str = "tenant"
    tenant_weights: Mapping[str, int] = field(default_factory=dict)  # tenant -> weight; others 1
    # slots one tenant may hold while other tenants are served by the worker; None: all but
    # an eighth of the slots, kept for a tenant that arrives while another fills the rest
    tenant_max_inflight: int | None = None

    def __post_init__(self) -> None:
        if self.drain_timeout_s < 0 or self.ack_wait_s <= 0 or self.max_deliver < 1:
            raise ConfigError("drain_timeout_s >= 0, ack_wait_s > 0 and max_deliver >= 1 are required")
        if self.retry_base_s < 0 or self.retry_max_s < self.retry_base_s:
            raise ConfigError("need 0 <= retry_base_s <= retry_max_s")
        if self.nats_lost_exit_s < 0:
            raise ConfigError("nats_lost_exit_s must be >= 0")
        if self.consumer_info_interval_s <= 0:
            raise ConfigError("consumer_info_interval_s must be > 0")
        if self.max_inflight is not None and self.max_inflight < 1:
            raise ConfigError("max_inflight must be >= 1")
        if self.prefetch is not None and self.prefetch < 0:
            raise ConfigError("prefetch must be >= 0")
        if self.gc_gen0_threshold < 0:
            raise ConfigError("gc_gen0_threshold must be >= 0")
        try:
            prefixes = tuple(check_reply_prefix(p) for p in self.reply_prefixes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        object.__setattr__(self, "reply_prefixes", prefixes)  # normalized: each ends with a dot
        if self.fairness not in FAIRNESS:
            raise ConfigError(f"fairness must be one of {', '.join(FAIRNESS)}")
        if self.tenant_max_inflight is not None and self.tenant_max_inflight < 1:
            raise ConfigError("tenant_max_inflight must be >= 1")
        if any(not is_token(t) or not 1 <= w <= 1000 for t, w in self.tenant_weights.items()):
            raise ConfigError("tenant_weights: each tenant a valid token, each weight 1..1000")
        if self.gossip_preset not in GOSSIP_PRESETS:
            raise ConfigError(f"gossip_preset must be one of {', '.join(GOSSIP_PRESETS)}")

    @property
    def worker_name(self) -> str:
        """The id this worker reports (results, dead letters, logs)."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    def prefetch_for(self, slots: int) -> int:
        """Messages a kind with ``slots`` takes ahead: ``prefetch``, else ``slots // 8`` from 64
        slots up, at most 256.

        Prefetch hides the few milliseconds a busy worker takes to refill a freed slot; that
        matters at hundreds of tasks per second, which take many slots. A few slots serve
        long tasks, for which the refill is nothing and a message held back here is one an
        idle replica could have started. 256 cover about 10 ms at 25,000 tasks/s.
        """
        if self.prefetch is not None:
            return self.prefetch
        return min(slots // 8, 256) if slots >= 64 else 0

    def with_(self, **changes: Any) -> WorkerConfig:
        """A copy with ``changes`` (None values are ignored, so CLI flags left unset keep defaults)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerConfig:
        """Defaults overlaid with ``AGENTBUS_*`` variables (:class:`~agentbus.env.Env`)."""
        env = Env(environ)
        out: dict[str, Any] = {
            "nats_url": env.text("AGENTBUS_NATS_URL"),
            "worker_id": env.text("AGENTBUS_WORKER_ID"),
            "http_host": env.text("AGENTBUS_HTTP_HOST"),
            "http_port": env.integer("AGENTBUS_HTTP_PORT"),
            "max_inflight": env.integer("AGENTBUS_MAX_INFLIGHT"),
            "prefetch": env.integer("AGENTBUS_PREFETCH"),
            "drain_timeout_s": env.number("AGENTBUS_DRAIN_TIMEOUT_S"),
            "ack_wait_s": env.number("AGENTBUS_ACK_WAIT_S"),
            "max_deliver": env.integer("AGENTBUS_MAX_DELIVER"),
            "consumer_info_interval_s": env.number("AGENTBUS_CONSUMER_INFO_INTERVAL_S"),
            "gossip_preset": env.text("AGENTBUS_GOSSIP_PRESET"),
            "gc_gen0_threshold": env.integer("AGENTBUS_GC_GEN0_THRESHOLD"),
            "nats_lost_exit_s": env.number("AGENTBUS_NATS_LOST_EXIT_S"),
            "nats_auth": nats_auth_from_env(environ),
            "agent_modules": env.items("AGENTBUS_AGENTS"),
            "kinds": env.items("AGENTBUS_KINDS"),
            "redis_url": env.text("AGENTBUS_REDIS_URL") or None,
            "gossip": env.flag("AGENTBUS_GOSSIP"),
            "audit_tasks": env.flag("AGENTBUS_AUDIT_TASKS"),
            "nats_fast_path": env.flag("AGENTBUS_NATS_FAST_PATH"),
            "reply_prefixes": env.items("AGENTBUS_REPLY_PREFIXES"),  # set but empty: no reply is allowed
            "fairness": env.text("AGENTBUS_FAIRNESS"),
            "tenant_max_inflight": env.integer("AGENTBUS_TENANT_MAX_INFLIGHT"),
        }
        if key_file := env.file("AGENTBUS_CLUSTER_KEY_FILE"):
            out["cluster_key"] = ClusterKey.from_file(key_file)
        if (weights := env.items("AGENTBUS_TENANT_WEIGHTS")) is not None:
            out["tenant_weights"] = _weights(env, weights)
        if tenants := env.items("AGENTBUS_TENANTS"):
            out["tenants"] = frozenset(tenants)
        replicas = env.integer("AGENTBUS_STREAM_REPLICAS")  # R3 on a NATS cluster (the Helm chart sets it)
        quota = env.integer("AGENTBUS_TENANT_MAX_QUEUED")  # queued tasks per tenant and kind
        limits = {"replicas": replicas, "tenant_max_queued": quota}
        if replicas is not None or quota is not None:
            try:
                out["stream_limits"] = StreamLimits(**{k: v for k, v in limits.items() if v is not None})
            except ValueError as exc:
                raise ConfigError(f"AGENTBUS_STREAM_REPLICAS / AGENTBUS_TENANT_MAX_QUEUED: {exc}") from exc
        out["records"] = _record_limits(env, replicas)
        return cls(**{k: v for k, v in out.items() if v is not None})


def _record_limits(env: Env, replicas: int | None) -> RecordLimits | None:
    """``AGENTBUS_RESULTS_TTL_S``, ``AGENTBUS_AUDIT_TTL_S``, ``AGENTBUS_ONCE_TTL_S`` (the chart's
    ``results:``/``audit:`` blocks) and the stream replicas; None if none is set."""
    ages: dict[str, Any] = {
        "results_max_age_s": env.number("AGENTBUS_RESULTS_TTL_S"),
        "audit_max_age_s": env.number("AGENTBUS_AUDIT_TTL_S"),
        "once_max_age_s": env.number("AGENTBUS_ONCE_TTL_S"),
        "replicas": replicas,
    }
    given = {k: v for k, v in ages.items() if v is not None}
    if not given:
        return None
    try:
        return RecordLimits(**given)
    except ValueError as exc:
        raise ConfigError(f"AGENTBUS_RESULTS_TTL_S/AUDIT_TTL_S/ONCE_TTL_S: {exc}") from exc


FAIRNESS = ("tenant", "kind")
"""The consumption strategies (``WorkerConfig.fairness``)."""


def _weights(env: Env, items: tuple[str, ...]) -> dict[str, int]:
    """``tenant=weight`` items of ``AGENTBUS_TENANT_WEIGHTS``."""
    out: dict[str, int] = {}
    for item in items:
        tenant, _, weight = item.partition("=")
        if not weight.strip().isdecimal():
            raise env.error("AGENTBUS_TENANT_WEIGHTS", "tenant=weight items, comma-separated")
        out[tenant.strip()] = int(weight)
    return out


UP_STATE_FILE = ".agentbus/up.json"
"""Where ``agentbus up`` records its NATS URL and workers, for the other commands."""


def resolve_nats_url(flag: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--nats-url``, else ``AGENTBUS_NATS_URL``, else a running ``agentbus up``, else the default."""
    if flag:
        return flag
    url = Env(environ).text("AGENTBUS_NATS_URL")
    if url:
        return url
    state = read_up_state()
    if state is not None:
        return str(state["nats_url"])
    return DEFAULT_NATS_URL


def read_up_state() -> dict[str, Any] | None:
    """The state file of a live ``agentbus up`` in this directory, if any."""
    import json

    try:
        with open(UP_STATE_FILE) as f:
            state: dict[str, Any] = json.load(f)
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state
