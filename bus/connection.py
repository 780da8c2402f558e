"""Connecting to NATS with reconnect settings fit for long-running workers.

nats-py gives up after 60 reconnect attempts by default; a worker must not, and it
must learn about disconnects and reconnects (the pull consumer re-issues its pull
requests after a reconnect: the server forgets them, nats.py #504).

Credentials: a user and password or a token go in the URL
(``nats://user:pass@host:4222``); :class:`NatsAuth` carries the rest: a ``.creds``
file (a user JWT and its NKEY seed, decentralized auth as ``nsc`` issues it), an
NKEY seed file, and TLS (a CA to verify the server, and a client certificate for
mutual TLS), and the inbox prefix of a tenant's connection (``_INBOX_<tenant>``: the
only inboxes its credential may subscribe to, bus/permissions.py). Log lines and errors
show a URL only through :func:`redact_url`. A client connected with a seed or ``.creds`` file
carries the key its publishers sign ``Nats-Msg-Id`` values with (:mod:`bus.msgid`).

The client is the one :func:`bus._client.client_class` picks: nats-py's ``Client`` with a
frame guard (no single message can end its read loop), and with ``fast_path`` the
worker's fast lane for deliveries and publishes (``AGENTBUS_NATS_FAST_PATH=0`` turns it
off). When nats-py gives up on a connection for good (``closed_cb``: the server sent an
error such as ``-ERR 'Unknown Protocol Operation'``, or the client was closed),
``on_closed`` is told: a worker then fails its liveness probe and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client

from agentbus.errors import BusError, ConfigError
from bus._client import client_class
from bus.msgid import key_from_file, remember_key

__all__ = ["NatsAuth", "connect", "redact_url"]

log = logging.getLogger("agentbus.bus")

Callback = Callable[[], Awaitable[None]]

_REPEAT_WINDOW_S = 30.0

_INBOX_PREFIX = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_USERINFO = re.compile(r"(^|://|,)[^/@,\s]*@")


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list of them) with any ``user:password@`` or ``token@`` as ``***@``."""
    return _USERINFO.sub(r"\1***@", url)


class _ErrorLog:
    """Logs a NATS error, then the same error again at most every ``_REPEAT_WINDOW_S`` with
    how often it recurred: a worker waiting out a NATS outage retries twice a second."""

    def __init__(self) -> None:
        self._last = ""
        self._since = 0.0
        self._repeats = 0

    def __call__(self, exc: Exception) -> None:
        text, now = redact_url(str(exc)), time.monotonic()
        if text == self._last and now - self._since < _REPEAT_WINDOW_S:
            self._repeats += 1
            return
        if text == self._last:
            log.warning("nats error, %d more times in %.0fs: %s", self._repeats + 1, now - self._since, text)
        else:
            log.warning("nats error: %s", text)
        self._last, self._since, self._repeats = text, now, 0

    def reset(self) -> None:
        """Connected again: the next error is news."""
        self._last, self._repeats = "", 0


@dataclass(frozen=True, kw_only=True, slots=True)
class NatsAuth:
    """How to authenticate to NATS beyond what the URL carries; every field but ``inbox_prefix``
    is a file path."""

    creds_file: str | None = None
    """A ``.creds`` file: a user JWT and its NKEY seed (operator/account mode)."""
    nkey_seed_file: str | None = None
    """A file holding an NKEY user seed (``SU...``), for servers listing NKEY users."""
    tls_ca_file: str | None = None
    """CA certificates that verify the server (else the system's)."""
    tls_cert_file: str | None = None
    """A client certificate for mutual TLS, with ``tls_key_file``."""
    tls_key_file: str | None = None
    inbox_prefix: str | None = None
    """Inboxes (replies, pub acks) under this prefix instead of ``_INBOX``: the credential's own."""

    def __post_init__(self) -> None:
        if self.inbox_prefix is not None and not _INBOX_PREFIX.fullmatch(self.inbox_prefix):
            raise ConfigError(f"NATS inbox prefix {self.inbox_prefix!r} is not a plain subject")
        if self.creds_file and self.nkey_seed_file:
            raise ConfigError("give NATS a creds file or an NKEY seed, not both")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("a NATS client certificate needs its key, and a key its certificate")

    def msg_id_key(self) -> bytes | None:
        """The key that signs this identity's ``Nats-Msg-Id`` values (:mod:`bus.msgid`): derived
        from the NKEY seed or the ``.creds`` file; None without either."""
        secret = self.nkey_seed_file or self.creds_file
        return key_from_file(secret) if secret else None

    @property
    def tls(self) -> bool:
        """Whether a TLS context of our own is needed."""
        return bool(self.tls_ca_file or self.tls_cert_file)

    def options(self) -> dict[str, Any]:
        """The matching keyword arguments of nats-py's ``Client.connect``."""
        opts: dict[str, Any] = {}
        if self.creds_file:
            opts["user_credentials"] = self.creds_file
        if self.nkey_seed_file:
            opts["nkeys_seed"] = self.nkey_seed_file
        if self.inbox_prefix:
            opts["inbox_prefix"] = self.inbox_prefix
        if self.tls:
            try:
                context = ssl.create_default_context(cafile=self.tls_ca_file)
                if self.tls_cert_file:
                    context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"NATS TLS files unusable: {exc}") from exc
            opts["tls"] = context
        return opts


