"""A knowledge base: an embedder and a vector store behind two calls, ``add`` and ``search``.

``add`` cuts documents into passages (:func:`~agents.kb.chunking.chunk_text`), embeds
them in batches and stores them in the tenant's collection, replacing any earlier
version of the same documents. ``search`` embeds the query and returns the nearest
passages. Inputs are bounded (query and document size, ``k``): a tenant's request
reaches ``search`` through a model's tool call, so its arguments are untrusted.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentbus.errors import KnowledgeBaseError
from agents.kb.chunking import Document, chunk_text
from agents.kb.embed import Embedder
from agents.kb.store import Chunk, Hit, VectorStore, check_name

__all__ = ["KnowledgeBase"]


class KnowledgeBase:
    """Documents in, passages out, per tenant and collection."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        *,
        chunk_chars: int = 800,
        max_doc_chars: int = 1_000_000,
        max_query_chars: int = 2_000,
        max_k: int = 20,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.chunk_chars = chunk_chars
        self.max_doc_chars = max_doc_chars
        self.max_query_chars = max_query_chars
        self.max_k = max_k

    async def add(self, tenant: str, collection: str, docs: Sequence[Document]) -> int:
        """Store ``docs`` (replacing earlier versions); returns the number of passages."""
        check_name("tenant", tenant)
        check_name("collection", collection)
        chunks: list[Chunk] = []
        for doc in docs:
            if not doc.doc_id or len(doc.doc_id) > 512:
                raise KnowledgeBaseError("a document id must have 1-512 characters")
            if len(doc.text) > self.max_doc_chars:
                raise KnowledgeBaseError(
                    f"document {doc.doc_id!r} has {len(doc.text)} characters,"
                    f" the limit is {self.max_doc_chars}"
                )
            for n, text in enumerate(chunk_text(doc.text, self.chunk_chars)):
                chunks.append(Chunk(doc.doc_id, n, doc.source or doc.doc_id, text))
        if not chunks:
            return 0
        vectors = await self.embedder.embed([c.text for c in chunks])
        self.store.put(tenant, collection, self.embedder.name, chunks, vectors)
        return len(chunks)

    async def search(self, tenant: str, collection: str, query: str, k: int = 4) -> list[Hit]:
        """The ``k`` passages nearest to ``query`` (``k`` within 1..max_k), best first."""
        check_name("tenant", tenant)
        check_name("collection", collection)
        if not 1 <= k <= self.max_k:
            raise KnowledgeBaseError(f"k must be within 1..{self.max_k}")
        query = query[: self.max_query_chars]
        if not query.strip():
            return []
        (vector,) = await self.embedder.embed([query])
        return self.store.search(tenant, collection, self.embedder.name, vector, k)
