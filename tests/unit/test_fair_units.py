"""Fair share, the parts without a server: consumer names, quota errors, configuration, parsing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.errors import APIError

from agentbus.errors import ConfigError, PublishError, StreamFullError, TenantQuotaExceeded
from agents.config import WorkerConfig
from bus._lanes import pending_of as _pending_of
from bus.publisher import map_publish_error
from bus.topology import StreamLimits, tenant_consumer_name

_NAME = re.compile(r"t-[A-Za-z0-9_-]+-[0-9a-f]{16}")


def test_tenant_consumer_names_are_valid_fixed_and_never_shared() -> None:
    assert tenant_consumer_name("echo", "acme") == tenant_consumer_name("echo", "acme")
    # the same characters split differently between kind and tenant: different consumers
    assert tenant_consumer_name("a-b", "c") != tenant_consumer_name("a", "b-c")
    assert tenant_consumer_name("echo", "acme") != tenant_consumer_name("echo", "acmf")
    long = tenant_consumer_name("echo", "t" * 10_000)  # any token a client published under
    assert _NAME.fullmatch(long)
    assert len(long) == len("t-echo-") + 16


@given(st.text(max_size=200))
def test_any_tenant_makes_a_valid_name(tenant: str) -> None:
    assert _NAME.fullmatch(tenant_consumer_name("echo", tenant))


def test_the_per_subject_limit_is_the_tenants_quota_not_a_full_stream() -> None:
    quota = APIError(code=503, err_code=10077, description="maximum messages per subject exceeded")
    error = map_publish_error(quota, "id1", "tasks.acme.echo", 10, 500)
    assert isinstance(error, TenantQuotaExceeded)
    assert not isinstance(error, StreamFullError)
    assert isinstance(error, PublishError)
    assert (error.tenant, error.kind, error.limit, error.task_id) == ("acme", "echo", 500, "id1")
    assert "500" in str(error)
    full = APIError(code=503, err_code=10077, description="maximum messages exceeded")
    assert isinstance(map_publish_error(full, "id2", "tasks.acme.echo"), StreamFullError)


def test_fairness_configuration_from_the_environment() -> None:
    cfg = WorkerConfig.from_env(
        {
            "AGENTBUS_FAIRNESS": "kind",
            "AGENTBUS_TENANT_WEIGHTS": "gold=3, silver = 2",
            "AGENTBUS_TENANT_MAX_INFLIGHT": "12",
            "AGENTBUS_TENANT_MAX_QUEUED": "1000",
        }
    )
    assert cfg.fairness == "kind"
    assert dict(cfg.tenant_weights) == {"gold": 3, "silver": 2}
    assert cfg.tenant_max_inflight == 12
    assert cfg.stream_limits.tenant_max_queued == 1000
    default = WorkerConfig.from_env({})
    assert (default.fairness, dict(default.tenant_weights)) == ("tenant", {})
    assert default.stream_limits.tenant_max_queued == StreamLimits().tenant_max_queued


@pytest.mark.parametrize(
    "env",
    [
        {"AGENTBUS_FAIRNESS": "fifo"},
        {"AGENTBUS_TENANT_WEIGHTS": "gold"},
        {"AGENTBUS_TENANT_WEIGHTS": "gold=-1"},
        {"AGENTBUS_TENANT_WEIGHTS": "gold=0"},
        {"AGENTBUS_TENANT_WEIGHTS": "bad.tenant=2"},
        {"AGENTBUS_TENANT_MAX_INFLIGHT": "0"},
        {"AGENTBUS_TENANT_MAX_QUEUED": "-1"},
    ],
)
def test_bad_fairness_configuration_is_refused_at_start(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        WorkerConfig.from_env(env)


@given(st.text(max_size=80))
def test_a_hostile_ack_subject_never_breaks_the_pending_count(reply: str) -> None:
    assert _pending_of(reply) >= 0


def test_the_pending_count_is_the_ack_subjects_last_token() -> None:
    assert _pending_of("$JS.ACK.TASKS.t-echo-0011223344556677.1.2.2.1796586522751753056.17") == 17
    assert _pending_of("$JS.ACK.TASKS.x.1.2.2.17965.-3") == 0
    assert _pending_of("$JS.ACK.TASKS.x.1.2.2.17965." + "9" * 40) == 0


def test_discovery_sorts_backlogged_subjects_into_open_new_and_unnameable() -> None:
    """Open lanes are nudged, new tenants opened up to the room, a tenant with invalid UTF-8
    (listed as U+FFFD) reported for the DLQ, another kind's or a malformed subject ignored."""
    from bus._lanes import Lane, sort_backlogged

    open_lane = Lane("acme", "tasks.acme.echo", "next", "inbox.1", 1)
    gone = Lane("old", "tasks.old.echo", "next", "inbox.2", 1)
    gone.gone = True
    subjects = [
        "tasks.acme.echo",
        "tasks.old.echo",
        "tasks.\ufffd\ufffd.echo",
        "tasks.globex.other",
        "tasks.a.b.echo",
        "tasks.globex.echo",
        "tasks.initech.echo",
    ]
    lanes = {open_lane.subject: open_lane, gone.subject: gone}
    known, new, invalid = sort_backlogged(subjects, lanes, "echo", room=2)
    assert known == [open_lane]
    assert new == [("old", "tasks.old.echo"), ("globex", "tasks.globex.echo")]  # room for two
    assert invalid
    assert sort_backlogged(subjects, lanes, "echo", room=0)[1] == []


def test_a_lane_is_silent_after_three_periods_with_a_request_out_and_no_word() -> None:
    from bus._lanes import Lane, silent_lanes

    quiet, talking, idle = (Lane(t, f"tasks.{t}.k", "next", f"in.{t}", 1) for t in ("q", "t", "i"))
    quiet.credit = talking.credit = 4
    lanes = [quiet, talking, idle]
    assert silent_lanes(lanes) == []
    talking.heard_at += 1.0  # a delivery or heartbeat each period
    assert silent_lanes(lanes) == []
    talking.heard_at += 1.0
    assert silent_lanes(lanes) == [quiet]  # its third silent period; idle has nothing out
    assert silent_lanes(lanes) == []  # counted again from zero
