"""Putting a scaler together from a :class:`~scaler.config.ScalerConfig`: source, actuator, loop.

``agentbus scaler`` (Kubernetes, or a dry run) and ``agentbus up --autoscale`` (local
processes) both come through here, so they read metrics and choose victims alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.registry import CollectorRegistry

from agentbus.errors import ConfigError
from scaler.actuators import Actuator
from scaler.actuators.kubernetes import (
    InflightReader,
    KubernetesActuator,
    kube_client,
    prometheus_pods_inflight,
    scrape_pods_inflight,
)
from scaler.actuators.local import LocalActuator
from scaler.config import ScalerConfig
from scaler.local import LocalSupervisor
from scaler.loop import Evaluation, Scaler
from scaler.sources import MetricSource, PrometheusSource, ScrapeSource

__all__ = ["kubernetes_actuator", "local_scaler", "metric_source", "scaler_for"]


def metric_source(
    config: ScalerConfig, *, targets: Callable[[], Iterable[str]] | None = None
) -> MetricSource:
    """Prometheus if ``prometheus.url`` is set, else a scrape of ``targets`` (or ``scrape_targets``)."""
    p = config.prometheus
    if p.url:
        return PrometheusSource(p.url, p.all_queries(), timeout_s=p.timeout_s)
    if targets is None:
        if not config.scrape_targets:
            raise ConfigError(
                "no metric source: give a Prometheus URL or the workers' /metrics URLs to scrape"
            )
        fixed = list(config.scrape_targets)
        targets = lambda: fixed  # noqa: E731 - a constant target list
    return ScrapeSource(targets)


def kubernetes_actuator(config: ScalerConfig, source: MetricSource) -> KubernetesActuator:
    """The Deployment's scale subresource; in-flight counts from Prometheus, else from the pods."""
    k = config.kubernetes
    if not k.deployment:
        raise ConfigError("no Deployment to scale: set kubernetes.deployment (--deployment)")
    inflight: InflightReader
    if isinstance(source, PrometheusSource):
        selector = config.prometheus.selector
        inflight = prometheus_pods_inflight(source, f"sum by (pod) (agentbus_inflight{{{selector}}})")
    else:
        inflight = scrape_pods_inflight(k.metrics_port)
    return KubernetesActuator(
        deployment=k.deployment,
        namespace=k.namespace,
        client=kube_client(kubeconfig=k.kubeconfig or None, namespace=k.namespace),
        inflight=inflight,
        min_replicas=config.policy.min_replicas,
        max_replicas=config.policy.max_replicas,
        require_deletion_cost=k.require_deletion_cost,
    )


def local_scaler(
    supervisor: LocalSupervisor,
    ports: Mapping[str, int],
    config: ScalerConfig,
    *,
    file_sd_path: str | os.PathLike[str] | None = None,
    registry: CollectorRegistry | None = None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
) -> Scaler:
    """A scaler resizing local worker processes (the embedded default of ``agentbus up``)."""
    actuator = LocalActuator(supervisor, ports, file_sd_path=file_sd_path)
    source = metric_source(config, targets=actuator.metrics_urls)
    return scaler_for(config, source, actuator, registry=registry, on_evaluation=on_evaluation)


def scaler_for(
    config: ScalerConfig,
    source: MetricSource,
    actuator: Actuator,
    *,
    registry: CollectorRegistry | None = None,
    on_evaluation: Callable[[Evaluation], None] | None = None,
) -> Scaler:
    """The control loop of ``config`` over ``source`` and ``actuator`` (any pool)."""
    return Scaler(
        config.policy,
        source,
        actuator,
        interval_s=config.interval_s,
        dry_run=config.dry_run,
        registry=registry,
        on_evaluation=on_evaluation,
    )
