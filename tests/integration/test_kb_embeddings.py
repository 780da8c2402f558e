"""Embeddings through the OpenAI-compatible ``/v1/embeddings`` of the local test server:
batched requests, vectors in order, and every unusable answer refused with EmbeddingError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentbus.errors import EmbeddingError
from agents.config import WorkerConfig
from agents.kb import Document, KnowledgeBase, OpenAIEmbedder, SQLiteStore
from agents.llm import LLMConfig, OfflineBrain, Plan, Run, Toolbox, planned_call, task_agent
from agents.llm import testing as s
from agents.llm.retrieval import RetrieveTool
from agents.registry import Registry
from agents.worker import Worker
from bus.publisher import Publisher

pytestmark = pytest.mark.integration


async def test_texts_are_embedded_in_batches_in_order(llm: s.ScriptedLLM) -> None:
    emb = OpenAIEmbedder(llm.url, "embed-small", api_key="k", batch_size=3)
    texts = [f"text number {i}" for i in range(7)]
    try:
        vectors = await emb.embed(texts)
    finally:
        await emb.aclose()
    assert [r.body["input"] for r in llm.embedding_requests] == [texts[0:3], texts[3:6], texts[6:7]]
    assert {r.body["model"] for r in llm.embedding_requests} == {"embed-small"}
    assert vectors == [pytest.approx(llm.embedder.vector(t)) for t in texts]
    assert emb.dim == 512


async def test_a_knowledge_base_on_the_embeddings_endpoint(llm: s.ScriptedLLM) -> None:
    emb = OpenAIEmbedder(llm.url, "embed-small")
    kb = KnowledgeBase(SQLiteStore(":memory:"), emb)
    try:
        await kb.add(
            "acme",
            "c",
            [
                Document("refunds", "Refunds take 5 to 10 business days."),
                Document("sso", "SAML single sign-on."),
            ],
        )
        hits = await kb.search("acme", "c", "how many business days for refunds", k=1)
    finally:
        await emb.aclose()
    assert [h.doc_id for h in hits] == ["refunds"]
    assert len(llm.embedding_requests) == 2  # one batch for the documents, one for the query


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        (s.status(500), "answered 500"),
        (s.malformed(), "unreadable"),
        (s.Reply(body=b'{"data": [{"embedding": [1.0], "index": 0}]}'), "asked for 2"),
        (
            s.Reply(
                body=b'{"data": [{"embedding": [1.0], "index": 0}, {"embedding": [1.0, 2.0], "index": 1}]}'
            ),
            "unequal",
        ),
        (
            s.Reply(
                body=json.dumps(
                    {"data": [{"embedding": [1e308, 1e308], "index": i} for i in range(2)]}
                ).encode()
            ),
            "finite",
        ),
        (
            s.Reply(body=b'{"data": [{"embedding": [1.0], "index": 1}, {"embedding": [1.0], "index": 1}]}'),
            "asked",
        ),
    ],
)
async def test_unusable_answers_are_refused(llm: s.ScriptedLLM, reply: s.Reply, why: str) -> None:
    llm.script_embeddings(reply)
    emb = OpenAIEmbedder(llm.url, "m")
    try:
        with pytest.raises(EmbeddingError, match=why):
            await emb.embed(["a", "b"])
    finally:
        await emb.aclose()


async def test_an_unreachable_endpoint_is_an_embedding_error() -> None:
    emb = OpenAIEmbedder("http://127.0.0.1:9/v1", "m", timeout_s=5)
    try:
        with pytest.raises(EmbeddingError, match="unreachable"):
            await emb.embed(["a"])
    finally:
        await emb.aclose()


async def test_retrieve_with_the_embeddings_endpoint_in_a_handlers_eager_first_step(
    llm: s.ScriptedLLM, nats_url: str, nc: Any
) -> None:
    """An offline brain retrieves before anything suspends: httpx's anyio scopes need their own task."""
    kb = KnowledgeBase(SQLiteStore(":memory:"), OpenAIEmbedder(llm.url, "m"))
    await kb.add("acme", "c", [Document("refunds", "Refunds take 5 to 10 business days.")])

    def rules(run: Run) -> Plan:
        if not run.turns:
            return Plan([planned_call("retrieve", {"query": "refund days"}, id="c1")])
        last = run.turns[-1].outcomes[0]
        return Plan([], last.result["citations"][0] if last.ok else last.error)

    spec = task_agent(
        kind="kb", tools=Toolbox([RetrieveTool("c", kb=kb)]), offline=OfflineBrain(rules), config=LLMConfig()
    )
    worker = Worker(WorkerConfig(nats_url=nats_url, http_port=-1), Registry([spec]))
    await worker.start()
    try:
        result = await Publisher(nc).call("acme", "kb", {"request": "refunds?"}, timeout_s=30)
    finally:
        await worker.stop()
    assert result.output is not None
    assert result.output["answer"] == "[1] refunds#0"
