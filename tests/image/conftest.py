"""Session fixtures of the image tests: both images, built once by ``scripts/image.sh`` (what
``make image`` runs), a working container of each, and the chart rendered to run them.

This directory is a package so that this conftest does not shadow ``tests/conftest.py``,
whose ``nats_server`` fixture the tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import helm_python as helm
import pytest
from helm._chart import CHART, DEFAULT_VALUES, NAMESPACE, RELEASE, Rendered

from ._container import LOADTEST, RUNTIME, Container, Image, build

# The chart names the images `make image` tags: repository agentbus, tag dev (+ "-loadtest").
IMAGE_VALUES: dict[str, Any] = {"image": {"repository": "agentbus", "tag": "dev"}}


@pytest.fixture(scope="session")
def images() -> dict[str, Image]:
    """Both images by the name the chart renders for them; built once per session."""
    done = build()
    assert done.returncode == 0, f"scripts/image.sh failed:\n{done.stdout}\n{done.stderr}"
    return {RUNTIME: Image(f"localhost/{RUNTIME}"), LOADTEST: Image(f"localhost/{LOADTEST}")}


def _container(image: Image) -> Iterator[Container]:
    container = Container(image)
    try:
        yield container
    finally:
        container.remove()


@pytest.fixture(scope="session")
def runtime(images: dict[str, Image]) -> Iterator[Container]:
    """A working container of the runtime image (the default target)."""
    yield from _container(images[RUNTIME])


@pytest.fixture(scope="session")
def loadtest(images: dict[str, Image]) -> Iterator[Container]:
    """A working container of the Locust image (the `loadtest` target)."""
    yield from _container(images[LOADTEST])


@pytest.fixture(scope="session")
def containers(runtime: Container, loadtest: Container) -> dict[str, Container]:
    """Each image's container by the image name the chart renders."""
    return {RUNTIME: runtime, LOADTEST: loadtest}


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Callable[[dict[str, Any]], Rendered]:
    """Render the chart with these values over IMAGE_VALUES (so it names the built images)."""

    def _render(values: dict[str, Any]) -> Rendered:
        merged = {**DEFAULT_VALUES, **values, **IMAGE_VALUES}
        return Rendered.of(chart.render(merged, name=RELEASE, namespace=NAMESPACE))

    return _render
