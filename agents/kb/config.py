"""Knowledge-base configuration, read from ``AGENTBUS_KB_*`` once, at start.

==============================  ==========================================================
``AGENTBUS_KB_PATH``             the SQLite file (default ``agentbus-kb.sqlite3``)
``AGENTBUS_KB_EMBED_URL``        an OpenAI-compatible base URL (``.../v1``); unset: the
                                 offline hash embedder
``AGENTBUS_KB_EMBED_MODEL``      the embedding model (required with a URL)
``AGENTBUS_KB_EMBED_API_KEY``    its key (or ``..._API_KEY_FILE``, a mounted Secret)
``AGENTBUS_KB_EMBED_BATCH``      texts per embeddings request (default 64)
``AGENTBUS_KB_HASH_DIM``         dimensions of the hash embedder (default 512)
``AGENTBUS_KB_READ_ONLY``        open the file immutable, for reading only (a read-only
                                 root or volume; default off)
==============================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agentbus.env import Env
from agentbus.errors import ConfigError
from agents.kb.base import KnowledgeBase
from agents.kb.embed import Embedder, HashEmbedder, OpenAIEmbedder
from agents.kb.store import SQLiteStore

__all__ = ["KBConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class KBConfig:
    """Where the knowledge base is and which embedder fills and queries it."""

    path: str = "agentbus-kb.sqlite3"
    embed_url: str = ""  # empty: HashEmbedder (offline, deterministic)
    embed_model: str = ""
    embed_api_key: str = field(default="", repr=False)
    embed_batch: int = 64  # texts per /embeddings request
    hash_dim: int = 512  # more dimensions: fewer hash collisions, larger vectors
    read_only: bool = False  # an immutable file: no WAL, no locks (what workers may need)

    def __post_init__(self) -> None:
        if self.embed_url:
            parts = urlsplit(self.embed_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError("AGENTBUS_KB_EMBED_URL must be an http(s) URL with a host")
            if not self.embed_model:
                raise ConfigError("AGENTBUS_KB_EMBED_URL needs AGENTBUS_KB_EMBED_MODEL")
        if self.embed_batch < 1:
            raise ConfigError("AGENTBUS_KB_EMBED_BATCH must be >= 1")
        if not 16 <= self.hash_dim <= 65_536:
            raise ConfigError("AGENTBUS_KB_HASH_DIM must be within 16..65536")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KBConfig:
        """Defaults overlaid with ``AGENTBUS_KB_*``."""
        env = Env(environ)
        batch = env.integer("AGENTBUS_KB_EMBED_BATCH")
        dim = env.integer("AGENTBUS_KB_HASH_DIM")
        read_only = env.flag("AGENTBUS_KB_READ_ONLY")
        return cls(
            path=env.text("AGENTBUS_KB_PATH") or "agentbus-kb.sqlite3",
            embed_url=env.text("AGENTBUS_KB_EMBED_URL") or "",
            embed_model=env.text("AGENTBUS_KB_EMBED_MODEL") or "",
            embed_api_key=env.secret("AGENTBUS_KB_EMBED_API_KEY") or "",
            embed_batch=64 if batch is None else batch,
            hash_dim=512 if dim is None else dim,
            read_only=bool(read_only),
        )

    def embedder(self) -> Embedder:
        """The configured embedder."""
        if not self.embed_url:
            return HashEmbedder(self.hash_dim)
        return OpenAIEmbedder(
            self.embed_url, self.embed_model, api_key=self.embed_api_key, batch_size=self.embed_batch
        )

    def open(self, path: str | None = None) -> KnowledgeBase:
        """A knowledge base over the SQLite file ``path`` (default: ``self.path``)."""
        return KnowledgeBase(SQLiteStore(path or self.path, read_only=self.read_only), self.embedder())
