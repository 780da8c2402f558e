"""The runtime image serves the chart's worker, helm test and scaler against a real nats-server.

The worker runs with the command line and environment the chart renders (only the HTTP port
is a free one: the container shares the host's network); a task published from the host with
the project's Publisher comes back, and so does the helm test's own round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helm._chart import Rendered

from bus.connection import connect
from bus.embedded import EmbeddedNats, free_port
from bus.publisher import Publisher

from ._container import RUNTIME, Container, Process
from ._pods import pod_argv, pod_containers, pod_env

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def rendered(render: Callable[[dict[str, Any]], Rendered], nats_server: EmbeddedNats) -> Rendered:
    """The default chart pointed at the test's nats-server (one server: one stream replica)."""
    return render({"nats": {"url": nats_server.url, "streamReplicas": 1}})


@pytest.fixture
def chart_worker(runtime: Container, rendered: Rendered, tmp_path: Path) -> Iterator[tuple[Process, int]]:
    """The chart's echo worker, run from the runtime image; ``(process, http_port)`` once ready."""
    (container,) = pod_containers(rendered, "agent")
    assert container["image"] == RUNTIME
    argv = pod_argv(runtime.image, container)
    port = free_port()
    argv[argv.index("--http-port") + 1] = str(port)
    worker = runtime.start(argv, tmp_path / "worker.log", pod_env(rendered, container, "image-worker-0"))
    try:
        yield worker, port
    finally:
        worker.terminate()


async def test_chart_worker_in_the_image_serves_a_task_from_the_host_and_drains(
    chart_worker: tuple[Process, int], nats_url: str
) -> None:
    worker, port = chart_worker

    await asyncio.to_thread(worker.wait_ready, port)
    nc = await connect(nats_url, name="image-test")
    try:
        result = await Publisher(nc).call("acme", "echo", {"text": "from the host"}, timeout_s=60)
    finally:
        await nc.close()
    assert result.ok, result
    assert "from the host" in str(result.output)
    # SIGTERM, as the kubelet sends it, reaches agentbus (exec-form entrypoint): it drains, exits 0.
    assert await asyncio.to_thread(worker.terminate) == 0, worker.log()


def test_helm_test_job_round_trips_a_task_from_the_image(
    chart_worker: tuple[Process, int], runtime: Container, rendered: Rendered
) -> None:
    worker, port = chart_worker
    worker.wait_ready(port)
    (job,) = pod_containers(rendered, "test")
    assert job["image"] == RUNTIME
    done = runtime.run(pod_argv(runtime.image, job), pod_env(rendered, job, "image-test"), timeout_s=180)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\nworker:\n{worker.log()}"
    assert "hello from helm test" in done.stdout


def test_scaler_help_runs_from_the_image(runtime: Container) -> None:
    done = runtime.run([*runtime.image.entrypoint, "scaler", "--help"])
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout
