"""The Kubernetes actuator against kmock: a fake Kubernetes API served over real HTTP on loopback.

lightkube talks HTTP to kmock exactly as it would to a kube-apiserver. kmock does not
emulate ``/scale``, so a reaction serves it from its own state, with scripted
failures (404/409/403/503). The pods' in-flight counts come from real ``/metrics``
endpoints: each fake pod's IP is its own loopback address (127.0.0.2, .3, ...)
and the product's ``scrape_pods_inflight`` reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock as km
import pytest
from lightkube import AsyncClient, KubeConfig

from agentbus.errors import (
    ActuatorError,
    ConfigError,
    ScaleConflictError,
    ScalePermissionError,
    ScaleTargetNotFoundError,
)
from bus.embedded import free_port
from scaler.actuators.kubernetes import DELETION_COST, KubernetesActuator, kube_client, scrape_pods_inflight
from scaler.loop import Scaler
from scaler.policy import Reason
from scaler.sources import MemorySource
from scaler.spec import MetricKind, MetricTarget, PolicySpec

pytestmark = pytest.mark.integration

DEPLOYMENTS = "apps/v1/deployments"
PODS = "v1/pods"
NS = "agents"
INFLIGHT = {"agents-a": 5, "agents-b": 0}  # agents-c serves no metrics: unknown, so "busy"
IPS = {"agents-a": "127.0.0.2", "agents-b": "127.0.0.3", "agents-c": "127.0.0.4"}


class FakeScale:
    """The ``deployments/<name>/scale`` subresource: state, a request log, scripted failures."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas
        self.version = 1
        self.fail: dict[str, list[int]] = {"GET": [], "PATCH": []}
        self.patches: list[dict[str, Any]] = []
        self.log: list[str] = []

    def __call__(self, req: Any) -> dict[str, Any]:
        method = req.method.value
        self.log.append(f"{method} scale")
        if self.fail.get(method):
            _refuse(self.fail[method].pop(0), f"scripted {method} failure")
        if method == "PATCH":
            self.patches.append(req.data)
            sent = req.data.get("metadata", {}).get("resourceVersion")
            if sent is not None and sent != str(self.version):
                _refuse(409, "the object has been modified; please apply your changes to the latest version")
            self.replicas = req.data["spec"]["replicas"]
            self.version += 1
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": req.name, "namespace": req.namespace, "resourceVersion": str(self.version)},
            "spec": {"replicas": self.replicas},
            "status": {"replicas": self.replicas},
        }


def _refuse(code: int, message: str) -> None:
    raise km.KubernetesError(status=code, reason=str(code), message=message)


def _pod(name: str, *, labels: dict[str, str], ip: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels, **meta},
        "status": {"podIP": ip, "phase": "Running"},
    }


@pytest.fixture
def cluster(kmock: km.KubernetesEmulator) -> tuple[km.KubernetesEmulator, FakeScale]:
    """A Deployment ``agents`` (3 replicas), its 3 pods, an unrelated pod and a terminating one."""
    kmock.objects[DEPLOYMENTS, NS, "agents"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agents", "namespace": NS},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "agents"}},
            "template": {
                "metadata": {"labels": {"app": "agents"}},
                "spec": {"containers": [{"name": "worker", "image": "agentbus:test"}]},
            },
        },
    }
    for name, ip in IPS.items():
        kmock.objects[PODS, NS, name] = _pod(name, labels={"app": "agents"}, ip=ip)
    kmock.objects[PODS, NS, "other"] = _pod("other", labels={"app": "other"}, ip="127.0.0.5")
    kmock.objects[PODS, NS, "agents-old"] = _pod(
        "agents-old", labels={"app": "agents"}, ip="127.0.0.6", deletionTimestamp="2024-01-01T00:00:00Z"
    )
    scale = FakeScale(3)
    kmock[km.subresource("scale")] << scale
    return kmock, scale


