"""Metric sources: the direct scrape against real HTTP endpoints, and one contract both sources obey.

The contract (one suite against the real thing and its twin): a value
reads back as itself, and a metric that cannot be read comes back as ``None`` with
a reason, never as 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from bus.embedded import free_port
from scaler.sources import MemorySource, MetricSource, ScrapeSource


class MetricsStub:
    """A loopback HTTP server answering ``GET /metrics`` with ``self.body``."""

    def __init__(self, body: str = "") -> None:
        self.body = body
        self.port = free_port()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def start(self) -> MetricsStub:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        data = self.body.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def worker_body(
    *, cpu: float, started: float, pending: dict[str, int], acked: dict[str, int], inflight: int
) -> str:
    lines = [
        f"process_cpu_seconds_total {cpu}",
        f"process_start_time_seconds {started}",
        f'agentbus_inflight{{kind="echo"}} {inflight}',
    ]
    lines += [f'agentbus_consumer_pending{{kind="{k}"}} {v}' for k, v in pending.items()]
    lines += [f'agentbus_consumer_ack_pending{{kind="{k}"}} {v}' for k, v in acked.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
async def stubs() -> AsyncIterator[list[MetricsStub]]:
    servers = [await MetricsStub().start() for _ in range(3)]
    yield servers
    for s in servers:
        await s.close()


async def test_scrape_computes_cpu_rate_queue_depth_and_inflight(stubs: list[MetricsStub]) -> None:
    a, b, young = stubs
    old = time.time() - 3600
    a.body = worker_body(
        cpu=10.0, started=old, pending={"echo": 30, "llm": 4}, acked={"echo": 2, "llm": 1}, inflight=2
    )
    b.body = worker_body(
        cpu=20.0, started=old, pending={"echo": 30, "llm": 4}, acked={"echo": 2, "llm": 1}, inflight=1
    )
    young.body = worker_body(cpu=5.0, started=time.time(), pending={}, acked={}, inflight=0)
    source = ScrapeSource(lambda: [a.url, b.url, young.url])
    try:
        first = await source.read(100.0)
        assert first["cpu"].value is None  # a rate needs two scrapes
        assert "two scrapes" in first["cpu"].error
        # every worker exports its consumer's numbers: max by kind (32 and 5), then the sum over kinds
        assert first["queue_depth"].value == 37
        assert first["inflight"].value == 3
        a.body = a.body.replace("process_cpu_seconds_total 10.0", "process_cpu_seconds_total 11.0")
        b.body = b.body.replace("process_cpu_seconds_total 20.0", "process_cpu_seconds_total 23.0")
        young.body = young.body.replace("process_cpu_seconds_total 5.0", "process_cpu_seconds_total 9.0")
        second = await source.read(102.0)
        assert second["cpu"].value == pytest.approx(
            (0.5 + 1.5) / 2
        )  # the young worker's start-up is left out
        assert second["cpu"].at_s == 102.0
    finally:
        await source.aclose()


async def test_scrape_with_no_answering_target_reads_missing_not_zero() -> None:
    source = ScrapeSource(lambda: [f"http://127.0.0.1:{free_port()}/metrics"])
    try:
        readings = await source.read(1.0)
    finally:
        await source.aclose()
    assert {r.value for r in readings.values()} == {None}
    assert all("no worker answered" in r.error for r in readings.values())


async def test_scrape_before_workers_read_their_consumer_is_missing(stubs: list[MetricsStub]) -> None:
    stubs[0].body = "process_cpu_seconds_total 1\n"
    source = ScrapeSource(lambda: [stubs[0].url])
    try:
        depth = (await source.read(1.0))["queue_depth"]
    finally:
        await source.aclose()
    assert depth.value is None
    assert "consumer pending" in depth.error


SourceFactory = Callable[[dict[str, float | None]], MetricSource]


@pytest.fixture(params=["memory", "scrape"])
async def make_source(
    request: pytest.FixtureRequest, stubs: list[MetricsStub]
) -> AsyncIterator[SourceFactory]:
    """Builds a source reporting ``queue_depth`` = the given value (None: not exported)."""
    made: list[MetricSource] = []

    def make(values: dict[str, float | None]) -> MetricSource:
        if request.param == "memory":
            src: MetricSource = MemorySource(values)
        else:
            depth = values["queue_depth"]
            stubs[0].body = (
                f'agentbus_consumer_pending{{kind="echo"}} {depth}\n'
                'agentbus_consumer_ack_pending{kind="echo"} 0\n'
                if depth is not None
                else "process_cpu_seconds_total 1\n"
            )
            src = ScrapeSource(lambda: [stubs[0].url])
        made.append(src)
        return src

    yield make
    for src in made:
        await src.aclose()


async def test_contract_a_value_reads_back(make_source: SourceFactory) -> None:
    source = make_source({"queue_depth": 12.0})
    reading = (await source.read(5.0))["queue_depth"]
    assert (reading.value, reading.at_s, reading.error) == (12.0, 5.0, "")


async def test_contract_a_missing_metric_is_none_with_a_reason(make_source: SourceFactory) -> None:
    source = make_source({"queue_depth": None})
    reading = (await source.read(5.0))["queue_depth"]
    assert reading.value is None
    assert reading.error
