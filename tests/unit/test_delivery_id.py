"""``Context.delivery`` names one delivery: the consumer and its sequence from the ack subject,
in both of JetStream's ack subject forms; a repeated delivery count cannot hide a new delivery."""

from __future__ import annotations

import logging

from hypothesis import given
from hypothesis import strategies as st

from agents.api import Context
from bus.consumer import delivery_id

V1 = "$JS.ACK.TASKS.t-echo-ab12.2.1041.77.1733500000000000000.3"
V2 = "$JS.ACK.hub.ACCHASH.TASKS.t-echo-ab12.2.1041.78.1733500000000000001.3.xyz"


def test_the_consumer_and_its_sequence_in_both_forms() -> None:
    assert delivery_id(V1) == "t-echo-ab12:77"
    assert delivery_id(V2) == "t-echo-ab12:78"
    assert delivery_id(V2.rsplit(".", 1)[0]) == "t-echo-ab12:78"  # 11 tokens: no random suffix


def test_the_same_count_from_two_deliveries_gives_two_ids() -> None:
    again = V1.replace(".77.", ".91.")  # a new leader delivers with count 2 again
    assert delivery_id(again) != delivery_id(V1)


@given(st.lists(st.text(alphabet="ab:7", max_size=3), max_size=14))
def test_any_subject_gives_an_id_only_in_an_ack_subject_shape(tokens: list[str]) -> None:
    got = delivery_id(".".join(tokens))  # never raises: the subject came from the wire
    if len(tokens) == 9:
        assert got == f"{tokens[3]}:{tokens[6]}"
    elif len(tokens) >= 11:
        assert got == f"{tokens[5]}:{tokens[8]}"
    else:
        assert got == ""


def _context(ack_subject: str = "") -> Context:
    async def submit(*_: object, **__: object) -> object:
        raise AssertionError("not used")

    async def emit(*_: object) -> None:
        raise AssertionError("not used")

    return Context(
        tenant="acme", kind="echo", task_id="t1", attempt=2, deadline=None,
        log=logging.getLogger("test"), submit=submit, emit=emit, ack_subject=ack_subject,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_handler_sees_its_delivery() -> None:
    assert _context(V1).delivery == "t-echo-ab12:77"
    assert _context().delivery == ""  # outside a worker (agents.testing)
