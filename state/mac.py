"""The cluster key: HMAC-SHA256 tags over gossip packets and Redis snapshots.

Every worker of a deployment holds the same 32-byte key (``AGENTBUS_CLUSTER_KEY_FILE``,
written by ``agentbus auth init`` as ``DIR/cluster.key``: 64 hex characters). A tag
binds a *domain* (``gossip`` or ``snapshot``) and every part of what it covers, each
part length-prefixed, so bytes tagged for one use or one sender never verify for
another. Checks are constant time (``hmac.compare_digest``).

The key authenticates *membership of the cluster*, not one replica: any holder can tag
anything. What an authenticated peer may still say about other replicas is bounded by
the merge rules (``state._guard``), not by the key.
"""

from __future__ import annotations

import hashlib
import hmac

from agentbus.errors import ConfigError

__all__ = ["KEY_BYTES", "TAG_BYTES", "ClusterKey"]

KEY_BYTES = 32
TAG_BYTES = 32


class ClusterKey:
    """A 32-byte shared secret; never printed."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"a cluster key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def from_hex(cls, text: str, *, source: str = "cluster key") -> ClusterKey:
        """Parse 64 hex characters (surrounding whitespace, e.g. a trailing newline, allowed)."""
        text = text.strip()
        if len(text) != 2 * KEY_BYTES:
            raise ConfigError(f"{source}: expected {2 * KEY_BYTES} hex characters, got {len(text)}")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ConfigError(f"{source}: expected {2 * KEY_BYTES} hex characters") from None

    @classmethod
    def from_file(cls, path: str) -> ClusterKey:
        """Read a key file; a missing, unreadable or malformed file is a ConfigError."""
        try:
            with open(path, encoding="ascii") as f:
                text = f.read(4 * KEY_BYTES + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cluster key file {path!r}: not readable ({exc})") from None
        return cls.from_hex(text, source=f"cluster key file {path!r}")

    def tag(self, domain: bytes, *parts: bytes) -> bytes:
        """HMAC-SHA256 over ``domain`` and ``parts``, each length-prefixed."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (domain, *parts):
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.digest()

    def verify(self, tag: bytes, domain: bytes, *parts: bytes) -> bool:
        """Whether ``tag`` is this key's tag of ``domain`` and ``parts`` (constant time)."""
        return hmac.compare_digest(tag, self.tag(domain, *parts))

    def __repr__(self) -> str:
        return "ClusterKey(<redacted>)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterKey) and hmac.compare_digest(self._key, other._key)

    __hash__ = None  # type: ignore[assignment]
