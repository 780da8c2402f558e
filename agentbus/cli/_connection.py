"""Where a command connects and as whom: the NATS URL and the identity of a command.

The URL is ``--nats-url``, else ``AGENTBUS_NATS_URL``, else a running ``agentbus up`` in this
directory (``.agentbus/up.json``). The identity comes from the ``AGENTBUS_NATS_*`` settings;
when none is set and the URL is that of an ``agentbus up --auth DIR``, it is DIR's identity of
the given name (the task's tenant for ``publish`` and ``result``, the operator for ``status``,
``audit`` and ``dlq``), so commands next to a local secured cluster work as they do next to an
open one. Credentials of a local directory never go to a server named some other way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from agentbus.errors import ConfigError
from agents.config import nats_auth_from_env, read_up_state, resolve_nats_url
from bus.authdir import IDENTITY_VARIABLES, AuthDir
from bus.connection import NatsAuth

__all__ = ["nats_connection"]


def nats_connection(
    flag: str | None, identity: str, environ: Mapping[str, str] | None = None
) -> tuple[str, NatsAuth]:
    """The URL to connect to and the credentials to connect with, as ``identity`` when a local
    ``agentbus up --auth`` decides."""
    env = os.environ if environ is None else environ
    url = resolve_nats_url(flag, env)
    from_up = not (flag or env.get("AGENTBUS_NATS_URL"))  # then the URL is up.json's, if any
    state = read_up_state() if from_up else None
    auth_dir = state.get("auth_dir") if state is not None else None
    if not auth_dir or any(env.get(name) for name in IDENTITY_VARIABLES):
        return url, nats_auth_from_env(env)
    d = AuthDir(str(auth_dir))
    if not d.seed_file(identity).exists():
        raise ConfigError(
            f"{url} runs with `agentbus up --auth {d.path}`, which has no identity {identity!r}: "
            f"add it with `agentbus auth add-tenant {d.path} {identity}`"
        )
    return url, nats_auth_from_env({**env, **d.environment(identity)})
