"""The tenant allowlist is on by default: an install names its tenants or says it serves any.

Without a list, every subject token is a tenant with its own state, metric labels and DLQ
subject; the chart refuses to render until one of ``tenants.allowlist`` or
``tenants.allowAnyTenant: true`` is given (docs/state.md, "Security").
"""

from __future__ import annotations

from collections.abc import Callable

import helm_python as helm
import pytest

from ._chart import NAMESPACE, RELEASE, Rendered


def _tenants(out: Rendered) -> str | None:
    data = out.one("ConfigMap", f"{RELEASE}-agentbus-agents")["data"]
    value: str | None = data.get("AGENTBUS_TENANTS")
    return value


def test_values_yaml_alone_does_not_render(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render({}, name=RELEASE, namespace=NAMESPACE)
    assert "tenants.allowlist" in str(caught.value)
    assert "allowAnyTenant" in str(caught.value)


def test_the_allowlist_reaches_every_worker(render: Callable[..., Rendered]) -> None:
    out = render({"tenants": {"allowlist": ["acme", "helm-test"]}, "agents": {"tenants": ["globex", "acme"]}})
    assert sorted(_tenants(out).split(",")) == ["acme", "globex", "helm-test"]  # type: ignore[union-attr]
    assert "WARNING: tenants.allowlist" not in out.notes


def test_allow_any_tenant_sets_no_list(render: Callable[..., Rendered]) -> None:
    assert _tenants(render({"tenants": {"allowAnyTenant": True}})) is None


def test_the_schema_refuses_a_tenant_that_is_not_a_subject_token(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"tenants": {"allowlist": ["acme.>"]}})
