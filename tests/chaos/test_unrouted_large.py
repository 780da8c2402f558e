"""Found by the fleet fuzz (seed 7 and 11): a large task of a kind nobody serves never leaves TASKS.

The unrouted sweeper copies the whole task into its dead letter; past about 768 KiB the
letter (base64) is over the server's max_payload, the copy fails on every sweep and the
task stays queued for good. A worker's own dead letters keep at most
``DLQ_MAX_DATA_BYTES`` of the original; the sweeper's must too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_helpers import Observer, UpFleet

from loadtest.fuzz_fleet import FUZZ_WORKER_ARGS

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def sweeping_fleet(tmp_path: Path) -> Iterator[UpFleet]:
    """Three workers that sweep unrouted tasks after 1 s (the fuzz's timers)."""
    fleet = UpFleet(tmp_path, {}, FUZZ_WORKER_ARGS).start()
    try:
        yield fleet
    finally:
        fleet.stop()


async def test_a_900_kib_task_of_an_unknown_kind_is_dead_lettered(sweeping_fleet: UpFleet) -> None:
    data = json.dumps({"id": "big-unrouted", "payload": {"text": "p" * 900 * 1024}}).encode()
    async with Observer(sweeping_fleet, ("cu",)) as obs:
        await obs.nc.jetstream().publish("tasks.pu.nosuchkind", data, headers={"Nats-Msg-Id": "big"})
        await obs.expect_letter("dlq.pu.nosuchkind", b'"big-unrouted"', "unknown_kind", timeout_s=15)
        await obs.canaries("cu")
        await obs.check_liveness()
    assert not obs.problems, "\n".join(obs.problems)
