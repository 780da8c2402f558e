"""NOTES.txt: how to publish a first task, and a warning for each unsafe setting."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from ._chart import NAMESPACE, RELEASE, Rendered

Render = Callable[..., Rendered]


def warnings(notes: str) -> list[str]:
    return [line for line in notes.splitlines() if line.startswith("WARNING:")]


def test_notes_show_how_to_publish_a_first_task_and_run_the_round_trip(default: Rendered) -> None:
    notes = default.notes
    assert f"kubectl -n {NAMESPACE} exec deploy/{RELEASE}-agentbus-agent-echo --" in notes
    assert 'agentbus publish echo \'{"text": "hello from helm test"}\' --tenant acme --wait' in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    assert "echo: deploy/ab-agentbus-agent-echo, 2 replicas, drain 25 s within a 45 s grace period" in notes


def test_the_all_features_install_has_nothing_to_warn_about(full: Rendered) -> None:
    assert warnings(full.notes) == []
    assert "autoscaled 2-20 replicas" in full.notes
    assert "port-forward svc/ab-agentbus-locust 8089" in full.notes


def test_defaults_warn_only_that_the_scaler_is_off(default: Rendered) -> None:
    assert warnings(default.notes) == [
        "WARNING: the scaler is disabled (scaler.enabled=false): every kind keeps its fixed replicas,"
    ]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"nats": {"streamReplicas": 1}}, "WARNING: nats.streamReplicas is 1."),
        (
            {
                "scaler": {"enabled": True},
                "agents": {
                    "kinds": [
                        {"name": "echo", "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 3}}
                    ]
                },
            },
            "WARNING: kind echo has autoscaling.minReplicas = maxReplicas = 3: the scaler",
        ),
        ({"agents": {"resources": None}}, "WARNING: kind echo has no CPU/memory requests or no memory limit"),
        (
            {"agents": {"kinds": [{"name": "echo", "resources": {"requests": {"cpu": "1"}}}]}},
            "WARNING: kind echo has no CPU/memory requests or no memory limit",
        ),
        (
            {"agents": {"kinds": [{"name": "echo", "replicas": 1}]}},
            "WARNING: kind echo can run a single worker",
        ),
        ({"nats": {"url": "nats://admin:hunter2@nats:4222"}}, "WARNING: nats.url carries credentials"),
        (
            {
                "scaler": {"enabled": True},
                "agents": {"kinds": [{"name": "echo", "autoscaling": {"enabled": True}}]},
            },
            "WARNING: the scaler reads Prometheus, but no ServiceMonitor or PodMonitor is enabled.",
        ),
        (
            {"tenants": {"allowlist": ["acme"]}},
            "WARNING: tenants.allowlist does not list tests.tenant (helm-test)",
        ),
    ],
)
def test_unsafe_settings_are_warned_about(render: Render, values: dict[str, object], expected: str) -> None:
    notes = render(values).notes
    assert any(line.startswith(expected) for line in notes.splitlines()), notes
