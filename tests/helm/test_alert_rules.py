"""The chart's PrometheusRule, run by Prometheus's own rule engine (``promtool test rules``).

The rendered rules pass ``promtool check rules``, and each alert fires on the series a
real worker exports (the names and labels of ``agents/metrics.py`` and
``agents/_state_metrics.py``, with the labels the ServiceMonitor adds) when the trouble
lasts, and stays silent when it does not.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._chart import NAMESPACE, RELEASE, Rendered

LABELS = f'job="agentbus",namespace="{NAMESPACE}",app_kubernetes_io_instance="{RELEASE}"'
ALERTS = {
    "AgentbusWorkerDisconnected",
    "AgentbusDeadLetters",
    "AgentbusBacklogGrowing",
    "AgentbusModelCircuitOpen",
    "AgentbusStatePartitioned",
    "AgentbusStateSnapshotsFailing",
}


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{LABELS}{extra}}}", "values": values}


def _alert(summary: str, **labels: str) -> dict[str, Any]:
    return {"exp_labels": {"namespace": NAMESPACE, **labels}, "exp_annotations": {"summary": summary}}


@pytest.fixture
def rules_file(render: Callable[..., Rendered], tmp_path: Path) -> Path:
    out = render({"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}})
    (rule,) = out.of_kind("PrometheusRule")
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} == ALERTS
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: `make test` installs it (Debian package `prometheus`)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


def test_rules_pass_promtool_check(rules_file: Path) -> None:
    checked = _promtool("check", "rules", str(rules_file))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "6 rules found" in checked.stdout


def test_each_alert_fires_on_lasting_trouble_and_not_on_a_blip(rules_file: Path, tmp_path: Path) -> None:
    echo, llm = {"pod": "w1", "agentbus_io_kind": "echo"}, {"pod": "w2", "agentbus_io_kind": "assistant"}
    series = [
        # w1 loses NATS from minute 2 on; w2 only for one minute (a blip)
        _series("agentbus_nats_connected", "1 1 0 0 0 0 0 0", **echo),
        _series("agentbus_nats_connected", "1 1 0 1 1 1 1 1", **llm),
        # echo dead-letters 3 tasks as rejected around minute 3; assistant none
        _series("agentbus_dead_letters_total", "0 0 0 3 3 3 3 3", reason="rejected", **echo),
        _series("agentbus_dead_letters_total", "0 0 0 0 0 0 0 0", reason="rejected", **llm),
        # echo's backlog grows past 1,000 and keeps growing; assistant's is high but draining
        _series("agentbus_consumer_pending", "900+100x30", **echo),
        _series("agentbus_consumer_pending", "5000-50x30", **llm),
        # the assistant's breaker opens (2) from minute 1 on; echo's stays closed
        _series("agentbus_llm_breaker_state", "0 2 2 2 2 2 2 2", endpoint="http://model:8000", **llm),
        _series("agentbus_llm_breaker_state", "0 0 0 0 0 0 0 0", endpoint="http://model:8000", **echo),
        # two running workers; w1 sees w2 (alive 1), w2 sees nobody from minute 1 on
        _series("agentbus_worker_state", "1x30", state="running", **echo),
        _series("agentbus_worker_state", "1x30", state="running", **llm),
        _series("agentbus_state_gossip_peers", "1x30", state="alive", **echo),
        _series("agentbus_state_gossip_peers", "1 0x29", state="alive", **llm),
        # w2's Redis writes fail from minute 1 on; w1's succeed
        _series("agentbus_state_redis_write_ok", "1x30", **echo),
        _series("agentbus_state_redis_write_ok", "1 0x29", **llm),
    ]
    alerts = [
        {
            "eval_time": "7m",
            "alertname": "AgentbusWorkerDisconnected",
            "exp_alerts": [
                _alert(
                    "worker w1 (echo) has been cut off from NATS for 2 minutes",
                    severity="critical",
                    **echo,
                )
            ],
        },
        {
            "eval_time": "5m",
            "alertname": "AgentbusDeadLetters",
            "exp_alerts": [
                _alert(
                    "echo tasks dead-lettered as rejected in the last 10 minutes",
                    severity="warning",
                    reason="rejected",
                    agentbus_io_kind="echo",
                )
            ],
        },
        {"eval_time": "10m", "alertname": "AgentbusBacklogGrowing", "exp_alerts": []},  # not yet 15 min
        {
            "eval_time": "28m",
            "alertname": "AgentbusBacklogGrowing",
            "exp_alerts": [
                _alert(
                    "echo backlog above the threshold and still growing for 15 minutes",
                    severity="warning",
                    agentbus_io_kind="echo",
                )
            ],
        },
        {
            "eval_time": "7m",
            "alertname": "AgentbusModelCircuitOpen",
            "exp_alerts": [
                _alert(
                    "circuit to http://model:8000 open for 5 minutes:"
                    " assistant calls fail over to the next endpoint, or wait if there is none",
                    severity="warning",
                    endpoint="http://model:8000",
                    agentbus_io_kind="assistant",
                )
            ],
        },
        {
            "eval_time": "10m",
            "alertname": "AgentbusStatePartitioned",
            "exp_alerts": [
                _alert(
                    "worker w2 sees fewer live gossip peers than there are running workers:"
                    " budgets and rate limits are enforced per side",
                    severity="warning",
                    pod="w2",
                )
            ],
        },
        {
            "eval_time": "10m",
            "alertname": "AgentbusStateSnapshotsFailing",
            "exp_alerts": [
                _alert(
                    "worker w2 has not written a state snapshot to Redis for 5 minutes",
                    severity="warning",
                    pod="w2",
                )
            ],
        },
    ]
    test = {
        "rule_files": [str(rules_file)],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": alerts}],
    }
    test_file = tmp_path / "alerts-test.yaml"
    test_file.write_text(yaml.safe_dump(test, sort_keys=False))
    ran = _promtool("test", "rules", str(test_file))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "SUCCESS" in ran.stdout
