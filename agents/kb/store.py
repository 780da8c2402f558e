"""Tenant-scoped vector collections: the :class:`VectorStore` seam and its SQLite implementation.

Why SQLite (docs/llm.md, "Retrieval"): it is in Python's standard library, embedded (no
server to run beside each worker), persistent in one file that ``agentbus kb add`` writes
and workers read, transactional (a document is replaced whole or not at all), and safe
for one writer and many readers across processes (WAL). Vectors are stored as float32
blobs; a search scores every chunk of the collection (exact cosine; vectors are unit
length, so a dot product), with the collection's vectors cached in memory until another
connection commits (``PRAGMA data_version``); a sparse query (the hash embedder's)
multiplies only its non-zero slots. That is exact and fast enough for knowledge bases
of some thousands of passages per tenant (docs/llm.md has the figures); past that, put an
approximate index behind the same :class:`VectorStore` protocol (sqlite-vec, pgvector, Qdrant).

Every row carries its tenant, and every statement names it: a tenant reads and writes
only its own collections, whatever the collection is called.

``read_only=True`` opens a file that nothing changes while it is open (baked into an
image under a read-only root, or on a read-only volume) as immutable: no WAL, no lock
files, no writes; ``put`` refuses.
"""

from __future__ import annotations

import heapq
import operator
import sqlite3
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentbus.errors import KnowledgeBaseError
from bus.subjects import is_token