@pytest.fixture
async def metrics_port() -> AsyncIterator[int]:
    """``/metrics`` of pods a and b, each on its own loopback IP, all on one port (as in a cluster)."""
    port = free_port()
    servers = []
    for name, count in INFLIGHT.items():

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int = count) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = f'agentbus_inflight{{kind="echo"}} {n}\n'.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            )
            await writer.drain()
            writer.close()

        servers.append(await asyncio.start_server(serve, IPS[name], port))
    yield port
    for server in servers:
        server.close()
        await server.wait_closed()


def client_for(kmock: km.KubernetesEmulator) -> AsyncClient:
    """lightkube pointed at kmock with a dummy token user (as a kubeconfig would)."""
    config = KubeConfig.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": str(kmock.url).rstrip("/")}}],
            "users": [{"name": "scaler", "user": {"token": "dummy"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "scaler", "namespace": NS}}],
            "current-context": "fake",
        }
    )
    return AsyncClient(config=config, namespace=NS)


def actuator(kmock: km.KubernetesEmulator, port: int = 1, **kw: Any) -> KubernetesActuator:
    kw.setdefault("retry_backoff_s", 0.01)
    return KubernetesActuator(
        deployment=kw.pop("deployment", "agents"),
        namespace=NS,
        client=client_for(kmock),
        inflight=scrape_pods_inflight(port),
        **kw,
    )


def costs(kmock: km.KubernetesEmulator) -> dict[str, str | None]:
    return {
        name: (kmock.objects[PODS, NS, name].get("metadata", {}).get("annotations") or {}).get(DELETION_COST)
        for name in (*IPS, "other", "agents-old")
    }


async def test_reads_and_patches_the_scale_subresource(
    cluster: tuple[km.KubernetesEmulator, FakeScale],
) -> None:
    kmock, scale = cluster
    act = actuator(kmock)
    try:
        assert await act.current() == 3
        result = await act.scale(5)
    finally:
        await act.aclose()
    assert (result.before, result.after, scale.replicas) == (3, 5, 5)
    assert scale.patches == [{"spec": {"replicas": 5}, "metadata": {"resourceVersion": "1"}}]
    assert set(costs(kmock).values()) == {None}  # growing marks nothing


async def test_scale_down_marks_the_idlest_pods_before_shrinking(
    cluster: tuple[km.KubernetesEmulator, FakeScale], metrics_port: int
) -> None:
    kmock, scale = cluster
    act = actuator(kmock, metrics_port)
    try:
        result = await act.scale(1)
    finally:
        await act.aclose()
    assert scale.replicas == 1
    assert costs(kmock) == {
        "agents-a": "5",
        "agents-b": "0",  # idle: the ReplicaSet deletes it first
        "agents-c": "1000000",  # no metrics: not known to be idle, kept
        "other": None,  # not selected by the Deployment
        "agents-old": None,  # already terminating
    }
    assert result.retired == ("agents-b", "agents-a")
    patch_order = [
        f"{r.method.value} {r.resource.plural if r.resource else r.url}{'/' + r.name if r.name else ''}"
        for r in kmock
        if r.method.value == "PATCH"
    ]
    assert patch_order[-1].startswith("PATCH deployments"), patch_order  # costs first, then the shrink
    assert len(patch_order) == 4


async def test_bounds_are_never_crossed(cluster: tuple[km.KubernetesEmulator, FakeScale]) -> None:
    kmock, scale = cluster
    act = actuator(kmock, min_replicas=1, max_replicas=4)
    try:
        for bad in (0, 5, 100):
            with pytest.raises(ActuatorError, match="outside"):
                await act.scale(bad)
        assert scale.patches == []
        # The loop under absurd load: never above max; and a Deployment set above max comes back down.
        spec = PolicySpec(
            metrics=(MetricTarget(name="queue_depth", target=1, kind=MetricKind.TOTAL),),
            min_replicas=1,
            max_replicas=4,
        )
        loop = Scaler(spec, MemorySource({"queue_depth": 1e9}), act, interval_s=0.01)
        for _ in range(5):
            ev = await loop.evaluate()
            assert 1 <= ev.decision.desired <= 4
        assert scale.replicas == 4
        scale.replicas = 9  # someone edited the Deployment by hand
        ev = await loop.evaluate()
        assert (ev.decision.reason, scale.replicas) == (Reason.ENFORCE_MAX, 4)
    finally:
        await act.aclose()


