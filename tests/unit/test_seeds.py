"""Several NATS URLs in one ``--nats-url`` / ``AGENTBUS_NATS_URL``: a cluster's seeds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.errors import ConfigError
from bus.connection import _seeds, redact_url

_HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z0-9-]{1,8}){0,2}", fullmatch=True)
_URL = st.builds(lambda h, p: f"nats://{h}:{p}", _HOST, st.integers(1, 65535))


@given(st.lists(_URL, min_size=1, max_size=5), st.sampled_from([",", ", ", " ,", ",,"]))
def test_every_seed_is_kept_in_order(urls: list[str], sep: str) -> None:
    assert _seeds(sep.join(urls)) == urls


def test_one_url_is_a_pool_of_one() -> None:
    assert _seeds("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"]


@pytest.mark.parametrize("value", ["", " ", ",", " , ,"])
def test_no_url_at_all_is_a_configuration_error(value: str) -> None:
    with pytest.raises(ConfigError):
        _seeds(value)


def test_credentials_of_every_seed_are_redacted() -> None:
    assert redact_url("nats://a:pw@n1:4222,nats://tok@n2:4222") == "nats://***@n1:4222,nats://***@n2:4222"
