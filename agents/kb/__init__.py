"""Knowledge bases for agents: embeddings, tenant-scoped vector collections, search.

    kb = KBConfig.from_env().open()           # AGENTBUS_KB_* (default: offline hash embedder)
    await kb.add("acme", "handbook", [Document("refunds.md", text)])
    hits = await kb.search("acme", "handbook", "how long do refunds take?", k=3)

LLM agents reach a knowledge base through the ``retrieve`` tool
(:func:`agents.llm.retrieval.retrieve_tool`); operators fill it with ``agentbus kb add``.
See docs/llm.md, "Retrieval".
"""

from agents.kb.base import KnowledgeBase
from agents.kb.chunking import Document, chunk_text
from agents.kb.config import KBConfig
from agents.kb.embed import Embedder, HashEmbedder, OpenAIEmbedder, normalize
from agents.kb.store import Chunk, Hit, SQLiteStore, VectorStore

__all__ = [
    "Chunk",
    "Document",
    "Embedder",
    "HashEmbedder",
    "Hit",
    "KBConfig",
    "KnowledgeBase",
    "OpenAIEmbedder",
    "SQLiteStore",
    "VectorStore",
    "chunk_text",
    "normalize",
]
