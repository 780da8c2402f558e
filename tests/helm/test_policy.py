"""Must show 4: policy checks on the rendered output.

Every pod is restricted-PSS hardened with a read-only root filesystem, has requests and limits,
and has probes; the scaler's RBAC is exactly what the actuator calls; a worker's grace period
covers its whole drain; credentials stay in Secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._chart import RELEASE, Rendered

# Containers that have nothing to probe, and why.
NO_PROBES = {
    "locust-worker": "no port: a Locust worker whose master is gone exits by itself",
    "test": "a helm test Job: it runs once and its exit code is the verdict",
}
# The worker's shutdown after the drain: up to 5 s for cancelled handlers, 10 s for the NATS
# drain that flushes the last acks (agents/worker.py Worker.stop).
SHUTDOWN_AFTER_DRAIN_S = 15
# Verbs the scaler never needs: it patches an existing scale and annotates existing pods.
FORBIDDEN_VERBS = {"*", "create", "update", "delete", "deletecollection", "watch", "escalate", "bind"}


def pods(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(component, workload, pod spec) of every workload."""
    for obj in rendered.workloads():
        template = obj["spec"]["template"]
        yield template["metadata"]["labels"]["app.kubernetes.io/component"], obj, template["spec"]


def containers(rendered: Rendered) -> Iterator[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(component, workload/container, container, pod spec) of every container."""
    for component, obj, spec in pods(rendered):
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield component, f"{obj['metadata']['name']}/{c['name']}", c, spec


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_pod_meets_the_restricted_pod_security_standard(rendered: Rendered) -> None:
    for _, obj, spec in pods(rendered):
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, obj["metadata"]["name"]
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert psc.get("runAsUser", 1) != 0
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host_namespace), obj["metadata"]["name"]
        assert all("hostPath" not in v for v in spec.get("volumes", []))
    for _, where, c, _ in containers(rendered):
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc.get("privileged", False) is False, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where


def test_a_read_only_root_gets_a_writable_tmp(rendered: Rendered) -> None:
    for _, where, c, spec in containers(rendered):
        volumes = {v["name"]: v for v in spec["volumes"]}
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert len(tmp) == 1, where
        assert "emptyDir" in volumes[tmp[0]["name"]], where


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for _, where, c, _ in containers(rendered):
        resources = c.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
        assert "memory" in resources.get("limits", {}), where


def test_every_long_running_container_has_liveness_and_readiness_probes(rendered: Rendered) -> None:
    checked = 0
    for component, where, c, _ in containers(rendered):
        if component in NO_PROBES:
            continue
        assert "livenessProbe" in c, where
        assert "readinessProbe" in c, where
        checked += 1
    assert checked


def test_workers_probe_healthz_and_readyz_on_the_port_they_listen_on(rendered: Rendered) -> None:
    for component, where, c, _ in containers(rendered):
        if component != "agent":
            continue
        port = int(flag(c["args"], "--http-port"))
        assert flag(c["args"], "--http-host") == "0.0.0.0", where  # probes come from the kubelet
        assert [p["containerPort"] for p in c["ports"] if p["name"] == "http"] == [port]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_scalers_probe_healthz_and_readyz_on_their_own_named_port(full: Rendered) -> None:
    scalers = [(where, c, spec) for component, where, c, spec in containers(full) if component == "scaler"]
    assert len(scalers) == 2
    names = [p["name"] for _, c, _ in scalers for p in c["ports"]]
    assert len(names) == len(set(names)), names  # port names are unique within the pod
    for where, c, _ in scalers:
        port = int(flag(c["args"], "--http-port"))
        assert flag(c["args"], "--http-host") == "0.0.0.0", where  # probes come from the kubelet
        ((name, container_port),) = [(p["name"], p["containerPort"]) for p in c["ports"]]
        assert container_port == port, where
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": name}, where
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": name}, where
        assert "exec" not in c["livenessProbe"], where  # one handler per probe
        assert "exec" not in c["readinessProbe"], where


def test_the_grace_period_exceeds_the_drain_timeout(rendered: Rendered) -> None:
    agents = [(obj, spec) for component, obj, spec in pods(rendered) if component == "agent"]
    assert agents
    for obj, spec in agents:
        (worker,) = spec["containers"]
        drain_s = float(flag(worker["args"], "--drain-timeout-s"))
        grace_s = spec["terminationGracePeriodSeconds"]
        assert grace_s >= drain_s + SHUTDOWN_AFTER_DRAIN_S, obj["metadata"]["name"]
        # No preStop: workers pull from NATS, no Service routes traffic to them, so there is
        # nothing to wait out before SIGTERM, and a preStop would eat into the grace period.
        assert "lifecycle" not in worker


def test_a_kind_with_a_longer_drain_gets_a_longer_grace_period(full: Rendered) -> None:
    dep = full.one("Deployment", f"{RELEASE}-agentbus-agent-summarize")
    spec = dep["spec"]["template"]["spec"]
    assert flag(spec["containers"][0]["args"], "--drain-timeout-s") == "55"
    assert spec["terminationGracePeriodSeconds"] == 55 + 20


def test_only_the_scaler_gets_a_service_account_token(rendered: Rendered) -> None:
    for component, obj, spec in pods(rendered):
        if component == "scaler":
            assert spec["serviceAccountName"] == f"{RELEASE}-agentbus-scaler"
            assert spec["automountServiceAccountToken"] is True
        else:
            assert spec["automountServiceAccountToken"] is False, obj["metadata"]["name"]
            assert "serviceAccountName" not in spec


def test_scaler_rbac_grants_exactly_what_the_actuator_calls(full: Rendered) -> None:
    """scaler/actuators/kubernetes.py: get/patch deployments/scale, get deployments (the pod
    selector), list/patch pods (deletion cost); nothing cluster-wide, nothing else."""
    assert not full.of_kind("ClusterRole")
    assert not full.of_kind("ClusterRoleBinding")
    (role,) = full.of_kind("Role")
    autoscaled = sorted(f"{RELEASE}-agentbus-agent-{k}" for k in ("echo", "summarize"))
    rules = sorted(
        (
            tuple(r["apiGroups"]),
            tuple(r["resources"]),
            tuple(sorted(r["verbs"])),
            tuple(r.get("resourceNames", [])),
        )
        for r in role["rules"]
    )
    assert rules == sorted(
        [
            (("apps",), ("deployments/scale",), ("get", "patch"), tuple(autoscaled)),
            (("apps",), ("deployments",), ("get",), tuple(autoscaled)),
            (("",), ("pods",), ("list", "patch"), ()),
        ]
    )
    all_verbs = {v for r in role["rules"] for v in r["verbs"]}
    assert not all_verbs & FORBIDDEN_VERBS
    (binding,) = full.of_kind("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-agentbus-scaler", "namespace": "agents"}
    ]


def test_no_scaler_no_rbac(default: Rendered) -> None:
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert default.of_kind(kind) == []


def test_credentials_come_from_existing_secrets(full: Rendered) -> None:
    for component, where, c, _ in containers(full):
        env = {e["name"]: e for e in c.get("env", [])}
        if component == "scaler":  # talks to Prometheus and the Kubernetes API only
            assert "AGENTBUS_NATS_URL" not in env
            continue
        assert "value" not in env["AGENTBUS_NATS_URL"], where
        assert env["AGENTBUS_NATS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "agentbus-nats",
            "key": "url",
        }
        if "AGENTBUS_REDIS_URL" in env:
            assert env["AGENTBUS_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "agentbus-redis"
        assert not any("nats://" in a for a in c.get("args", [])), where  # never on a command line
    (config,) = [c for c in full.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-agents")]
    assert not any("URL" in key for key in config["data"])


def test_each_kind_has_a_disruption_budget_and_spreads_over_nodes_and_zones(rendered: Rendered) -> None:
    budgets = {p["metadata"]["name"]: p for p in rendered.of_kind("PodDisruptionBudget")}
    for component, obj, spec in pods(rendered):
        if component != "agent":
            continue
        selector = obj["spec"]["selector"]["matchLabels"]
        assert budgets[obj["metadata"]["name"]]["spec"]["selector"]["matchLabels"] == selector
        keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        assert all(c["labelSelector"]["matchLabels"] == selector for c in spec["topologySpreadConstraints"])


def test_config_changes_roll_the_workers(render: Callable[..., Rendered], default: Rendered) -> None:
    def checksum(r: Rendered) -> str:
        dep = r.of_kind("Deployment")[0]
        return str(dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum(render({"agents": {"ackWaitSeconds": 60}})) != checksum(default)


def test_network_policies_deny_by_default(full: Rendered) -> None:
    policies = {
        p["metadata"]["name"].removeprefix(f"{RELEASE}-agentbus-"): p for p in full.of_kind("NetworkPolicy")
    }
    assert set(policies) == {"agents", "scaler", "locust"}
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policies["scaler"]["spec"]  # nothing may connect to the scaler
    (worker_ingress,) = policies["agents"]["spec"]["ingress"]
    assert worker_ingress["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert worker_ingress["from"]  # only the monitoring namespace scrapes
    egress_ports = {p["port"] for rule in policies["agents"]["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 4222, 6379, 8000}  # DNS, NATS, Redis, the LLM of extraEgress


@pytest.mark.parametrize("component", ["agent", "scaler"])
def test_images_are_pinned_to_a_tag(full: Rendered, component: str) -> None:
    for comp, where, c, _ in containers(full):
        if comp == component:
            assert c["image"] == "registry.example.com/platform/agentbus:0.1.0", where


def test_platform_assigned_ids_leave_the_pods_hardened(render: Callable[..., Rendered]) -> None:
    """OpenShift's restricted SCC assigns UIDs itself: null ids drop out, non-root stays."""
    out = render({"securityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}})
    for _, _, spec in pods(out):
        psc = spec["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & set(psc)
        assert psc["runAsNonRoot"] is True
