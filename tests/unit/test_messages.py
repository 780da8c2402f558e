"""Wire messages: round trips, strict payload typing, schema evolution."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agents.builtin.basic import EchoIn
from bus.messages import (
    DLQ_MAX_DATA_BYTES,
    DeadLetter,
    DlqReason,
    Result,
    Task,
    decoder_for,
    encode,
)


def test_task_round_trip_with_typed_payload() -> None:
    task = Task(id="t1", payload=EchoIn(text="hi", sleep_s=0.5), created_at=12.5, deadline=99.0)
    decoded = decoder_for(EchoIn).decode(encode(task))
    assert decoded == task
    assert isinstance(decoded.payload, EchoIn)


def test_task_omits_defaults_on_the_wire() -> None:
    raw = msgspec.json.decode(encode(Task(id="t1", payload={"text": "x"})))
    assert raw == {"id": "t1", "payload": {"text": "x"}}


def test_result_round_trip() -> None:
    result: Result[Any] = Result(
        task_id="t1",
        tenant="acme",
        kind="echo",
        ok=True,
        output={"text": "hi"},
        attempts=2,
        worker="w1",
        created_at=1.0,
        finished_at=2.0,
    )
    assert msgspec.json.decode(encode(result), type=Result[Any]) == result


def test_failed_result_round_trip() -> None:
    result: Result[None] = Result(task_id="t1", tenant="acme", kind="echo", ok=False, error="rejected: no")
    decoded = msgspec.json.decode(encode(result), type=Result[Any])
    assert decoded.ok is False
    assert decoded.output is None
    assert decoded.error == "rejected: no"


def test_dead_letter_round_trip_keeps_arbitrary_bytes() -> None:
    original = bytes(range(256)) + b"\xff\x00 not json"
    letter = DeadLetter(
        reason=DlqReason.MALFORMED,
        detail="bad",
        tenant="acme",
        kind="echo",
        task_id="t1",
        attempts=1,
        stream_seq=7,
        failed_at=3.0,
        worker="w1",
        data=original,
    )
    decoded = msgspec.json.decode(encode(letter), type=DeadLetter)
    assert decoded == letter
    assert decoded.data == original
    assert decoded.reason is DlqReason.MALFORMED


@pytest.mark.parametrize("reason", list(DlqReason))
def test_every_dlq_reason_is_a_wire_string(reason: DlqReason) -> None:
    letter = DeadLetter(reason=reason, detail="", tenant="a", kind="b")
    assert msgspec.json.decode(encode(letter))["reason"] == str(reason)
    assert msgspec.json.decode(encode(letter), type=DeadLetter).reason is reason


def test_unknown_dlq_reason_is_rejected() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"reason":"bogus","detail":"","tenant":"a","kind":"b"}', type=DeadLetter)


def test_dlq_data_cap_is_positive() -> None:
    assert DLQ_MAX_DATA_BYTES >= 64 * 1024


@pytest.mark.parametrize(
    "payload",
    [
        b'{"id":"t1","payload":{"text":5}}',  # wrong field type
        b'{"id":"t1","payload":{}}',  # missing required field
        b'{"id":"t1","payload":"hello"}',  # not an object
        b'{"id":"t1","payload":{"text":"x","sleep_s":"soon"}}',
    ],
)
def test_decoder_rejects_wrong_payload_types(payload: bytes) -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.payload"):
        decoder_for(EchoIn).decode(payload)


@pytest.mark.parametrize(
    "envelope",
    [
        b'{"payload":{"text":"x"}}',  # no id
        b'{"id":1,"payload":{"text":"x"}}',
        b'{"id":"t1","payload":{"text":"x"},"deadline":"tomorrow"}',
        b"[1, 2]",
    ],
)
def test_decoder_rejects_bad_envelopes(envelope: bytes) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        decoder_for(EchoIn).decode(envelope)
    assert "$.payload" not in str(info.value)


def test_decoder_reports_non_json_as_decode_error_not_validation() -> None:
    with pytest.raises(msgspec.DecodeError) as info:
        decoder_for(EchoIn).decode(b"\x00\x01 definitely not json")
    assert not isinstance(info.value, msgspec.ValidationError)


def test_old_message_without_optional_fields_decodes() -> None:
    """A minimal task (any NATS client, an older publisher) decodes with defaults."""
    task = decoder_for(EchoIn).decode(b'{"id":"t1","payload":{"text":"x"}}')
    assert task.created_at == 0.0
    assert task.deadline is None
    assert task.tenant is None
    assert task.kind is None
    assert task.payload == EchoIn(text="x")


def test_minimal_result_and_dead_letter_decode() -> None:
    result = msgspec.json.decode(b'{"task_id":"t","tenant":"a","kind":"k","ok":true}', type=Result[Any])
    assert (result.output, result.error, result.attempts, result.worker) == (None, None, 1, "")
    letter = msgspec.json.decode(
        b'{"reason":"rejected","detail":"d","tenant":"a","kind":"k"}', type=DeadLetter
    )
    assert (letter.task_id, letter.attempts, letter.data, letter.data_truncated) == ("", 0, b"", False)


def test_newer_message_with_unknown_fields_decodes() -> None:
    """Schemas evolve by appending fields: an old reader ignores fields it does not know."""
    data = b'{"id":"t1","payload":{"text":"x","future":1},"priority":5,"trace":{"a":1}}'
    task = decoder_for(EchoIn).decode(data)
    assert task.id == "t1"
    assert task.payload.text == "x"


def test_decoder_for_builds_a_typed_decoder() -> None:
    dec = decoder_for(int)
    assert dec.decode(b'{"id":"x","payload":3}').payload == 3
    with pytest.raises(msgspec.ValidationError):
        dec.decode(b'{"id":"x","payload":"3"}')
