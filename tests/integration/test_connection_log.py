"""A worker waiting for NATS says so without flooding its log: the same error once per window."""

from __future__ import annotations

import logging

import pytest

from agentbus.errors import BusError
from bus.connection import connect
from bus.embedded import free_port

pytestmark = pytest.mark.integration


async def test_a_refused_connection_is_logged_once_not_at_every_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"  # nothing listens: every attempt is refused
    caplog.set_level(logging.WARNING, logger="agentbus.bus")
    with pytest.raises(BusError, match="cannot connect to NATS"):
        await connect(url, reconnect_wait_s=0.2, first_connect_timeout_s=2.5)  # about ten attempts
    errors = [r.getMessage() for r in caplog.records if r.getMessage().startswith("nats error")]
    assert len(errors) == 1, errors
    assert str(port) in errors[0]  # the error names the address
