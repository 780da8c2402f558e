"""The Prometheus source against a real Prometheus, and what bad configuration does.

Bad PromQL is a ConfigError at start naming the metric; an unreachable Prometheus
is a MetricError at start and, at run time, a held size with the reason logged; an
empty or multi-series answer is a missing metric, never zero.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from scaler_helpers import PrometheusServer

from agentbus.errors import ConfigError, MetricError
from bus.embedded import free_port
from scaler.actuators import MemoryActuator
from scaler.loop import Scaler
from scaler.policy import Reason
from scaler.sources import PrometheusSource, default_queries
from scaler.spec import MetricKind, MetricTarget, PolicySpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BODY = (
    'agentbus_consumer_pending{kind="echo"} 7\n'
    'agentbus_consumer_ack_pending{kind="echo"} 3\n'
    'agentbus_inflight{kind="echo"} 2\n'
    "process_cpu_seconds_total 1.5\n"
    "process_start_time_seconds 1\n"
)


@pytest.fixture
async def exporter() -> AsyncIterator[int]:
    """A worker-shaped /metrics on a loopback port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        data = BODY.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
        await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    yield port
    server.close()
    await server.wait_closed()


@pytest.fixture
def prometheus(tmp_path: Path, exporter: int) -> Iterator[PrometheusServer]:
    server = PrometheusServer(tmp_path / "prometheus", scrape_interval_s=1.0)
    server.set_targets([f"127.0.0.1:{exporter}"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_reads_the_default_queries_and_reports_bad_answers(prometheus: PrometheusServer) -> None:
    queries = {
        **default_queries(rate_window="5s", cpu_warmup_s=10),
        "empty": "agentbus_no_such_metric",
        "two_series": 'label_replace(vector(1), "a", "x", "", "") or label_replace(vector(2), "a", "y", "", "")',  # noqa: E501
    }
    source = PrometheusSource(prometheus.url, queries)
    try:
        await source.check()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 45  # the first scrape lands ~5 s after start
        while (readings := await source.read(0.0))["queue_depth"].value is None:
            assert loop.time() < deadline, readings["queue_depth"].error
            await asyncio.sleep(0.2)
        assert readings["queue_depth"].value == 10  # 7 pending + 3 unacked
        assert readings["inflight"].value == 2
        assert readings["empty"].value is None
        assert "empty result" in readings["empty"].error
        assert readings["two_series"].value is None
        assert "aggregate" in readings["two_series"].error
        assert await source.by_label('sum by (kind) (agentbus_inflight{job="agentbus"})', "kind") == {
            "echo": 2
        }
    finally:
        await source.aclose()


async def test_bad_promql_is_a_config_error_at_start(prometheus: PrometheusServer) -> None:
    source = PrometheusSource(prometheus.url, {"queue_depth": "sum(agentbus_consumer_pending"})
    try:
        with pytest.raises(ConfigError, match="metric 'queue_depth': Prometheus refuses the query"):
            await source.check()
    finally:
        await source.aclose()


async def test_unreachable_prometheus_errors_at_start_and_holds_at_run_time(
    prometheus: PrometheusServer,
) -> None:
    dead = PrometheusSource(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(MetricError, match="unreachable"):
            await dead.check()
    finally:
        await dead.aclose()

    spec = PolicySpec(
        metrics=(MetricTarget(name="queue_depth", target=10, kind=MetricKind.TOTAL),), down_window_s=0
    )
    source = PrometheusSource(prometheus.url, default_queries())
    pool = MemoryActuator(4)
    loop = Scaler(spec, source, pool, interval_s=0.1)
    try:
        await loop.start()
        prometheus.stop()  # an outage mid-run, at a moment when the load says "shrink"
        for _ in range(3):
            ev = await loop.evaluate()
            assert (ev.decision.reason, ev.decision.desired) == (Reason.METRIC_MISSING, 4)
            assert "unreachable" in ev.decision.detail
        assert pool.history == [4]
    finally:
        await loop.aclose()
