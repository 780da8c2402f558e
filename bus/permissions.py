"""Who may use which subject: the roles of a multi-tenant bus and their nats-server permissions.

Four kinds of identity, each an NKEY user of nats-server (docs/security.md):

* a **tenant** publishes its tasks (``tasks.<t>.>``, with a reply for the JetStream ack),
  reads its own stored results by the direct get that names the subject
  (``$JS.API.DIRECT.GET.RESULTS.results.<t>.>``: the stream and the tenant are in the
  subject, so no other tenant's result and no other stream) and subscribes to its own results
  (``results.<t>.>``) and its own inbox prefix (``_INBOX_<t>.>``, where the pub acks,
  waited-for results and direct-get answers arrive); nothing else: no other JetStream API, no
  acks, no dead letters, no audit records, no KV, no gossip or state query, and no publish on
  ``results.>`` or ``audit.>`` (a result or audit record it could forge);
* a **worker** consumes and settles tasks (JetStream API, acks), publishes results, audit
  records, dead letters and follow-up tasks, writes the ``ctx.once`` ledger and ``ctx.kv``
  (their KV buckets only), gossips, answers the state query and replies into each tenant's
  inbox prefix;
* the **scaler** reads stream and consumer info (counts, never messages);
* an **operator** runs ``status``, reads audit records, reads, replays and purges dead
  letters (replay markers in KV bucket ``agentbus_redrive``), asks the state query.

Workers and operators keep nats-py's default inbox prefix ``_INBOX``; every other identity
(tenants, the scaler) has ``_INBOX_<name>``, one token that no other identity may
subscribe to. Workers send a task's result only to ``_INBOX_<tenant>.`` of the task's
subject's tenant (:data:`TENANT_REPLY_PREFIX`, a ``{tenant}`` template read by
:func:`bus.admission.reply_problem`), so a tenant cannot direct results into another's inbox.

:func:`render_config` writes the ``authorization`` block that any nats-server config can
``include``; everything here is pure (the CLI, ``agentbus/cli/auth.py``, writes the files).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from agentbus.errors import ConfigError
from bus.records import AUDIT_PREFIX, KV_BUCKET, ONCE_BUCKET, REDRIVE_BUCKET, RESULTS_STREAM
from bus.subjects import DLQ_PREFIX, RESULTS_PREFIX, STATE_QUERY_SUBJECT, TASKS_PREFIX, is_token

__all__ = [
    "DEFAULT_INBOX",
    "TENANT_REPLY_PREFIX",
    "Identity",
    "Permissions",
    "Role",
    "check_identity_name",
    "inbox_prefix",
    "permissions",
    "render_config",
]

DEFAULT_INBOX = "_INBOX"
"""nats-py's inbox prefix: kept by workers and operators."""
TENANT_REPLY_PREFIX = "_INBOX_{tenant}."
"""The reply prefix workers allow with auth on (``AGENTBUS_REPLY_PREFIXES``): the task's tenant's inbox."""
_INTERNAL = "agentbus"


class Role(StrEnum):
    """What an identity is for."""

    TENANT = "tenant"
    WORKER = "worker"
    SCALER = "scaler"
    OPERATOR = "operator"


_ORDER = (Role.WORKER, Role.SCALER, Role.OPERATOR, Role.TENANT)
_RESERVED = frozenset(r.value for r in Role if r is not Role.TENANT)
"""Names of the fixed identities: no tenant may take one (its files and inbox would collide)."""


@dataclass(frozen=True, slots=True)
class Permissions:
    """Subjects an identity may publish to and subscribe to (nats-server ``allow`` lists)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    """One NKEY user: its name (a tenant's name or a role's), role and public key (``U...``)."""

    name: str
    role: Role
    nkey: str


def check_identity_name(name: str, role: Role) -> str:
    """``name`` if it may name an identity of ``role``; ConfigError otherwise."""
    if role is Role.TENANT:
        if not is_token(name):
            raise ConfigError(
                f"tenant {name!r} is not a subject token "
                "(1-64 of [A-Za-z0-9_-], starting with a letter or digit)"
            )
        if name in _RESERVED:
            raise ConfigError(f"tenant {name!r} would share a name with the {name} role")
    elif name != role.value:
        raise ConfigError(f"the {role.value} identity is named {role.value!r}, not {name!r}")
    return name


def inbox_prefix(identity: Identity) -> str:
    """The inbox prefix the identity's connections use (nats-py ``connect(inbox_prefix=...)``)."""
    if identity.role in (Role.WORKER, Role.OPERATOR):
        return DEFAULT_INBOX
    return f"{DEFAULT_INBOX}_{identity.name}"


