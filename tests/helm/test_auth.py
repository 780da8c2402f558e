"""Issue 18 on Kubernetes: the chart's auth wiring, its NetworkPolicies and the scaler's
ValidatingAdmissionPolicy.

The policy's CEL is evaluated here by cel-python (a CEL implementation independent of the API
server's cel-go) against pod updates the scaler may and may not make; kubernetes-validate
checks the objects' schema for every version that has them (test_manifests_validate.py).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import celpy
import helm_python as helm
import pytest
import yaml
from celpy import celtypes
from celpy.adapter import json_to_cel

from ._chart import CHART, NAMESPACE, RELEASE, Rendered, all_features_values
from .test_manifests_validate import VERSIONS, problems

AUTH = {"auth": {"enabled": True, "workerSecret": "ab-worker", "tenantSecret": "ab-tenant"}}
AUTH_VALUES = CHART / "ci" / "auth-values.yaml"
SCALER = {"scaler": {"enabled": True}}
COST = "controller.kubernetes.io/pod-deletion-cost"


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def test_auth_gives_workers_their_seed_the_cluster_key_and_tenant_replies(
    render: Callable[..., Rendered],
) -> None:
    values = all_features_values() | AUTH
    del values["nats"]["credentials"]
    out = render(values)
    for dep in (d for d in out.of_kind("Deployment") if "agentbus.io/kind" in d["metadata"]["labels"]):
        spec = pod_spec(dep)
        env = env_of(spec["containers"][0])
        assert env["AGENTBUS_NATS_NKEY_SEED"] == "/etc/agentbus/auth/worker.nk"
        assert env["AGENTBUS_CLUSTER_KEY_FILE"] == "/etc/agentbus/auth/cluster.key"
        assert env["AGENTBUS_REPLY_PREFIXES"] == "_INBOX_{tenant}."
        (volume,) = [v for v in spec["volumes"] if v["name"] == "nats-auth"]
        assert volume["secret"]["secretName"] == "ab-worker"
        assert [i["key"] for i in volume["secret"]["items"]] == ["worker.nk", "cluster.key"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "nats-auth"]
        assert mount["readOnly"] is True
    tenant = values["tests"].get("tenant", "helm-test")
    for name in ("Job", "locust-worker"):
        obj = out.of_kind("Job")[0] if name == "Job" else out.one("Deployment", f"{RELEASE}-agentbus-{name}")
        spec = pod_spec(obj)
        env = env_of(spec["containers"][0])
        assert env["AGENTBUS_NATS_NKEY_SEED"] == f"/etc/agentbus/auth/{tenant}.nk"
        assert env["AGENTBUS_NATS_INBOX_PREFIX"] == f"_INBOX_{tenant}"
        assert "AGENTBUS_CLUSTER_KEY_FILE" not in env  # only workers gossip
        (volume,) = [v for v in spec["volumes"] if v["name"] == "nats-auth"]
        assert volume["secret"]["secretName"] == "ab-tenant"
        assert [i["key"] for i in volume["secret"]["items"]] == [f"{tenant}.nk"]
    master = pod_spec(out.one("Deployment", f"{RELEASE}-agentbus-locust-master"))
    assert "AGENTBUS_NATS_NKEY_SEED" not in env_of(master["containers"][0])  # it publishes nothing
    (locust_conf,) = [c for c in out.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-locust")]
    assert f"tenant = {tenant}\n" in locust_conf["data"]["locust.conf"]
    for obj in out.objects:
        if obj["kind"] not in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            assert problems(obj, VERSIONS[0]) == [], obj["metadata"]["name"]
    assert "Tenant isolation is on" in out.notes
    assert "--tenant acme --wait --nats-url" in out.notes
    off = render({})
    assert "Tenant isolation on the bus is off" in off.notes
    (worker,) = off.of_kind("Deployment")
    assert "AGENTBUS_REPLY_PREFIXES" not in env_of(pod_spec(worker)["containers"][0])
    assert all(v["name"] != "nats-auth" for v in pod_spec(worker)["volumes"])


def test_auth_and_a_creds_file_are_refused_together(render: Callable[..., Rendered]) -> None:
    with pytest.raises(helm.HelmError, match="not both"):
        render(AUTH | {"nats": {"credentials": {"secretName": "creds"}}})


def test_network_policy_is_on_and_opens_metrics_to_the_monitoring_namespace_only(
    default: Rendered, render: Callable[..., Rendered]
) -> None:
    (policy,) = default.of_kind("NetworkPolicy")
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    out = render({"networkPolicy": {"monitoringNamespace": "observability"}})
    (ingress,) = out.of_kind("NetworkPolicy")[0]["spec"]["ingress"]
    assert (
        ingress["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        == "observability"
    )
    assert render({"networkPolicy": {"enabled": False}}).of_kind("NetworkPolicy") == []


def test_the_scaler_reaches_only_dns_prometheus_and_the_api_server(render: Callable[..., Rendered]) -> None:
    out = render(SCALER | {"networkPolicy": {"kubeApiCidrs": ["10.0.0.1/32"]}})
    scaler = out.one("NetworkPolicy", f"{RELEASE}-agentbus-scaler")
    assert "ingress" not in scaler["spec"]
    assert scaler["spec"]["policyTypes"] == ["Ingress", "Egress"]
    dns, prometheus, api = scaler["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    assert "to" not in dns
    assert prometheus["ports"] == [{"protocol": "TCP", "port": 9090}]
    assert prometheus["to"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    for version in (VERSIONS[0], VERSIONS[-1]):
        assert problems(scaler, version) == []


# --- the ValidatingAdmissionPolicy -----------------------------------------------------------


def policy(rendered: Rendered) -> dict[str, Any]:
    (vap,) = rendered.of_kind("ValidatingAdmissionPolicy")
    return vap


def test_the_policy_binds_to_the_release_namespace(render: Callable[..., Rendered]) -> None:
    out = render(SCALER)
    vap = policy(out)
    (binding,) = out.of_kind("ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": NAMESPACE
    }
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert vap["spec"]["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["pods"]}
    ]
    for version in VERSIONS:
        if int(version.split(".")[1]) >= 30:
            assert problems(vap, version) == [], version
            assert problems(binding, version) == [], version
    assert (
        render({"scaler": {"enabled": True, "admissionPolicy": {"enabled": False}}}).of_kind(
            "ValidatingAdmissionPolicy"
        )
        == []
    )
    assert render({}).of_kind("ValidatingAdmissionPolicy") == []  # no scaler, nothing to police


@pytest.mark.parametrize(("kube_version", "renders"), [("v1.29.0", False), ("v1.30.0", True)])
def test_the_policy_needs_kubernetes_1_30(
    kube_version: str, renders: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    """Lint renders for a given Kubernetes version (render() cannot): with ``required`` the chart
    calls ``fail`` where the policy would be left out. Lint mode only logs a ``fail`` (Helm's
    library, on stderr), so the log says which versions the policy is left out for."""
    values = {"scaler": {"enabled": True, "admissionPolicy": {"required": True}}}
    capfd.readouterr()
    helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
    failed = "has no ValidatingAdmissionPolicy" in capfd.readouterr().err
    assert failed is not renders


class Policy:
    """The rendered policy's CEL, evaluated like the API server does for one request."""

    def __init__(self, vap: dict[str, Any]) -> None:
        env = celpy.Environment()
        spec = vap["spec"]
        self.conditions = [env.program(env.compile(c["expression"])) for c in spec["matchConditions"]]
        self.variables = [(v["name"], env.program(env.compile(v["expression"]))) for v in spec["variables"]]
        self.validations = [
            (v["message"], env.program(env.compile(v["expression"]))) for v in spec["validations"]
        ]

    def denials(self, user: str, old: dict[str, Any], new: dict[str, Any]) -> list[str] | None:
        """Messages of the failed validations; None when the policy does not apply to ``user``."""
        activation: dict[str, Any] = {
            "object": json_to_cel(new),
            "oldObject": json_to_cel(old),
            "request": json_to_cel({"userInfo": {"username": user}}),
        }
        if not all(bool(c.evaluate(activation)) for c in self.conditions):
            return None
        variables = celtypes.MapType()
        activation["variables"] = variables
        for name, program in self.variables:
            variables[celtypes.StringType(name)] = program.evaluate(activation)
        return [message for message, program in self.validations if not bool(program.evaluate(activation))]


