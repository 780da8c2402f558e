"""Must show 3: values.schema.json rejects wrong types and unknown keys, and the render refuses
what draft-07 cannot express (min > max), each with a message that names the key."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import helm_python as helm
import jsonschema
import pytest

from ._chart import CHART, Rendered, all_features_values


def echo(**fields: Any) -> dict[str, Any]:
    """Values with one kind, echo, with these fields."""
    return {"agents": {"kinds": [{"name": "echo", **fields}]}}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # wrong types
        (
            {"agents": {"drainTimeoutSeconds": "25"}},
            "at '/agents/drainTimeoutSeconds': got string, want integer",
        ),
        (echo(replicas="3"), "at '/agents/kinds/0/replicas': got string, want integer"),
        ({"scaler": {"enabled": "yes"}}, "at '/scaler/enabled': got string, want boolean"),
        ({"agents": {"modules": "agents.builtin"}}, "at '/agents/modules': got string, want array"),
        ({"agents": {"resources": {"limits": {"memory": "lots"}}}}, "/agents/resources/limits/memory"),
        # unknown keys, at every depth
        ({"replicaCount": 3}, "additional properties 'replicaCount' not allowed"),
        ({"agents": {"drainTimout": 3}}, "at '/agents': additional properties 'drainTimout' not allowed"),
        (echo(maxInFlight=8), "at '/agents/kinds/0': additional properties 'maxInFlight' not allowed"),
        (
            echo(autoscaling={"enabled": True, "min": 1}),
            "at '/agents/kinds/0/autoscaling': additional properties 'min' not allowed",
        ),
        ({"nats": {"existingSecret": {"nam": "x"}}}, "additional properties 'nam' not allowed"),
        # out of range / not allowed
        ({"nats": {"streamReplicas": 2}}, "at '/nats/streamReplicas': value must be one of 1, 3, 5"),
        (
            {"agents": {"shutdownMarginSeconds": 5}},
            "at '/agents/shutdownMarginSeconds': minimum: got 5, want 15",
        ),
        (echo(), None),  # the control: a valid override
        ({"agents": {"kinds": [{"name": "Echo_1"}]}}, "at '/agents/kinds/0/name': 'Echo_1' does not match"),
        ({"agents": {"kinds": []}}, "at '/agents/kinds': minItems: got 0, want 1"),
        ({"securityContext": {"runAsUser": 0}}, "at '/securityContext/runAsUser': minimum: got 0, want 1"),
        ({"logLevel": "verbose"}, "at '/logLevel': value must be one of"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(
    chart: helm.Chart, values: dict[str, Any], message: str | None
) -> None:
    if message is None:
        chart.validate_schema(values)
        return
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert message in str(caught.value)
    with pytest.raises(helm.HelmValuesError):  # install/upgrade/template refuse it too
        chart.render(values, name="ab", namespace="agents")


def test_min_greater_than_max_fails_the_render_with_a_clear_message(
    chart: helm.Chart, render: Callable[..., Rendered]
) -> None:
    values = echo(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2})
    # draft-07 compares a value with constants, never with another value (no $data): the
    # schema alone lets it through, so the chart's agentbus.validate template fails instead.
    chart.validate_schema(values)
    with pytest.raises(helm.HelmRenderError) as caught:
        render({**values, "scaler": {"enabled": True}})
    assert "agents.kinds[echo].autoscaling: minReplicas (5) > maxReplicas (2)" in str(caught.value)


def test_draft_07_if_then_cannot_express_min_le_max() -> None:
    """The best draft-07 can do is one if/then per constant; check that our schema does not pretend."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    text = json.dumps(schema)
    assert "$data" not in text  # not a draft-07 keyword: Helm's validator would ignore it
    assert "minReplicas <= maxReplicas is checked at render" in text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"agents": {"kinds": [{"name": "echo"}, {"name": "echo"}]}}, 'kind "echo" is listed twice'),
        (
            {**echo(autoscaling={"enabled": True}), "scaler": {"enabled": True}, "prometheus": {"url": ""}},
            "agents.kinds[echo].autoscaling.enabled needs prometheus.url",
        ),
        (
            {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
            "enable serviceMonitor or podMonitor, not both",
        ),
        ({"tests": {"kind": "order"}}, 'tests.kind "order" is not one of agents.kinds'),
    ],
)
def test_cross_key_mistakes_fail_the_render(
    render: Callable[..., Rendered], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        render(values)
    assert message in str(caught.value)


def test_the_schema_is_strict_everywhere() -> None:
    """additionalProperties: false on every object of ours (maps and Kubernetes pass-throughs aside)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and node.get("additionalProperties") is not False
            ):
                loose.append(path)
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for n, child in enumerate(node):
                walk(child, f"{path}/{n}")

    walk(schema, "#")
    assert loose == []


def test_values_files_shipped_with_the_chart_are_valid(chart: helm.Chart) -> None:
    chart.validate_schema({})
    chart.validate_schema(all_features_values())
