"""The Kubernetes actuator: a Deployment's ``scale`` subresource, via lightkube.

Scale-down is safe in two ways. Just before shrinking, every pod of the Deployment
gets ``controller.kubernetes.io/pod-deletion-cost`` = its in-flight count (KEP-2255):
the ReplicaSet deletes the cheapest, so idle pods go first, which KEDA and the HPA
cannot do (kedacore/keda#3680, #6124). And the pods that go drain on SIGTERM. A pod
whose in-flight count is unknown is treated as busy.

The scale write carries the ``resourceVersion`` that was read, so a concurrent change
answers 409 and is re-read instead of overwritten. 404 and 403 fail at once with
errors that say what is missing; 409, 429, 5xx and transport errors are retried with
backoff. Error pages that are not a Kubernetes ``Status`` (a proxy's 502) are read too:
lightkube turns only ``application/json`` answers into ``ApiError``. The actuator refuses
a size outside ``[min_replicas, max_replicas]``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from agentbus.errors import (
    ActuatorError,
    ConfigError,
    ScaleConflictError,
    ScalePermissionError,
    ScaleTargetNotFoundError,
)
from scaler.actuators import ScaleResult
from scaler.sources.prometheus import PrometheusSource
from scaler.sources.scrape import fetch_samples, sample_sum

__all__ = [
    "DELETION_COST",
    "InflightReader",
    "KubernetesActuator",
    "PodRef",
    "kube_client",
    "prometheus_pods_inflight",
    "scrape_pods_inflight",
]

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
_UNKNOWN_COST = 1_000_000  # "not known to be idle": kept longer than any pod we know is busy
_RETRIED = {409, 429, 500, 502, 503, 504}
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod of the Deployment: its name and IP (None while unscheduled)."""

    name: str
    ip: str | None


InflightReader = Callable[[Sequence[PodRef]], Awaitable[Mapping[str, float]]]
"""Reads in-flight counts by pod name (missing pods count as unknown)."""


def scrape_pods_inflight(port: int, *, timeout_s: float = 1.0) -> InflightReader:
    """An :data:`InflightReader` that scrapes ``http://<pod IP>:<port>/metrics`` directly."""

    async def read(pods: Sequence[PodRef]) -> Mapping[str, float]:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            found = await asyncio.gather(
                *(fetch_samples(client, f"http://{p.ip}:{port}/metrics") for p in pods if p.ip)
            )
        named = [p.name for p in pods if p.ip]
        out = {n: sample_sum(s, "agentbus_inflight") for n, s in zip(named, found, strict=True) if s}
        return {n: v for n, v in out.items() if v is not None}

    return read


def prometheus_pods_inflight(
    source: PrometheusSource, query: str = 'sum by (pod) (agentbus_inflight{job="agentbus"})'
) -> InflightReader:
    """An :data:`InflightReader` that asks Prometheus (the ``pod`` label names the pod)."""

    async def read(pods: Sequence[PodRef]) -> Mapping[str, float]:
        return await source.by_label(query, "pod")

    return read


