"""Unforgeable ``Nats-Msg-Id`` values: a MAC keyed by the publisher's own NATS secret.

JetStream drops a publish whose ``Nats-Msg-Id`` it saw within the duplicate window, across
every subject of the stream, and NATS permissions cannot look at headers. A tenant allowed
only ``tasks.<own>.>`` could otherwise publish, on its own subject, the id another tenant's
next task will carry (``globex:echo:invoice-1001``): the real task would be answered as a
duplicate and never stored.

A connection made with an NKEY seed or a ``.creds`` file (:func:`bus.connection.connect`)
gets a key derived from that secret (:func:`derive_key`); publishers on it append
``:<mac>`` to their ids (:func:`signed`): 22 characters of base64url (no padding) of the
first 16 bytes of HMAC-SHA256(key, id). Every process of one identity holds the same seed,
so they compute the same ids and still deduplicate among themselves; no other identity can
compute them. The MAC alphabet ``[A-Za-z0-9_-]`` holds no ``:``, so a task id (same alphabet)
is recovered by splitting on ``:`` (:func:`split_task_msg_id`). Nobody checks the MAC: it only
has to be unguessable. Without a seed (no auth) ids stay unsigned.
"""

from __future__ import annotations

import base64
import hmac
import re
import weakref
from pathlib import Path

from nats.aio.client import Client

from agentbus.errors import ConfigError

__all__ = [
    "MAC_CHARS",
    "derive_key",
    "is_mac",
    "key_from_file",
    "key_of",
    "remember_key",
    "signed",
    "split_task_msg_id",
]

MAC_CHARS = 22
"""Length of the MAC suffix: 16 bytes (128 bits) in base64url without padding."""
_LABEL = b"agentbus nats-msg-id v1"
_CREDS_SEED = re.compile(rb"-+BEGIN USER NKEY SEED-+\s+(\S+)")
_MAC = re.compile(rf"[A-Za-z0-9_-]{{{MAC_CHARS}}}")
_keys: weakref.WeakKeyDictionary[Client, bytes] = weakref.WeakKeyDictionary()

is_mac = _MAC.fullmatch
"""Truthy if the string has the form of a MAC suffix."""


def derive_key(secret: bytes) -> bytes:
    """The msg-id key of an identity: HMAC-SHA256(its secret, a fixed label)."""
    return hmac.digest(secret, _LABEL, "sha256")


def key_from_file(path: str) -> bytes:
    """The msg-id key of an NKEY seed file or a ``.creds`` file (the seed block in it)."""
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the NATS credential {path}: {exc}") from exc
    found = _CREDS_SEED.search(text)
    secret = found.group(1) if found else text.strip()
    if not secret:
        raise ConfigError(f"the NATS credential {path} holds no seed")
    return derive_key(secret)


def signed(key: bytes, value: str) -> str:
    """``<value>:<mac>``: ``value`` with the MAC of ``key`` over it."""
    digest = hmac.digest(key, value.encode(), "sha256")
    return f"{value}:{base64.urlsafe_b64encode(digest[:16]).decode()[:MAC_CHARS]}"


def split_task_msg_id(value: str) -> tuple[str, str, str, str] | None:
    """``(tenant, kind, task id, mac)`` of a ``<tenant>:<kind>:<id>[:<mac>]`` (mac "" if unsigned);
    None for any other form (no validation of the parts but the MAC's form)."""
    parts = value.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], ""
    if len(parts) == 4 and is_mac(parts[3]):
        return parts[0], parts[1], parts[2], parts[3]
    return None


def remember_key(nc: Client, key: bytes) -> None:
    """Publishers on ``nc`` sign their ids with ``key`` (``connect`` calls it)."""
    _keys[nc] = key


def key_of(nc: Client) -> bytes | None:
    """The msg-id key of ``nc``'s identity, or None (no seed: ids stay unsigned)."""
    return _keys.get(nc)
