"""What a tenant learns of a failing model endpoint: its place, what failed, never its URL or body.

Against the scripted OpenAI-compatible server over real HTTP (and a dead port). The
endpoint's URL carries a user, a password and a key, its error bodies a marker: none
of them may reach an exception's ``str()``, which is what the runner and the task agent
put in a tenant's result, dead letter and stream events; what the operator needs
(status, body excerpt, redacted URL, the refused address) must reach the
``agentbus.llm`` log.
"""

from __future__ import annotations

import logging

import pytest

from agentbus.errors import CircuitOpenError, ConfigError, LLMError, ModelHTTPError, ModelUnavailableError
from agents.llm import BreakerConfig, ChatClient, LLMConfig, ModelEndpoint, RetryConfig
from agents.llm import testing as s
from agents.llm.chat import ChatRequest, Message
from bus.embedded import free_port

MARKER = "SECRET-BODY-123"
PASSWORD = "s3cr3t-PASS"
SECRETS = ("opsuser", PASSWORD, "QKEY-777", MARKER, "sk-LIVE-KEY", "127.0.0.1")


def _secret_url(server: s.ScriptedLLM) -> str:
    return f"http://opsuser:{PASSWORD}@127.0.0.1:{server.port}{server.prefix}?key=QKEY-777"


def _request() -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", "hi")])


def _leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def test_a_refused_request_names_neither_url_nor_body_but_the_log_has_them(
    llm: s.ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = LLMConfig(base_url=_secret_url(llm), model="m", api_key="sk-LIVE-KEY")
    client = ChatClient(cfg)
    llm.script(s.status(401, body=f'{{"error": "{MARKER}: key sk-LIVE-KEY rejected\r\n\x1b[31m"}}'))
    try:
        with pytest.raises(ModelHTTPError) as refused:
            await client.chat(_request())
    finally:
        await client.aclose()
    said = str(refused.value)
    assert said == (
        "model endpoint primary answered 401: the request was refused (the endpoint's answer is in"
        " the worker's log)"
    )
    assert (refused.value.status, refused.value.endpoint) == (401, "primary")
    assert MARKER in refused.value.detail  # for code that looks; str() leaves it out
    (record,) = [r for r in caplog.records if r.name == "agentbus.llm"]
    logged = record.getMessage()
    assert record.levelno == logging.WARNING
    assert "HTTP 401" in logged
    assert MARKER in logged
    assert f"http://***@127.0.0.1:{llm.port}/v1?***" in logged  # redacted, still findable
    assert PASSWORD not in caplog.text
    assert "QKEY-777" not in caplog.text
    assert "sk-LIVE-KEY" not in caplog.text  # the key the endpoint echoed is masked in the log too
    assert "\n" not in logged
    assert "\x1b" not in logged


async def test_an_unavailable_endpoint_says_what_failed_by_place_only(
    llm: s.ScriptedLLM, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()  # nothing listens: connection refused
    cfg = LLMConfig(
        base_url=_secret_url(llm),
        fallbacks=(ModelEndpoint(f"http://opsuser:{PASSWORD}@127.0.0.1:{dead}/v1?key=QKEY-777"),),
        model="m",
        retry=RetryConfig(attempts=3, base_s=0.01, max_s=0.05),
        breaker=BreakerConfig(failure_threshold=2, open_s=30.0),
    )
    client = ChatClient(cfg)
    llm.default = lambda body: s.status(503, body=f"{MARKER} upstream 10.0.0.7:8000 down")
    caplog.set_level(logging.DEBUG, logger="agentbus.llm")
    failures: list[LLMError] = []
    try:
        for _ in range(2):  # 503, refused, 503: gives up; then both breakers are open
            with pytest.raises((ModelUnavailableError, CircuitOpenError)) as failed:
                await client.chat(_request())
            failures.append(failed.value)
    finally:
        await client.aclose()
    said = [str(exc) for exc in failures]
    assert said[0] == "model endpoint primary failed: HTTP 503 (attempt 3 of 3)"
    assert said[1].startswith("circuit open for primary, fallback 1: next probe in ")
    assert [_leaks(text) for text in said] == [[], []]
    assert all("10.0.0.7" not in text and str(dead) not in text for text in said)
    assert isinstance(failures[0], ModelUnavailableError)
    assert failures[0].endpoint == "primary"
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "agentbus.llm")
    assert "http_503" in logged
    assert MARKER in logged
    assert f"127.0.0.1:{dead}" in logged  # the refused connection too, at debug
    assert PASSWORD not in caplog.text
    assert "QKEY-777" not in caplog.text


async def test_an_unreachable_endpoint_says_so_without_its_address(caplog: pytest.LogCaptureFixture) -> None:
    dead = free_port()
    cfg = LLMConfig(
        base_url=f"http://opsuser:{PASSWORD}@127.0.0.1:{dead}/v1",
        model="m",
        retry=RetryConfig(attempts=2, base_s=0.01, max_s=0.05),
    )
    client = ChatClient(cfg)
    try:
        with pytest.raises(ModelUnavailableError) as failed:
            await client.chat(_request())
    finally:
        await client.aclose()
    assert str(failed.value) == "model endpoint primary unreachable (connection failed; attempt 2 of 2)"
    assert f"127.0.0.1:{dead}" in caplog.text  # where it tried: in the log only
    assert PASSWORD not in caplog.text


def test_config_errors_do_not_print_a_url_s_credentials() -> None:
    with pytest.raises(ConfigError, match="with a host") as bad:  # refused at start, not by a task
        LLMConfig(base_url=f"http://opsuser:{PASSWORD}@", model="m")
    assert PASSWORD not in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        LLMConfig(
            base_url="http://h/v1", fallbacks=(ModelEndpoint(f"http://u:{PASSWORD}@h:port/v1"),), model="m"
        )
    assert PASSWORD not in str(bad.value)