class KubernetesActuator:
    """Reads and patches ``deployments/<name>/scale`` in ``namespace``."""

    def __init__(
        self,
        *,
        deployment: str,
        namespace: str = "default",
        client: AsyncClient | None = None,
        inflight: InflightReader | None = None,
        min_replicas: int = 0,
        max_replicas: int = 1_000,
        retries: int = 3,  # a conflict or a 5xx rarely survives three re-reads
        retry_backoff_s: float = 0.2,  # doubled per retry: 0.2, 0.4, 0.8 s, well inside a loop period
        require_deletion_cost: bool = True,  # no shrink unless the idlest pods could be marked
    ) -> None:
        self.deployment = deployment
        self.namespace = namespace
        self._client = client or kube_client(namespace=namespace)
        self._inflight = inflight
        self._min, self._max = min_replicas, max_replicas
        self._retries = retries
        self._backoff_s = retry_backoff_s
        self._require_cost = require_deletion_cost
        self.target = f"deployment {namespace}/{deployment}"

    async def current(self) -> int:
        """``spec.replicas`` of the scale subresource."""
        return (await self._read_scale())[0]

    async def scale(self, replicas: int) -> ScaleResult:
        """Mark deletion costs if shrinking, then patch the scale subresource (optimistic concurrency)."""
        if not self._min <= replicas <= self._max:
            raise ActuatorError(
                f"refusing to scale {self.target} to {replicas}: outside [{self._min}, {self._max}]",
                target=self.target,
            )
        before, version = await self._read_scale()
        costs: dict[str, float] = {}
        victims: tuple[str, ...] = ()
        if replicas < before:
            costs = await self._mark_idlest()
            victims = tuple(sorted(costs, key=lambda n: costs[n])[: before - replicas])
        patch: dict[str, Any] = {"spec": {"replicas": replicas}}
        for attempt in range(self._retries + 1):
            patch["metadata"] = {"resourceVersion": version} if version else {}
            try:
                await self._client.patch(
                    Deployment.Scale,
                    self.deployment,
                    patch,
                    namespace=self.namespace,
                    patch_type=PatchType.MERGE,
                )
                return ScaleResult(before, replicas, victims, costs)
            except httpx2.HTTPStatusError as exc:  # lightkube's ApiError, or a non-JSON error page
                if _code(exc) not in _RETRIED or attempt == self._retries:
                    raise self._error(exc, "patch", "deployments/scale") from exc
                conflict = _code(exc) == 409
            except httpx2.TransportError as exc:
                if attempt == self._retries:
                    raise ActuatorError(f"Kubernetes API unreachable: {exc!r}", target=self.target) from exc
                conflict = False
            await asyncio.sleep(self._backoff_s * 2**attempt)
            if conflict:  # someone else changed it: write on top of what is there now
                _, version = await self._read_scale()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_scale(self) -> tuple[int, str | None]:
        scale = await self._retry(
            lambda: self._client.get(Deployment.Scale, self.deployment, namespace=self.namespace),
            "get",
            "deployments/scale",
        )
        replicas = scale.spec.replicas if scale.spec is not None and scale.spec.replicas is not None else 0
        version = scale.metadata.resourceVersion if scale.metadata is not None else None
        return replicas, version

    async def _mark_idlest(self) -> dict[str, float]:
        """Set every pod's deletion cost from its in-flight count; return the counts read."""
        dep = await self._retry(
            lambda: self._client.get(Deployment, self.deployment, namespace=self.namespace),
            "get",
            "deployments",
        )
        labels = dict((dep.spec.selector.matchLabels or {}) if dep.spec is not None else {})
        pods = [
            p
            async for p in self._client.list(Pod, namespace=self.namespace, labels=labels)
            if p.metadata is not None
            and p.metadata.deletionTimestamp is None
            and all((p.metadata.labels or {}).get(k) == v for k, v in labels.items())
        ]
        refs = [
            PodRef(p.metadata.name or "", p.status.podIP if p.status else None) for p in pods if p.metadata
        ]
        known: Mapping[str, float] = {}
        if self._inflight is not None:
            try:
                known = await self._inflight(refs)
            except Exception as exc:  # a failed read leaves every pod "unknown", i.e. busy
                known = {}
                if self._require_cost:
                    raise ActuatorError(f"cannot read in-flight counts: {exc!r}", target=self.target) from exc
        counts = {r.name: known.get(r.name, math.inf) for r in refs}
        for pod in pods:
            assert pod.metadata is not None
            name = pod.metadata.name or ""
            cost = str(_UNKNOWN_COST if math.isinf(counts[name]) else round(counts[name]))
            if (pod.metadata.annotations or {}).get(DELETION_COST) == cost:
                continue
            try:
                await self._retry(self._cost_patcher(name, cost), "patch", "pods")
            except ActuatorError:
                if self._require_cost:
                    raise
        return counts

    def _cost_patcher(self, name: str, cost: str) -> Callable[[], Awaitable[Pod]]:
        body = {"metadata": {"annotations": {DELETION_COST: cost}}}
        return lambda: self._client.patch(
            Pod, name, body, namespace=self.namespace, patch_type=PatchType.MERGE
        )

    async def _retry(self, call: Callable[[], Awaitable[T]], verb: str, resource: str) -> T:
        for attempt in range(self._retries + 1):
            try:
                return await call()
            except httpx2.HTTPStatusError as exc:
                if _code(exc) not in _RETRIED or attempt == self._retries:
                    raise self._error(exc, verb, resource) from exc
            except httpx2.TransportError as exc:
                if attempt == self._retries:
                    raise ActuatorError(f"Kubernetes API unreachable: {exc!r}", target=self.target) from exc
            await asyncio.sleep(self._backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, exc: httpx2.HTTPStatusError, verb: str, resource: str) -> ActuatorError:
        code, msg, t = _code(exc), _message(exc), self.target
        if code == 404:
            return ScaleTargetNotFoundError(f"{t} not found ({verb} {resource}): {msg}", target=t, status=404)
        if code == 403:
            return ScalePermissionError(
                f"forbidden: the scaler's service account needs RBAC '{verb}' on '{resource}' in "
                f"namespace {self.namespace}: {msg}",
                target=t,
                status=403,
            )
        if code == 409:
            return ScaleConflictError(
                f"{t} kept changing ({self._retries + 1} conflicts on {verb} {resource})",
                target=t,
                status=409,
            )
        return ActuatorError(
            f"{verb} {resource} of {t} failed with HTTP {code}: {msg}", target=t, status=code
        )

    async def aclose(self) -> None:
        """Close the API client."""
        await self._client.close()


def _code(exc: httpx2.HTTPStatusError) -> int:
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.code:
        return int(exc.status.code)
    return exc.response.status_code


def _message(exc: httpx2.HTTPStatusError) -> str:
    """The Status message of the API server, else the start of whatever body came back."""
    if isinstance(exc, ApiError) and exc.status is not None and exc.status.message:
        return exc.status.message
    try:
        return str(exc.response.json().get("message", ""))[:300]
    except ValueError:
        return exc.response.text[:300]


def kube_client(*, kubeconfig: str | None = None, namespace: str | None = None) -> AsyncClient:
    """A lightkube client: in-cluster service account, else ``kubeconfig``/``$KUBECONFIG``/~/.kube/config."""
    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    except (LightkubeConfigError, OSError, ValueError, KeyError) as exc:
        where = kubeconfig or "the service account, $KUBECONFIG or ~/.kube/config"
        raise ConfigError(f"no usable Kubernetes configuration in {where}: {exc}") from exc
    return AsyncClient(config=config, namespace=namespace)
