"""Retention of results, audit records and the ledger: read once from ``AGENTBUS_*`` (the chart's
``results:``/``audit:`` blocks), checked at start."""

from __future__ import annotations

import pytest

from agentbus.errors import ConfigError
from agents.config import WorkerConfig
from bus.records import RecordLimits


def test_ttls_come_from_the_environment() -> None:
    cfg = WorkerConfig.from_env(
        {
            "AGENTBUS_RESULTS_TTL_S": "600",
            "AGENTBUS_AUDIT_TTL_S": "3600",
            "AGENTBUS_ONCE_TTL_S": "7200",
            "AGENTBUS_STREAM_REPLICAS": "3",
        }
    )
    assert cfg.records == RecordLimits(
        results_max_age_s=600, audit_max_age_s=3600, once_max_age_s=7200, replicas=3
    )
    assert WorkerConfig.from_env({}).records == RecordLimits()


@pytest.mark.parametrize("value", ["0", "-5", "soon"])
def test_a_bad_ttl_stops_the_worker_at_start(value: str) -> None:
    with pytest.raises(ConfigError, match="AGENTBUS_RESULTS_TTL_S"):
        WorkerConfig.from_env({"AGENTBUS_RESULTS_TTL_S": value})