__all__ = ["Chunk", "Hit", "SQLiteStore", "VectorStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    tenant TEXT NOT NULL, name TEXT NOT NULL, embedder TEXT NOT NULL, dim INTEGER NOT NULL,
    PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS chunks (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, doc_id TEXT NOT NULL, chunk INTEGER NOT NULL,
    source TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (tenant, collection, doc_id, chunk)
);
"""


@dataclass(frozen=True, slots=True)
class Chunk:
    """A passage to store: which document, which piece of it, where it came from, its text."""

    doc_id: str
    chunk: int
    source: str
    text: str


@dataclass(frozen=True, slots=True)
class Hit:
    """A passage found for a query, with its cosine similarity."""

    doc_id: str
    chunk: int
    source: str
    text: str
    score: float


class VectorStore(Protocol):
    """Where vectors live: one namespace per tenant, collections inside it."""

    def put(
        self,
        tenant: str,
        collection: str,
        embedder: str,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """Store ``chunks`` (replacing every earlier chunk of their documents)."""
        ...

    def search(
        self, tenant: str, collection: str, embedder: str, vector: Sequence[float], k: int
    ) -> list[Hit]:
        """The ``k`` chunks nearest to ``vector``, best first; [] for an unknown collection."""
        ...

    def count(self, tenant: str, collection: str) -> int:
        """How many chunks the collection holds."""
        ...


def check_name(field: str, value: str) -> str:
    """Tenants and collections follow the subject-token rules (1-64 of [A-Za-z0-9_-])."""
    if not is_token(value):
        raise KnowledgeBaseError(f"invalid {field} {value[:80]!r}: use 1-64 of [A-Za-z0-9_-]")
    return value


class SQLiteStore:
    """A :class:`VectorStore` in one SQLite file (``":memory:"`` for tests)."""

    def __init__(
        self, path: str | Path, *, max_chunks_per_collection: int = 100_000, read_only: bool = False
    ) -> None:
        self.path = str(path)
        self.max_chunks = max_chunks_per_collection
        self.read_only = read_only
        try:
            if read_only:
                uri = Path(self.path).resolve().as_uri() + "?mode=ro&immutable=1"
                self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
                self._db.execute("SELECT COUNT(*) FROM collections").fetchone()  # a KB file, or an error now
            else:
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA busy_timeout=5000")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise KnowledgeBaseError(f"cannot open knowledge base {self.path!r}: {exc}") from exc
        self._cache: dict[tuple[str, str], tuple[int, list[Hit], list[array[float]]]] = {}
        self._version = -1

    def _space(self, tenant: str, collection: str) -> tuple[str, int] | None:
        row = self._db.execute(
            "SELECT embedder, dim FROM collections WHERE tenant = ? AND name = ?", (tenant, collection)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def put(
        self,
        tenant: str,
        collection: str,
        embedder: str,
        chunks: Sequence[Chunk],
        vectors: Sequence[Sequence[float]],
    ) -> None:
        """Store ``chunks`` in one transaction; their documents' earlier chunks are replaced."""
        check_name("tenant", tenant)
        check_name("collection", collection)
        if self.read_only:
            raise KnowledgeBaseError(f"knowledge base {self.path!r} is open read-only")
        if len(chunks) != len(vectors):
            raise KnowledgeBaseError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        if not chunks:
            return
        dim = len(vectors[0])
        if any(len(v) != dim for v in vectors):
            raise KnowledgeBaseError("vectors of unequal length")
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            space = self._space(tenant, collection)
            if space is None:
                db.execute("INSERT INTO collections VALUES (?, ?, ?, ?)", (tenant, collection, embedder, dim))
            elif space != (embedder, dim):
                raise KnowledgeBaseError(
                    f"collection {collection!r} holds vectors of {space[0]} ({space[1]} dimensions),"
                    f" not of {embedder} ({dim}): one embedder per collection"
                )
            for doc_id in {c.doc_id for c in chunks}:
                db.execute(
                    "DELETE FROM chunks WHERE tenant = ? AND collection = ? AND doc_id = ?",
                    (tenant, collection, doc_id),
                )
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (tenant, collection, c.doc_id, c.chunk, c.source, c.text, array("f", v).tobytes())
                    for c, v in zip(chunks, vectors, strict=True)
                ],
            )
            total = self.count(tenant, collection)
            if total > self.max_chunks:
                raise KnowledgeBaseError(
                    f"collection {collection!r} would hold {total} chunks, the limit is {self.max_chunks}"
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._cache.pop((tenant, collection), None)

    def count(self, tenant: str, collection: str) -> int:
        """Chunks in the collection."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM chunks WHERE tenant = ? AND collection = ?", (tenant, collection)
        ).fetchone()
        return int(row[0])

    def collections(self, tenant: str) -> list[tuple[str, str, int]]:
        """The tenant's collections: ``(name, embedder, chunks)``."""
        rows = self._db.execute(
            "SELECT c.name, c.embedder, COUNT(k.chunk) FROM collections c LEFT JOIN chunks k"
            " ON k.tenant = c.tenant AND k.collection = c.name WHERE c.tenant = ? GROUP BY c.name"
            " ORDER BY c.name",
            (tenant,),
        ).fetchall()
        return [(r[0], r[1], int(r[2])) for r in rows]

    def _load(self, tenant: str, collection: str) -> tuple[list[Hit], list[array[float]]]:
        version = int(self._db.execute("PRAGMA data_version").fetchone()[0])
        if version != self._version:  # another connection committed: every cached collection may be stale
            self._cache.clear()
            self._version = version
        cached = self._cache.get((tenant, collection))
        if cached is not None:
            return cached[1], cached[2]
        rows = self._db.execute(
            "SELECT doc_id, chunk, source, text, vector FROM chunks WHERE tenant = ? AND collection = ?"
            " ORDER BY doc_id, chunk",
            (tenant, collection),
        ).fetchall()
        hits = [Hit(r[0], r[1], r[2], r[3], 0.0) for r in rows]
        vectors = []
        for r in rows:
            v: array[float] = array("f")
            v.frombytes(r[4])
            vectors.append(v)
        self._cache[(tenant, collection)] = (version, hits, vectors)
        return hits, vectors

    def search(
        self, tenant: str, collection: str, embedder: str, vector: Sequence[float], k: int
    ) -> list[Hit]:
        """Exact cosine search over the collection's chunks."""
        check_name("tenant", tenant)
        check_name("collection", collection)
        space = self._space(tenant, collection)
        if space is None:
            return []
        if space != (embedder, len(vector)):
            raise KnowledgeBaseError(
                f"collection {collection!r} holds vectors of {space[0]} ({space[1]} dimensions);"
                f" the query is of {embedder} ({len(vector)})"
            )
        hits, vectors = self._load(tenant, collection)
        mul = operator.mul
        nonzero = [i for i, x in enumerate(vector) if x]
        if len(nonzero) * 2 < len(vector):  # a sparse query (the hash embedder's): only its slots count
            weights = [vector[i] for i in nonzero]
            scored = ((sum(map(mul, weights, map(v.__getitem__, nonzero))), i) for i, v in enumerate(vectors))
        else:
            scored = ((sum(map(mul, vector, v)), i) for i, v in enumerate(vectors))
        best = heapq.nlargest(k, scored)
        return [
            Hit(hits[i].doc_id, hits[i].chunk, hits[i].source, hits[i].text, round(score, 6))
            for score, i in best
        ]

    def close(self) -> None:
        """Close the file."""
        self._db.close()