def permissions(identity: Identity, tenants: Sequence[str] = ()) -> Permissions:
    """The least permissions that let ``identity`` do its job; ``tenants``: every tenant's name
    (a worker replies into each one's inbox)."""
    own_inbox = f"{inbox_prefix(identity)}.>"
    if identity.role is Role.TENANT:
        t = identity.name
        return Permissions(
            publish=(f"{TASKS_PREFIX}.{t}.>", _result_get(t)),
            subscribe=(f"{RESULTS_PREFIX}.{t}.>", own_inbox),
        )
    if identity.role is Role.WORKER:
        return Permissions(
            publish=(
                "$JS.API.>",  # provision, pull, consumer info; DLQ and results through JetStream
                "$JS.ACK.>",  # ack, nak, term, in-progress
                f"$KV.{ONCE_BUCKET}.>",  # the ctx.once ledger
                f"$KV.{KV_BUCKET}.>",  # ctx.kv (tenant-prefixed keys)
                f"{TASKS_PREFIX}.>",  # follow-up tasks of any tenant's task
                f"{RESULTS_PREFIX}.>",
                f"{AUDIT_PREFIX}.>",  # decision records (stream AUDIT)
                f"{DLQ_PREFIX}.>",
                f"{_INTERNAL}.>",  # gossip
                f"{DEFAULT_INBOX}.>",  # its own requests' inboxes, state query answers
                *(f"{DEFAULT_INBOX}_{t}.>" for t in sorted(tenants)),  # waited-for results
            ),
            subscribe=(own_inbox, f"{_INTERNAL}.>"),
        )
    if identity.role is Role.SCALER:
        return Permissions(
            publish=(
                "$JS.API.INFO",
                "$JS.API.STREAM.NAMES",
                "$JS.API.STREAM.INFO.*",
                "$JS.API.CONSUMER.NAMES.*",
                "$JS.API.CONSUMER.LIST.*",
                "$JS.API.CONSUMER.INFO.*.*",
            ),
            subscribe=(own_inbox,),
        )
    return Permissions(  # operator
        publish=(
            "$JS.API.>",  # stream info, DLQ and audit reads, DLQ purge and delete
            "$JS.ACK.>",
            f"$KV.{REDRIVE_BUCKET}.>",  # replay markers: a dead letter is replayed once
            f"{TASKS_PREFIX}.>",  # replays
            STATE_QUERY_SUBJECT,
        ),
        subscribe=(own_inbox, f"{RESULTS_PREFIX}.>", f"{DLQ_PREFIX}.>"),
    )


def _result_get(tenant: str) -> str:
    """The direct get of the newest stored message on ``results.<tenant>.<...>`` (subject appended)."""
    return f"$JS.API.DIRECT.GET.{RESULTS_STREAM}.{RESULTS_PREFIX}.{tenant}.>"


def render_config(identities: Iterable[Identity]) -> str:
    """A nats-server ``authorization`` block listing every identity with its permissions."""
    identities = sorted(identities, key=lambda i: (_ORDER.index(i.role), i.name))
    tenants = [i.name for i in identities if i.role is Role.TENANT]
    lines = [
        "# Written by `agentbus auth`: NKEY users and their subject permissions (docs/security.md).",
        "# Include it in a nats-server config (`include auth.conf`); reload the server after a change.",
        "authorization {",
        "  users = [",
    ]
    for identity in identities:
        p = permissions(identity, tenants)
        perms = {"publish": {"allow": list(p.publish)}, "subscribe": {"allow": list(p.subscribe)}}
        lines.append(f"    # {identity.role.value} {identity.name}")
        lines.append(f"    {{nkey: {json.dumps(identity.nkey)}, permissions: {json.dumps(perms)}}}")
    lines += ["  ]", "}", ""]
    return "\n".join(lines)
