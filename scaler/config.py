"""The scaler's configuration: a TOML or JSON file, ``AGENTBUS_SCALER_*`` variables, flags; in that order.

Everything decodes with msgspec into the typed Structs below, so an unknown key, a
wrong type or ``min_replicas > max_replicas`` is a clear :class:`ConfigError` at
start. The environment is read here, once, and nowhere else. Example::

    interval_s = 15
    [policy]
    min_replicas = 1
    max_replicas = 8
    [[policy.metrics]]
    name = "queue_depth"
    target = 20
    kind = "total"
    [prometheus]
    url = "http://prometheus:9090"
    [kubernetes]
    deployment = "agentbus-agents"
    namespace = "agents"
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from agentbus.env import Env
from agentbus.errors import ConfigError
from scaler.sources.prometheus import DEFAULT_SELECTOR, default_queries
from scaler.spec import PolicySpec

__all__ = ["KubernetesConfig", "PrometheusConfig", "ScalerConfig", "load_config"]


class PrometheusConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where Prometheus is and what to ask it; no ``url`` means the workers are scraped directly."""

    url: str = ""
    selector: str = DEFAULT_SELECTOR  # the label selector of the workers' scrape job
    rate_window: str = "1m"  # >= 4 scrape intervals (15 s default), so rate() always has 2 samples
    cpu_warmup_s: float = 60.0  # >= rate_window: start-up CPU never counts as load
    timeout_s: float = 5.0  # a slower answer is a missing metric: hold
    queries: dict[str, str] = {}  # per-metric PromQL overriding the defaults

    def all_queries(self) -> dict[str, str]:
        """The default queries overlaid with ``queries``."""
        base = default_queries(
            selector=self.selector, rate_window=self.rate_window, cpu_warmup_s=self.cpu_warmup_s
        )
        return {**base, **self.queries}


class KubernetesConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The Deployment to scale; no ``deployment`` means no Kubernetes actuator."""

    deployment: str = ""
    namespace: str = "default"
    kubeconfig: str = ""  # empty: in-cluster service account, else $KUBECONFIG or ~/.kube/config
    metrics_port: int = 8080  # the workers' HTTP port, for in-flight counts when there is no Prometheus
    require_deletion_cost: bool = True  # never shrink without marking the idlest pods first


class ScalerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything ``agentbus scaler`` needs."""

    policy: PolicySpec = PolicySpec()
    interval_s: float = 15.0  # the HPA's sync period; `agentbus up --autoscale` uses 1 s
    prometheus: PrometheusConfig = PrometheusConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()
    scrape_targets: tuple[str, ...] = ()  # /metrics URLs scraped directly when there is no Prometheus
    dry_run: bool = False  # decide and log, never resize
    http_host: str = "127.0.0.1"  # the chart sets 0.0.0.0 so the kubelet can probe
    http_port: int = -1  # the scaler's own /metrics, /readyz, /healthz; -1: none

    def __post_init__(self) -> None:
        if self.interval_s <= 0:
            raise ConfigError(f"interval_s={self.interval_s} must be > 0")
        if not self.http_host.strip():
            # asyncio reads an empty host as "every interface": that must be said, not implied.
            raise ConfigError("http_host must not be empty (0.0.0.0 listens on every interface)")


_ENV: dict[str, tuple[tuple[str, ...], str]] = {
    "AGENTBUS_PROMETHEUS_URL": (("prometheus", "url"), "text"),
    "AGENTBUS_SCALER_DEPLOYMENT": (("kubernetes", "deployment"), "text"),
    "AGENTBUS_SCALER_NAMESPACE": (("kubernetes", "namespace"), "text"),
    "AGENTBUS_SCALER_MIN_REPLICAS": (("policy", "min_replicas"), "integer"),
    "AGENTBUS_SCALER_MAX_REPLICAS": (("policy", "max_replicas"), "integer"),
    "AGENTBUS_SCALER_INTERVAL_S": (("interval_s",), "number"),
    "AGENTBUS_SCALER_HTTP_HOST": (("http_host",), "text"),
    "AGENTBUS_SCALER_HTTP_PORT": (("http_port",), "integer"),
}
"""Variable -> (the config key it sets, the :class:`~agentbus.env.Env` reader of its type)."""


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ScalerConfig:
    """File (``path`` or ``$AGENTBUS_SCALER_CONFIG``), then environment, then ``overrides`` (dotted keys)."""
    env = Env(environ)
    path = path or env.text("AGENTBUS_SCALER_CONFIG") or None
    raw: dict[str, Any] = _read_file(Path(path)) if path else {}
    for var, (keys, reader) in _ENV.items():
        value = getattr(env, reader)(var)
        if value is not None and value != "":  # an empty text: not given
            _put(raw, keys, value)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _put(raw, tuple(dotted.split(".")), value)
    try:
        return msgspec.convert(raw, ScalerConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"scaler config{f' {path}' if path else ''}: {exc}") from exc


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read scaler config {path}: {exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"scaler config {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"scaler config {path} must be a table/object at the top")
    return data


def _put(raw: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
