"""The Locust image runs the load test's entry (the locustfile, headless) for a few seconds
against a nats-server on the host, with a worker from the runtime image serving the tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bus.embedded import free_port

from ._container import Container

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

LOCUSTFILE = "/app/loadtest/locustfile.py"  # the chart's locust.locustfile


def test_locust_image_loads_a_worker_from_the_runtime_image(
    runtime: Container, loadtest: Container, nats_url: str, tmp_path: Path
) -> None:
    port = free_port()
    worker = runtime.start(
        [*runtime.image.entrypoint, "worker", "--nats-url", nats_url, "--http-port", str(port)],
        tmp_path / "worker.log",
    )
    try:
        worker.wait_ready(port)
        argv = [*loadtest.image.entrypoint, "-f", LOCUSTFILE, "--headless", "--host", nats_url]
        argv += ["SteadyUser", "-u", "2", "-t", "5s", "--task-rate", "2", "--json", "--skip-log"]
        done = loadtest.run(argv, timeout_s=180)
    finally:
        worker.terminate()
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}\nworker:\n{worker.log()}"
    stats = json.loads(done.stdout)
    requests = sum(s["num_requests"] for s in stats)
    failures = sum(s["num_failures"] for s in stats)
    assert requests > 0
    assert failures == 0, done.stdout
