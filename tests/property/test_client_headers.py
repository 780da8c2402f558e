"""``bus._client.parse_headers`` reads a delivery's header block as nats-py does (Hypothesis)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from bus._client import parse_headers

printable_ascii = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":")
names = st.text(printable_ascii, min_size=1, max_size=20)
values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


def _nats_py(block: bytes) -> dict[str, str] | None:
    return Client._parse_header_lines(block[len(b"NATS/1.0\r\n") :]) or None


@given(st.dictionaries(names, values, max_size=6))
def test_the_fields_nats_py_would_parse(fields: dict[str, str]) -> None:
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in fields.items()) + b"\r\n"
    assert parse_headers(block) == _nats_py(block)
    assert parse_headers(block) == ({k: v.encode().strip().decode() for k, v in fields.items()} or None)


@given(st.lists(st.binary(max_size=30), max_size=6))
def test_any_lines_parse_as_nats_py_parses_them(lines: list[bytes]) -> None:
    block = b"NATS/1.0\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_headers(block) == _nats_py(block)


def test_odd_lines_are_skipped_like_nats_py_skips_them() -> None:
    lines = [b"Nats-Msg-Id: a:b: c ", b"no colon here", b"bad name: x", b":empty name", b"K:\tv"]
    block = b"NATS/1.0\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    assert parse_headers(block) == {"Nats-Msg-Id": "a:b: c", "": "empty name", "K": "v"}
    assert parse_headers(block) == _nats_py(block)