def _seeds(url: str) -> list[str]:
    """The server pool of ``url``: one URL or several, comma-separated (a cluster's seeds).

    nats-py takes a list and fails over between its entries (and the servers the cluster
    announces); a comma-separated string would be parsed as one malformed URL.
    """
    seeds = [u.strip() for u in url.split(",") if u.strip()]
    if not seeds:
        raise ConfigError(f"no NATS URL in {redact_url(url)!r}")
    return seeds


async def connect(
    url: str,
    *,
    name: str = "agentbus",
    on_disconnect: Callback | None = None,
    on_reconnect: Callback | None = None,
    connect_timeout_s: float = 5.0,
    reconnect_wait_s: float = 0.5,
    first_connect_timeout_s: float | None = None,
    auth: NatsAuth | None = None,
    on_closed: Callback | None = None,
    fast_path: bool = True,
) -> Client:
    """Connect with unlimited reconnects; callbacks observe connection changes.

    ``url`` may list several servers, comma-separated (a cluster's seeds): the client
    connects to one and fails over to the others.

    ``fast_path`` chooses the worker's fast lane (:mod:`bus._client`); every client gets
    the frame guard. ``on_closed`` runs once nats-py has closed the connection for good.

    With unlimited reconnects nats-py also retries the *first* connection forever;
    ``first_connect_timeout_s`` bounds that (commands a person waits for set it) and
    raises :class:`~agentbus.errors.BusError`. None waits for the server (workers).
    """

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("nats disconnected")
        if on_disconnect is not None:
            await on_disconnect()

    errors = _ErrorLog()

    async def reconnected() -> None:
        errors.reset()
        log.warning("nats reconnected")
        if on_reconnect is not None:
            await on_reconnect()

    async def error(exc: Exception) -> None:
        errors(exc)

    async def closed() -> None:
        log.info("nats connection closed (last error: %s)", nc.last_error)
        if on_closed is not None:
            await on_closed()

    id_key = auth.msg_id_key() if auth is not None else None
    nc = client_class(fast_path=fast_path)()
    first = nc.connect(
        _seeds(url),
        name=name,
        connect_timeout=connect_timeout_s,  # type: ignore[arg-type]  # nats-py accepts floats
        reconnect_time_wait=reconnect_wait_s,  # type: ignore[arg-type]
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        disconnected_cb=disconnected,
        reconnected_cb=reconnected,
        error_cb=error,
        closed_cb=closed,
        # keep acks published while reconnecting; 8 MiB is ~200k acks
        pending_size=8 * 1024 * 1024,
        **(auth.options() if auth is not None else {}),
    )
    try:
        await asyncio.wait_for(first, first_connect_timeout_s)
    except TimeoutError:
        with contextlib.suppress(Exception):
            await nc.close()
        raise BusError(
            f"cannot connect to NATS at {redact_url(url)} within {first_connect_timeout_s:g}s"
        ) from None
    if id_key is not None:
        remember_key(nc, id_key)
    return nc
