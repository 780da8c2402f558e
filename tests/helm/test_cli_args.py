"""Must show 5: the command lines in the chart are the ones the CLI accepts.

The rendered args go through the real parser (``agentbus.cli.build_parser``) and on into the
same ``config_from_args`` the commands run, with the container's environment (ConfigMap and
env entries) in place; a subprocess ``--help`` smoke checks the installed console script too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentbus.cli import build_parser
from agentbus.cli import scaler as scaler_cli
from agentbus.cli import worker as worker_cli
from agents.config import NATS_AUTH_VARIABLES, WorkerConfig
from agents.registry import Registry
from scaler.config import ScalerConfig

from ._chart import CHART, NAMESPACE, RELEASE, Rendered

SECRET_URL = "nats://user:secret@nats.nats.svc:4222"  # what the Secret would hold
AGENTBUS = str(Path(sys.executable).parent / "agentbus")


def component_containers(rendered: Rendered, component: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) pairs of one component."""
    return [
        (obj, c)
        for obj in rendered.workloads()
        if obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component
        for c in obj["spec"]["template"]["spec"]["containers"]
    ]


def container_env(rendered: Rendered, container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The environment Kubernetes would give the container (Secrets replaced by SECRET_URL, the
    NATS credential and TLS files by local copies, once each is shown to be in a mounted Secret)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"] == name)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = SECRET_URL
        elif "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[var["name"]] = pod_name
    for var in NATS_AUTH_VARIABLES:
        if var in env:
            env[var] = _local_copy(rendered, container, env[var])
    return env


def _local_copy(rendered: Rendered, container: dict[str, Any], path: str) -> str:
    """A local stand-in for ``path``, which must lie in a read-only mount of a Secret volume."""
    mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    pods = [w["spec"]["template"]["spec"] for w in rendered.workloads()]
    volume = next(
        v for p in pods if container in p["containers"] for v in p["volumes"] if v["name"] == mount["name"]
    )
    assert volume["secret"]["secretName"]
    local = Path(tempfile.mkdtemp()) / Path(path).name
    local.write_text("stand-in\n")
    return str(local)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AGENTBUS_* from the test runner, and no `agentbus up` state file in the cwd."""
    for var in list(os.environ):
        if var.startswith("AGENTBUS_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_worker_args_and_env_make_the_intended_config(
    rendered: Rendered, clean_env: pytest.MonkeyPatch
) -> None:
    workers = component_containers(rendered, "agent")
    assert workers
    for obj, c in workers:
        kind = obj["metadata"]["labels"]["agentbus.io/kind"]
        args = build_parser().parse_args(c["args"])
        assert args.command == "worker"
        for var, value in container_env(rendered, c, "pod-0").items():
            clean_env.setenv(var, value)
        config: WorkerConfig = worker_cli.config_from_args(args)
        assert config.kinds == (kind,)
        assert config.agent_modules == tuple(args.agents)
        assert kind in Registry.from_modules(config.agent_modules)  # the image's modules serve it
        assert config.http_host == "0.0.0.0"
        assert config.http_port == c["ports"][0]["containerPort"] == 8080
        grace_s = obj["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert config.drain_timeout_s + 15 <= grace_s
        assert config.stream_limits.replicas == 3  # R3: the chart's NATS cluster
        assert config.records.replicas == 3  # results, audit and the ledgers too
        assert config.records.results_max_age_s == 86400  # the chart's results: / audit: blocks
        assert config.records.audit_max_age_s == 2592000
        assert config.audit_tasks is False
        assert config.worker_id == "pod-0"
        assert config.nats_url in (SECRET_URL, "nats://nats.nats.svc:4222")
        assert config.provision is True
        for var in c["env"]:
            clean_env.delenv(var["name"])


def test_worker_settings_reach_the_config(full: Rendered, clean_env: pytest.MonkeyPatch) -> None:
    by_kind = {
        obj["metadata"]["labels"]["agentbus.io/kind"]: c for obj, c in component_containers(full, "agent")
    }
    c = by_kind["summarize"]
    for var, value in container_env(full, c, "pod-1").items():
        clean_env.setenv(var, value)
    config = worker_cli.config_from_args(build_parser().parse_args(c["args"]))
    assert config.max_inflight == 64
    assert config.prefetch == 4
    echo = worker_cli.config_from_args(build_parser().parse_args(by_kind["echo"]["args"]))
    assert echo.prefetch is None  # unset in the values: the worker's own default
    assert config.drain_timeout_s == 55
    assert config.tenants == frozenset({"acme", "globex", "helm-test"})
    assert config.consumer_info_interval_s == 1
    assert config.nats_url == SECRET_URL
    auth = config.nats_auth  # every file in the Secret mounted for it
    assert auth.creds_file is not None
    assert auth.creds_file.endswith("/worker.creds")
    assert auth.tls_ca_file is not None
    assert auth.tls_ca_file.endswith("/ca.crt")
    assert auth.tls_cert_file is not None
    assert auth.tls_cert_file.endswith("/tls.crt")
    assert auth.tls_key_file is not None
    assert auth.tls_key_file.endswith("/tls.key")


def test_no_provision_flag_is_accepted(
    render: Callable[..., Rendered], clean_env: pytest.MonkeyPatch
) -> None:
    out = render({"agents": {"provision": False}})
    ((_, c),) = component_containers(out, "agent")
    assert worker_cli.config_from_args(build_parser().parse_args(c["args"])).provision is False


def test_scaler_args_and_config_file_make_the_intended_config(
    full: Rendered, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (config_map,) = [c for c in full.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-scaler")]
    agent_deployments = {d["metadata"]["name"] for d, _ in component_containers(full, "agent")}
    scalers = component_containers(full, "scaler")
    assert len(scalers) == 2
    for n, (_, c) in enumerate(scalers):
        args = list(c["args"])
        mounted = args[args.index("--config") + 1]
        assert mounted.startswith("/etc/agentbus/scaler/")
        local = tmp_path / Path(mounted).name
        local.write_text(config_map["data"][Path(mounted).name])
        args[args.index("--config") + 1] = str(local)
        parsed = build_parser().parse_args(args)
        assert parsed.command == "scaler"
        config: ScalerConfig = scaler_cli.config_from_args(parsed)
        kind = c["name"].removeprefix("scale-")
        assert config.kubernetes.deployment == f"{RELEASE}-agentbus-agent-{kind}"
        assert config.kubernetes.deployment in agent_deployments
        assert config.kubernetes.namespace == NAMESPACE
        assert config.kubernetes.metrics_port == 8080
        assert config.prometheus.url == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
        assert f'agentbus_io_kind="{kind}"' in config.prometheus.selector
        assert 'job="agentbus"' in config.prometheus.selector
        assert config.interval_s == 10
        assert config.policy.down_window_s == 120
        assert config.http_host == "0.0.0.0"  # the kubelet's httpGet probes reach it
        assert config.http_port == 9100 + n == c["ports"][0]["containerPort"]
        assert config.dry_run is False
        bounds = {"echo": (2, 20, 256.0), "summarize": (3, 12, 64.0)}[kind]
        targets = {m.name: m.target for m in config.policy.metrics}
        assert (config.policy.min_replicas, config.policy.max_replicas, targets["queue_depth"]) == bounds
        assert targets["cpu"] == 0.7


def test_helm_test_job_args_are_a_valid_publish(rendered: Rendered) -> None:
    ((_, c),) = component_containers(rendered, "test")
    args = build_parser().parse_args(c["args"])
    assert args.command == "publish"
    assert args.kind == "echo"
    assert json.loads(args.payload) == {"text": "hello from helm test"}
    assert args.wait is True
    assert args.tenant == "helm-test"
    assert args.timeout_s > 0


def _flags(args: list[str]) -> set[str]:
    return {a for a in args if a.startswith("--")}


@pytest.mark.parametrize("command", ["worker", "scaler"])
def test_the_installed_command_documents_every_flag_the_chart_uses(full: Rendered, command: str) -> None:
    component = {"worker": "agent", "scaler": "scaler"}[command]
    used = set().union(*(_flags(c["args"]) for _, c in component_containers(full, component)))
    used -= {"--log-level"}  # a flag of `agentbus` itself, before the subcommand
    out = subprocess.run(
        [AGENTBUS, command, "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    offered = set(re.findall(r"--[a-z][-a-z]*", out.stdout))
    assert used
    assert used <= offered, used - offered


def test_locust_options_are_ones_the_locustfile_accepts(full: Rendered, tmp_path: Path) -> None:
    """Locust's parser with the locustfile's own options, in a subprocess: importing locust
    monkey-patches the whole process with gevent."""
    (config_map,) = [c for c in full.of_kind("ConfigMap") if c["metadata"]["name"].endswith("-locust")]
    conf = tmp_path / "locust.conf"
    conf.write_text(config_map["data"]["locust.conf"])
    checks = []
    for _, c in component_containers(full, "locust-master") + component_containers(full, "locust-worker"):
        assert c["command"] == ["locust"]
        checks.append([str(conf) if a == "/etc/locust/locust.conf" else a for a in c["args"]])
    script = (
        "import json, sys\n"
        "import loadtest.locustfile  # registers --task-rate and --result-timeout-s\n"
        "from locust.argument_parser import get_parser\n"
        "out = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    o = get_parser().parse_args(args)\n"
        "    out.append([o.master, o.worker, o.locustfile, o.tags, o.num_users, o.task_rate,\n"
        "                o.run_time, o.expect_workers, o.autostart])\n"
        "print(json.dumps(out))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, json.dumps(checks)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    master, worker = json.loads(run.stdout.strip().splitlines()[-1])
    run_time_s = 15 * 60
    assert master == [True, False, "/app/loadtest/locustfile.py", ["spike"], 200, 5.0, run_time_s, 3, True]
    assert worker[:4] == [False, True, "/app/loadtest/locustfile.py", ["spike"]]


def test_locust_scenarios_are_the_ones_slo_toml_defines() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = schema["properties"]["locust"]["properties"]["scenario"]["enum"]
    defined = tomllib.loads((CHART.parents[1] / "loadtest" / "slo.toml").read_text())
    assert sorted(offered) == sorted(defined)


def test_fairness_values_reach_the_config(
    render: Callable[..., Rendered], clean_env: pytest.MonkeyPatch
) -> None:
    values = {
        "fairness": {"weights": {"gold": 3, "silver": 2}, "tenantMaxInflight": 12, "tenantMaxQueued": 5000}
    }
    rendered = render(values)
    _, c = component_containers(rendered, "agent")[0]
    for var, value in container_env(rendered, c, "pod-0").items():
        clean_env.setenv(var, value)
    config = worker_cli.config_from_args(build_parser().parse_args(c["args"]))
    assert config.fairness == "tenant"
    assert dict(config.tenant_weights) == {"gold": 3, "silver": 2}
    assert config.tenant_max_inflight == 12
    assert config.stream_limits.tenant_max_queued == 5000


def test_fairness_defaults_are_the_workers(default: Rendered, clean_env: pytest.MonkeyPatch) -> None:
    _, c = component_containers(default, "agent")[0]
    for var, value in container_env(default, c, "pod-0").items():
        clean_env.setenv(var, value)
    config = worker_cli.config_from_args(build_parser().parse_args(c["args"]))
    plain = WorkerConfig()
    assert (config.fairness, dict(config.tenant_weights)) == (plain.fairness, {})
    assert config.tenant_max_inflight is None
    assert config.stream_limits.tenant_max_queued == plain.stream_limits.tenant_max_queued


def test_the_nats_lost_exit_reaches_the_config(
    render: Callable[..., Rendered], clean_env: pytest.MonkeyPatch
) -> None:
    rendered = render({"agents": {"natsLostExitSeconds": 42}})
    _, c = component_containers(rendered, "agent")[0]
    for var, value in container_env(rendered, c, "pod-0").items():
        clean_env.setenv(var, value)
    assert worker_cli.config_from_args(build_parser().parse_args(c["args"])).nats_lost_exit_s == 42