async def test_404_is_a_clear_error_and_not_retried(cluster: tuple[km.KubernetesEmulator, FakeScale]) -> None:
    kmock, scale = cluster
    scale.fail["GET"] = [404]
    act = actuator(kmock)
    try:
        with pytest.raises(ScaleTargetNotFoundError, match=f"deployment {NS}/agents not found") as err:
            await act.current()
    finally:
        await act.aclose()
    assert err.value.status == 404
    assert scale.log == ["GET scale"]


async def test_403_names_the_missing_rbac_rule_and_changes_nothing(
    cluster: tuple[km.KubernetesEmulator, FakeScale], metrics_port: int
) -> None:
    kmock, scale = cluster
    scale.fail["PATCH"] = [403]
    act = actuator(kmock, metrics_port)
    try:
        with pytest.raises(ScalePermissionError, match=f"'patch' on 'deployments/scale' in namespace {NS}"):
            await act.scale(4)
        assert scale.replicas == 3

        def forbid() -> None:
            _refuse(403, 'pods "agents-a" is forbidden: User cannot patch resource "pods"')

        kmock[km.resource(PODS), km.method("PATCH")] << forbid
        with pytest.raises(ScalePermissionError, match="'patch' on 'pods'"):
            await act.scale(1)
        assert scale.replicas == 3  # no shrink without marking the idlest pods first
        assert [p for p in scale.log if p.startswith("PATCH")] == ["PATCH scale"]  # only the 403 above
    finally:
        await act.aclose()


async def test_409_conflicts_are_re_read_and_retried(
    cluster: tuple[km.KubernetesEmulator, FakeScale],
) -> None:
    kmock, scale = cluster
    act = actuator(kmock)
    try:
        scale.fail["PATCH"] = [409, 409]
        result = await act.scale(4)
        assert (result.after, scale.replicas) == (4, 4)
        assert scale.log == [
            "GET scale",
            "PATCH scale",
            "GET scale",
            "PATCH scale",
            "GET scale",
            "PATCH scale",
        ]

        scale.version += 10  # every write below carries a stale version: a real 409 each time
        original = act._read_scale

        async def stale() -> tuple[int, str | None]:
            replicas, _ = await original()
            return replicas, "1"

        act._read_scale = stale  # type: ignore[method-assign]
        with pytest.raises(ScaleConflictError, match="kept changing") as err:
            await act.scale(2)
        assert err.value.status == 409
        assert scale.replicas == 4
    finally:
        await act.aclose()


async def test_transient_5xx_is_retried(cluster: tuple[km.KubernetesEmulator, FakeScale]) -> None:
    kmock, scale = cluster
    scale.fail["GET"] = [503, 503]
    act = actuator(kmock)
    try:
        assert await act.current() == 3
    finally:
        await act.aclose()
    assert scale.log == ["GET scale"] * 3


async def test_the_loop_holds_and_keeps_going_when_the_api_refuses(
    cluster: tuple[km.KubernetesEmulator, FakeScale],
) -> None:
    kmock, scale = cluster
    act = actuator(kmock, min_replicas=1, max_replicas=10)
    spec = PolicySpec(
        metrics=(MetricTarget(name="queue_depth", target=10, kind=MetricKind.TOTAL),), max_replicas=10
    )
    loop = Scaler(spec, MemorySource({"queue_depth": 100.0}), act, interval_s=0.01)
    try:
        scale.fail["PATCH"] = [403]
        ev = await loop.evaluate()
        assert ev.decision.desired == 7  # 3 + 4
        assert "forbidden" in ev.error
        assert scale.replicas == 3
        scale.fail["GET"] = [404]
        ev = await loop.evaluate()
        assert ev.decision.reason is Reason.ACTUATOR_ERROR
        assert "not found" in ev.error
        ev = await loop.evaluate()  # the API is fine again
        assert (ev.action is not None, scale.replicas) == (True, 7)
    finally:
        await act.aclose()


def test_a_missing_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no usable Kubernetes configuration"):
        kube_client(kubeconfig=str(tmp_path / "missing"))