SCALER_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-agentbus-scaler"
WORKER_POD: dict[str, Any] = {
    "metadata": {
        "name": "ab-agentbus-agent-echo-7d9f-x2x",
        "labels": {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/component": "agent"},
        "annotations": {"checksum/config": "abc"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "ab-agentbus-agent-echo-7d9f"}],
    },
    "spec": {"containers": [{"name": "worker", "image": "agentbus:0.1.0"}]},
}


def changed(pod: dict[str, Any], edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    new = copy.deepcopy(pod)
    edit(new)
    return new


@pytest.fixture(scope="module")
def scaler_policy(render: Callable[..., Rendered]) -> Policy:
    return Policy(policy(render(SCALER)))


def test_the_scaler_may_set_and_clear_the_deletion_cost_of_its_workers(scaler_policy: Policy) -> None:
    with_cost = changed(WORKER_POD, lambda p: p["metadata"]["annotations"].update({COST: "-3"}))
    assert scaler_policy.denials(SCALER_USER, WORKER_POD, with_cost) == []
    raised = changed(with_cost, lambda p: p["metadata"]["annotations"].update({COST: "12"}))
    assert scaler_policy.denials(SCALER_USER, with_cost, raised) == []
    assert scaler_policy.denials(SCALER_USER, with_cost, WORKER_POD) == []  # removed again
    bare = changed(WORKER_POD, lambda p: p["metadata"].pop("annotations"))
    assert scaler_policy.denials(SCALER_USER, bare, changed(bare, lambda p: p["metadata"].update(
        annotations={COST: "1"}))) == []  # fmt: skip


def _edits() -> dict[str, Callable[[dict[str, Any]], object]]:
    meta: Callable[[dict[str, Any]], dict[str, Any]] = lambda p: p["metadata"]  # noqa: E731
    return {
        "another release": lambda p: meta(p)["labels"].update({"app.kubernetes.io/instance": "other"}),
        "not a worker": lambda p: meta(p)["labels"].update({"app.kubernetes.io/component": "scaler"}),
        "another annotation": lambda p: meta(p)["annotations"].update({"x": "1", COST: "1"}),
        "an annotation changed": lambda p: meta(p)["annotations"].update({"checksum/config": "evil"}),
        "an annotation removed": lambda p: meta(p).pop("annotations"),
        "a label added": lambda p: meta(p)["labels"].update({"app": "frontend", COST: "1"}),
        "a non-integer cost": lambda p: meta(p)["annotations"].update({COST: "1e9"}),
        "the image": lambda p: p["spec"]["containers"][0].update({"image": "evil:latest"}),
        "a finalizer": lambda p: meta(p).update({"finalizers": ["example.com/hold"]}),
        "the owner": lambda p: meta(p).update({"ownerReferences": []}),
    }


@pytest.mark.parametrize("what", list(_edits()))
def test_the_scaler_may_change_nothing_else(scaler_policy: Policy, what: str) -> None:
    edit = _edits()[what]
    if what in ("another release", "not a worker"):  # the pod is not one of ours to begin with
        old = changed(WORKER_POD, edit)
        new = changed(old, lambda p: p["metadata"]["annotations"].update({COST: "1"}))
    else:
        old, new = WORKER_POD, changed(WORKER_POD, edit)
    denied = scaler_policy.denials(SCALER_USER, old, new)
    assert denied, f"{what}: allowed"


def test_the_policy_applies_to_the_scaler_only(scaler_policy: Policy) -> None:
    evil = changed(WORKER_POD, lambda p: p["spec"]["containers"][0].update({"image": "x"}))
    assert scaler_policy.denials("system:serviceaccount:agents:deployer", WORKER_POD, evil) is None
    assert scaler_policy.denials("system:serviceaccount:other:ab-agentbus-scaler", WORKER_POD, evil) is None
    assert scaler_policy.denials(SCALER_USER, WORKER_POD, evil)


@pytest.mark.parametrize("kube_version", ["v1.30.0", "v1.37.0"])
def test_the_auth_values_file_lints_and_validates(render: Callable[..., Rendered], kube_version: str) -> None:
    values = yaml.safe_load(AUTH_VALUES.read_text())
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
    assert report["messages"] == []
    assert report["errors"] == []
    out = render(values)
    assert out.of_kind("ValidatingAdmissionPolicy")
    version = kube_version.removeprefix("v")
    assert {f"{o['kind']}/{o['metadata']['name']}": problems(o, version) for o in out.objects} == {
        f"{o['kind']}/{o['metadata']['name']}": [] for o in out.objects
    }
    workers = [d for d in out.of_kind("Deployment") if "agentbus.io/kind" in d["metadata"]["labels"]]
    assert all(env_of(pod_spec(d)["containers"][0])["AGENTBUS_NATS_NKEY_SEED"] for d in workers)
