"""Render helm/agentbus in-process with helm-python-sdk (Helm v4; no cluster, no binary).

Session fixtures render the chart once for the default values and once for
``ci/all-features-values.yaml``; ``render(values)`` renders anything else. This directory is
a package so that this conftest does not shadow ``tests/conftest.py`` (both would be imported
as ``conftest``, and the integration tests import helpers from the root one).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import helm_python as helm
import pytest

from ._chart import CHART, DEFAULT_VALUES, NAMESPACE, RELEASE, Rendered, all_features_values


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Callable[..., Rendered]:
    """Render with user values merged over ``DEFAULT_VALUES`` and values.yaml (the schema is enforced)."""

    def _render(values: dict[str, Any] | None = None, *, name: str = RELEASE) -> Rendered:
        merged = {**DEFAULT_VALUES, **(values or {})}
        return Rendered.of(chart.render(merged, name=name, namespace=NAMESPACE))

    return _render


@pytest.fixture(scope="session")
def default(render: Callable[..., Rendered]) -> Rendered:
    return render({})


@pytest.fixture(scope="session")
def full(render: Callable[..., Rendered]) -> Rendered:
    return render(all_features_values())


@pytest.fixture(scope="session", params=["default", "all-features"])
def rendered(request: pytest.FixtureRequest, default: Rendered, full: Rendered) -> Rendered:
    """Each of the two reference renders."""
    return default if request.param == "default" else full
