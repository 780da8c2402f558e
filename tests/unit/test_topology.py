"""Streams and consumers: spec validation, and what a real nats-server stores."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StorageType

from agentbus.errors import ConfigError, InvalidSubjectError
from bus.topology import (
    DLQ_STREAM,
    TASKS_STREAM,
    ConsumerSpec,
    StreamLimits,
    consumer_name,
    ensure_consumer,
    ensure_streams,
)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ack_wait_s": 0},
        {"ack_wait_s": -1.0},
        {"max_deliver": 0},
        {"max_ack_pending": 0},
        {"backoff_s": (1.0, 2.0, 3.0), "max_deliver": 2},  # more delays than deliveries
        {"backoff_s": (1.0, 0.0)},
        {"backoff_s": (-1.0,)},
    ],
)
def test_consumer_spec_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ConsumerSpec(kind="echo", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["", "a.b", "*", ">"])
def test_consumer_spec_rejects_bad_kinds(kind: str) -> None:
    with pytest.raises(InvalidSubjectError):
        ConsumerSpec(kind=kind)


def test_redelivery_backoff_is_what_was_asked() -> None:
    assert ConsumerSpec(kind="echo", max_deliver=3, backoff_s=(1.0, 5.0)).redelivery_backoff_s() == [1.0, 5.0]


def test_redelivery_backoff_entries_are_positive_and_bounded_by_max_deliver() -> None:
    for spec in (ConsumerSpec(kind="e"), ConsumerSpec(kind="e", ack_wait_s=2, max_deliver=4)):
        backoff = spec.redelivery_backoff_s()
        assert len(backoff) <= spec.max_deliver
        assert all(b > 0 for b in backoff)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duplicate_window_s": 60.0},
        {"tasks_max_msgs": 0},
        {"tasks_max_bytes": -1},
        {"max_msg_bytes": 0},
        {"replicas": 2},
    ],
)
def test_stream_limits_reject_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        StreamLimits(**kwargs)  # type: ignore[arg-type]


def test_consumer_name() -> None:
    assert consumer_name("echo") == "agents-echo"


@pytest.mark.integration
async def test_ensure_streams_creates_tasks_and_dlq(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js)  # idempotent: a second call (the fixture made the first) changes nothing
    tasks = (await js.stream_info(TASKS_STREAM)).config
    assert tasks.subjects == ["tasks.*.*"]
    assert tasks.retention == RetentionPolicy.WORK_QUEUE
    assert tasks.discard == DiscardPolicy.NEW
    assert tasks.storage == StorageType.FILE
    assert tasks.duplicate_window is not None
    assert tasks.duplicate_window >= 120
    limits = StreamLimits()
    assert tasks.max_msgs == limits.tasks_max_msgs
    assert tasks.max_bytes == limits.tasks_max_bytes
    assert tasks.max_msg_size == limits.max_msg_bytes
    dlq = (await js.stream_info(DLQ_STREAM)).config
    assert dlq.subjects == ["dlq.>"]
    assert dlq.retention == RetentionPolicy.LIMITS
    assert dlq.storage == StorageType.FILE
    assert dlq.max_age == pytest.approx(limits.dlq_max_age_s)


@pytest.mark.integration
async def test_ensure_streams_updates_limits(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_streams(js, StreamLimits(tasks_max_msgs=7, max_msg_bytes=4096, duplicate_window_s=300))
    config = (await js.stream_info(TASKS_STREAM)).config
    assert config.max_msgs == 7
    assert config.max_msg_size == 4096
    assert config.duplicate_window == pytest.approx(300)


@pytest.mark.integration
@pytest.mark.parametrize(
    "spec",
    [
        ConsumerSpec(kind="echo", ack_wait_s=2.5, max_deliver=3, max_ack_pending=77),
        ConsumerSpec(kind="echo", ack_wait_s=1.5, max_deliver=4, backoff_s=(1.5, 4.0, 9.0)),
        ConsumerSpec(kind="summarize", ack_wait_s=0.5, max_deliver=1, max_ack_pending=1, max_waiting=3),
    ],
    ids=["plain", "backoff", "tight"],
)
async def test_ensure_consumer_stores_every_knob_in_seconds(nc: Client, spec: ConsumerSpec) -> None:
    js = nc.jetstream()
    await ensure_consumer(js, spec)
    await ensure_consumer(js, spec)  # idempotent
    info = await js.consumer_info(TASKS_STREAM, consumer_name(spec.kind))
    config = info.config
    assert config.durable_name == consumer_name(spec.kind)
    assert config.filter_subject == f"tasks.*.{spec.kind}"
    assert config.ack_policy == AckPolicy.EXPLICIT
    assert config.ack_wait == pytest.approx(spec.ack_wait_s)  # seconds, not ns or ms
    assert config.max_deliver == -1  # unlimited: the worker judges deliveries (spec.max_deliver)
    assert config.max_ack_pending == spec.max_ack_pending
    assert config.max_waiting == spec.max_waiting
    assert list(config.backoff or []) == pytest.approx(spec.redelivery_backoff_s())


@pytest.mark.integration
async def test_with_a_backoff_the_server_waits_its_first_entry(nc: Client) -> None:
    """nats-server replaces ack_wait by backoff[0]; what the worker's heartbeats must beat."""
    js = nc.jetstream()
    await ensure_consumer(js, ConsumerSpec(kind="echo", ack_wait_s=30, max_deliver=3, backoff_s=(2.0, 8.0)))
    config = (await js.consumer_info(TASKS_STREAM, "agents-echo")).config
    assert config.ack_wait == pytest.approx(2.0)
    assert list(config.backoff or []) == pytest.approx([2.0, 8.0])


@pytest.mark.integration
async def test_ensure_consumer_updates_an_existing_consumer(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_consumer(js, ConsumerSpec(kind="echo", ack_wait_s=10, max_deliver=5))
    await ensure_consumer(js, ConsumerSpec(kind="echo", ack_wait_s=4, max_deliver=2))
    config = (await js.consumer_info(TASKS_STREAM, "agents-echo")).config
    assert config.ack_wait == pytest.approx(4)
    assert config.max_deliver == -1


@pytest.mark.integration
async def test_ensure_consumer_lifts_the_server_limit_of_a_consumer_made_by_older_code(nc: Client) -> None:
    """Older agentbus set max_deliver on the server (and followed its forgeable advisory)."""
    js = nc.jetstream()
    old = ConsumerConfig(
        durable_name="agents-echo",
        name="agents-echo",
        filter_subject="tasks.*.echo",
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,
        max_deliver=5,
        max_ack_pending=20_000,
        max_waiting=512,
    )
    await js.add_consumer(TASKS_STREAM, old)
    assert (await js.consumer_info(TASKS_STREAM, "agents-echo")).config.max_deliver == 5
    await ensure_consumer(js, ConsumerSpec(kind="echo", max_deliver=5))
    assert (await js.consumer_info(TASKS_STREAM, "agents-echo")).config.max_deliver == -1


@pytest.mark.integration
async def test_one_consumer_per_kind(nc: Client) -> None:
    js = nc.jetstream()
    for kind in ("echo", "summarize", "order"):
        await ensure_consumer(js, ConsumerSpec(kind=kind))
    names = sorted(c.name for c in await js.consumers_info(TASKS_STREAM))
    assert names == ["agents-echo", "agents-order", "agents-summarize"]
