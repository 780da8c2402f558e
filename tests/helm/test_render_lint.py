"""Must show 1: the chart renders for the default and the all-features values; lint --strict is silent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import helm_python as helm
import pytest

from ._chart import CHART, NAMESPACE, RELEASE, Rendered, all_features_values

KUBE_VERSIONS = [f"v1.{minor}.0" for minor in range(29, 38)]


def test_default_values_render_one_echo_deployment_and_its_companions(default: Rendered) -> None:
    kinds = Counter(o["kind"] for o in default.objects)
    assert kinds == {
        "ConfigMap": 1,  # the workers' AGENTBUS_* settings
        "Deployment": 1,  # echo
        "PodDisruptionBudget": 1,
        "Service": 1,  # metrics
        "NetworkPolicy": 1,  # agents: on by default
        "Job": 1,  # helm test
    }
    dep = default.one("Deployment", f"{RELEASE}-agentbus-agent-echo")
    assert dep["spec"]["replicas"] == 2
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in default.objects)


def test_all_features_render_every_component(full: Rendered) -> None:
    kinds = Counter(o["kind"] for o in full.objects)
    assert kinds == {
        "ConfigMap": 3,  # agents, scaler, locust
        "Deployment": 3 + 1 + 2,  # 3 kinds, the scaler, locust master and workers
        "PodDisruptionBudget": 3,
        "Service": 2,  # metrics, locust
        "ServiceAccount": 1,
        "Role": 1,
        "RoleBinding": 1,
        "ServiceMonitor": 1,
        "PrometheusRule": 1,
        "NetworkPolicy": 3,  # agents, scaler, locust
        "ValidatingAdmissionPolicy": 1,  # the scaler's pod patches (rendered for Kubernetes 1.36)
        "ValidatingAdmissionPolicyBinding": 1,
        "Job": 1,
    }
    scaler = full.one("Deployment", f"{RELEASE}-agentbus-scaler")
    containers = scaler["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["scale-echo", "scale-summarize"]  # assistant is fixed-size


def test_autoscaled_kinds_leave_replicas_to_the_scaler(full: Rendered) -> None:
    """An upgrade must not reset what the scaler chose: no spec.replicas on autoscaled kinds."""
    deps = {d["metadata"]["labels"].get("agentbus.io/kind"): d for d in full.of_kind("Deployment")}
    assert "replicas" not in deps["echo"]["spec"]
    assert "replicas" not in deps["summarize"]["spec"]
    assert deps["assistant"]["spec"]["replicas"] == 2


def test_pod_monitor_replaces_the_service_monitor(render: Callable[..., Rendered]) -> None:
    out = render({"metrics": {"podMonitor": {"enabled": True}}})
    assert [o["kind"] for o in out.objects if o["apiVersion"].startswith("monitoring.coreos.com")] == [
        "PodMonitor"
    ]


def test_helm_test_hook_publishes_and_waits(rendered: Rendered) -> None:
    (job,) = rendered.of_kind("Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:2] == ["publish", "echo"]
    assert {"--wait", "--tenant", "--timeout-s"} <= set(args)
    assert job["spec"]["backoffLimit"] == 0


@pytest.mark.parametrize("kube_version", [KUBE_VERSIONS[0], KUBE_VERSIONS[-1]])
@pytest.mark.parametrize("values", ["default", "all-features"])
def test_lint_strict_reports_nothing(kube_version: str, values: str) -> None:
    report = helm.lint(
        CHART,
        all_features_values() if values == "all-features" else None,
        strict=True,
        namespace=NAMESPACE,
        kube_version=kube_version,
    )
    assert report["total_charts_linted"] == 1
    assert report["messages"] == []
    assert report["errors"] == []


def test_every_values_key_has_a_comment() -> None:
    """traefik's convention: a comment line right above every key of values.yaml.

    Only the quantities inside resources blocks (cpu, memory) speak for themselves.
    """
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for n, line in enumerate(lines):
        text = line.strip()
        if not text or text.startswith("#") or (text.startswith("- ") and ":" not in text):
            continue  # blank, comment, or an item of a list of scalars
        key = text.removeprefix("- ").split(":", 1)[0]
        if key in ("cpu", "memory"):
            continue
        if not lines[n - 1].strip().startswith("#"):
            missing.append(f"values.yaml:{n + 1}: {text}")
    assert missing == []
