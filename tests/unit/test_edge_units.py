"""The edge site's pure parts: when a source counts as stalled, the cloud's API prefix, and the
parsing of the cloud's stream info reply (server bytes: anything must end in a value or a
BusError)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.errors import BusError, InvalidSubjectError
from bus.edge import SourceStatus, cloud_api, source_stalled
from bus.edge import _decode as decode
from bus.edge import _StreamInfo as StreamInfo


def status(idle_s: float | None) -> SourceStatus:
    return SourceStatus(seq=7, lag=0, idle_s=idle_s)


def test_a_source_heard_from_since_the_uplink_returned_is_running() -> None:
    assert not source_stalled(status(0.5), up_for_s=10, grace_s=5)
    assert not source_stalled(status(9.9), up_for_s=10, grace_s=5)


def test_a_source_silent_since_before_the_uplink_returned_is_stalled() -> None:
    assert source_stalled(status(40.0), up_for_s=10, grace_s=5)
    assert source_stalled(status(10.0), up_for_s=10, grace_s=5)
    assert source_stalled(status(None), up_for_s=10, grace_s=5)  # never heard from


def test_the_uplink_gets_its_grace_first() -> None:
    assert not source_stalled(status(40.0), up_for_s=4.9, grace_s=5)
    assert not source_stalled(status(None), up_for_s=0, grace_s=5)


def test_cloud_api() -> None:
    assert cloud_api() == "$JS.API"
    assert cloud_api("hub") == "$JS.hub.API"
    with pytest.raises(InvalidSubjectError):
        cloud_api("hub.>")  # a domain never widens the subject


def test_a_stream_info_reply_with_the_source_position() -> None:
    data = (
        b'{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{},"sources":'
        b'[{"name":"EDGE_TASKS","external":{"api":"$JS.edge.API","deliver":""},"lag":0,"seq":11,'
        b'"active":986868157}]}'
    )
    info = decode(StreamInfo, data, "x")
    assert info.sources is not None
    assert info.sources[0].seq == 11
    assert info.sources[0].external is not None
    assert info.sources[0].external.api == "$JS.edge.API"


def test_an_error_reply_raises() -> None:
    with pytest.raises(BusError, match="stream not found"):
        decode(StreamInfo, b'{"error":{"code":404,"err_code":10059,"description":"stream not found"}}', "x")


@given(st.binary(max_size=300))
def test_any_reply_bytes_decode_or_raise_bus_error(data: bytes) -> None:
    with contextlib.suppress(BusError):  # anything else (a TypeError, say) fails the test
        decode(StreamInfo, data, "x")


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(["sources", "error", "seq", "active", "external", "api", "name"]),
                c,
                max_size=4,
            )
        ),
        max_leaves=12,
    )
)
def test_any_json_shape_decodes_or_raises_bus_error(value: object) -> None:
    with contextlib.suppress(BusError):
        decode(StreamInfo, json.dumps({"sources": value}).encode(), "x")
