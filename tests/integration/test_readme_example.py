"""The README's agent example runs as printed."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import pytest

from agents.api import AgentSpec
from agents.config import WorkerConfig
from agents.registry import Registry
from agents.worker import Worker
from bus.connection import connect
from bus.publisher import Publisher

README = Path(__file__).resolve().parents[2] / "README.md"


def _example_module() -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    source = next(b for b in blocks if "@agent(" in b)
    module = types.ModuleType("readme_example")
    exec(compile(source, str(README), "exec"), module.__dict__)
    return module


@pytest.mark.integration
async def test_readme_agent_answers_retries_and_rejects(nats_url: str) -> None:
    module = _example_module()
    spec: AgentSpec[Any, Any] = module.answer
    config = WorkerConfig(nats_url=nats_url, http_port=-1, retry_base_s=0.01, retry_max_s=0.05)
    worker = Worker(config, Registry([spec]))
    await worker.start()
    nc = await connect(nats_url)
    try:
        pub = Publisher(nc)
        ok = await pub.call("acme", "answer", {"text": "hi"}, timeout_s=20, output_type=module.Answer)
        assert ok.ok
        assert ok.output == module.Answer(text="acme asked 'hi'")

        flaky = await pub.call("globex", "answer", {"text": "flaky"}, timeout_s=20)
        assert flaky.ok
        assert flaky.attempts == 2

        rejected = await pub.call("acme", "answer", {"text": ""}, timeout_s=20)
        assert not rejected.ok
        assert rejected.error == "rejected: empty question"
    finally:
        await nc.close()
        await worker.stop()
