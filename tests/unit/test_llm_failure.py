"""The Retry-After parser and URL redaction of :mod:`agents.llm._failure` (hostile input included)."""

from __future__ import annotations

import email.utils
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.errors import ConfigError
from agents.llm import LLMConfig, RetryConfig
from agents.llm._failure import redact_url, retry_after_s

# -- the parser ---------------------------------------------------------------------------------


def _http_date(delta_s: float) -> str:
    return email.utils.formatdate(time.time() + delta_s, usegmt=True)


def test_retry_after_is_cut_to_the_configured_bound() -> None:
    waits = {
        "10^12 s": retry_after_s({"retry-after": "1000000000000"}, 60.0),
        "20 digits": retry_after_s({"retry-after": "99999999999999999999"}, 60.0),
        "year 9999": retry_after_s({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, 60.0),
        "a day, as a date": retry_after_s({"retry-after": _http_date(86_400)}, 60.0),
        "10^15 ms": retry_after_s({"retry-after-ms": "1000000000000000"}, 60.0),
        "a smaller bound": retry_after_s({"retry-after": "30"}, 5.0),
    }
    assert waits == {k: (5.0 if k == "a smaller bound" else 60.0) for k in waits}


def test_retry_after_within_the_bound_is_believed() -> None:
    assert retry_after_s({"retry-after": "7"}, 60.0) == 7.0
    assert retry_after_s({"retry-after": " 0.5 "}, 60.0) == 0.5
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}, 60.0) == 1.5  # ms wins
    assert retry_after_s({"retry-after": "0"}, 60.0) == 0.0
    assert retry_after_s({"retry-after": "Sun, 06 Nov 1994 08:49:37 GMT"}, 60.0) == 0.0  # past: now
    assert 15.0 < (retry_after_s({"retry-after": _http_date(20)}, 60.0) or 0) <= 20.0
    assert retry_after_s({}, 60.0) is None


def test_a_retry_after_that_is_no_number_or_date_is_ignored() -> None:
    garbage = ["soon", "-5", "NaN", "nan", "inf", "-inf", "1e3", "+5", "5 s", "0x10", "", " ", "١٢"]
    garbage += ["9" * 65, "x" * 10_000, "Mon, 32 Foo 2020 25:61:61 GMT", "Fri, 31 Dec 99999 23:59:59 GMT"]
    read = {value: retry_after_s({"retry-after": value}, 60.0) for value in garbage}
    read |= {f"ms={value}": retry_after_s({"retry-after-ms": value}, 60.0) for value in garbage}
    assert read == {key: None for key in read}  # the client's own backoff applies
    # an unreadable retry-after-ms does not hide a readable Retry-After
    assert retry_after_s({"retry-after-ms": "1e400", "retry-after": "3"}, 60.0) == 3.0


@given(
    value=st.text(max_size=100) | st.from_regex(r"[0-9.eE+-]{1,40}", fullmatch=True),
    ms=st.booleans(),
    bound=st.floats(0, 1e6),
)
def test_no_retry_after_breaks_the_parser_or_the_bound(value: str, ms: bool, bound: float) -> None:
    wait = retry_after_s({"retry-after-ms" if ms else "retry-after": value}, bound)
    assert wait is None or 0.0 <= wait <= bound


def test_retry_after_bound_is_configured_and_checked() -> None:
    assert RetryConfig().retry_after_max_s == 60.0
    assert LLMConfig.from_env({"AGENTBUS_LLM_RETRY_AFTER_MAX_S": "5"}).retry.retry_after_max_s == 5.0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ConfigError, match="RETRY_AFTER_MAX_S"):
            LLMConfig.from_env({"AGENTBUS_LLM_RETRY_AFTER_MAX_S": bad})


def test_urls_are_redacted_for_logs_and_metrics() -> None:
    assert redact_url("http://model:8000/v1") == "http://model:8000/v1"  # nothing to hide: unchanged
    assert redact_url("https://u:p@h.internal:8443/v1?api-key=k#f") == "https://***@h.internal:8443/v1?***"
    assert redact_url("https://sk-key@h/v1") == "https://***@h/v1"
    assert redact_url("http://[::1") == "<unparseable URL>"
