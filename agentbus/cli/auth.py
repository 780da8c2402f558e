"""``agentbus auth``: credentials and subject permissions for a multi-tenant bus.

    agentbus auth init ./auth --tenant acme --tenant globex
    agentbus auth add-tenant ./auth initech
    agentbus auth remove-tenant ./auth initech
    agentbus auth rotate ./auth worker
    agentbus auth show ./auth

``init`` writes a nats-server ``authorization`` block (``auth.conf``, to ``include``), one
NKEY seed and one settings file per identity (worker, scaler, operator, each tenant) and
the cluster key (bus/authdir.py); ``agentbus up --auth DIR`` runs on it. ``add-tenant``
adds a tenant and reloads the server ``up --auth`` runs on the directory, if any: workers
keep running; ``remove-tenant`` revokes one (the reloaded server closes its connections);
``rotate`` gives an identity a new key (its processes restart to use it).
docs/security.md has the roles and the threat model.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from bus.authdir import AuthDir
from bus.permissions import Role, inbox_prefix, permissions

__all__ = ["register"]

_Run = Callable[[argparse.Namespace], int]


def register(sub: Any) -> None:
    """Add the subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "auth", help="NATS credentials and permissions per role and tenant"
    )
    actions = p.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="write the credentials of every role and of the given tenants")
    init.add_argument("dir", help="a new directory (created with mode 0700)")
    init.add_argument("--tenant", action="append", default=[], help="a tenant (repeat for more)")
    init.set_defaults(run=_init)
    for command, run, what, name in (
        (
            "add-tenant",
            _add_tenant,
            "add a tenant and reload the embedded server",
            "the tenant (a subject token)",
        ),
        ("remove-tenant", _remove_tenant, "revoke a tenant and reload the embedded server", "the tenant"),
        (
            "rotate",
            _rotate,
            "a new key for an identity; the old one stops working",
            "worker, scaler, operator or a tenant",
        ),
    ):
        _with_name(actions, command, run, what, name)
    show = actions.add_parser("show", help="list the identities, their inbox prefixes and permissions")
    show.add_argument("dir")
    show.set_defaults(run=_show)


def _with_name(actions: Any, command: str, run: _Run, what: str, name: str) -> None:
    """An action on ``DIR NAME`` (an auth directory and one identity in it)."""
    parser = actions.add_parser(command, help=what)
    parser.add_argument("dir", help="a directory written by `agentbus auth init`")
    parser.add_argument("name", help=name)
    parser.set_defaults(run=run)


def _reload(d: AuthDir, *, then: str = "", otherwise: str = "reload your server") -> str:
    """Reload the server ``up --auth`` runs on ``d``, if one does; what happened, for the summary line."""
    pid = d.reload_server()
    return f"reloaded nats-server (pid {pid}){then}" if pid else otherwise


def _init(args: argparse.Namespace) -> int:
    d = AuthDir.init(args.dir, args.tenant)
    print(f"agentbus auth: wrote {d.path} (auth.conf, cluster.key, a seed and a .env per identity)")
    print(f"  run:            agentbus up --auth {d.path}")
    print(f"  or include it:  include {d.config_file}  (path relative to the server's config file)")
    for name in args.tenant:
        print(f"  tenant {name}:    set -a; . {d.env_file(name)}; set +a")
    print(f"  operator:       set -a; . {d.env_file(Role.OPERATOR.value)}; set +a; agentbus status")
    return 0


def _add_tenant(args: argparse.Namespace) -> int:
    d = AuthDir(args.dir)
    d.add_tenant(args.name)
    where = _reload(d, otherwise="no server runs on it: reload yours")
    print(f"agentbus auth: added tenant {args.name} to {d.path}; {where}")
    print(f"  tenant {args.name}: set -a; . {d.env_file(args.name)}; set +a")
    return 0


def _remove_tenant(args: argparse.Namespace) -> int:
    d = AuthDir(args.dir)
    d.remove_tenant(args.name)
    where = _reload(d, then=": its connections are closed")
    print(f"agentbus auth: removed tenant {args.name} from {d.path}; {where}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    d = AuthDir(args.dir)
    d.rotate(args.name)
    where = _reload(d)
    print(f"agentbus auth: new key for {args.name} in {d.seed_file(args.name)}; {where}")
    print(f"  the old key is refused: restart every process of {args.name} (they keep the old public key)")
    return 0


def _show(args: argparse.Namespace) -> int:
    d = AuthDir(args.dir)
    identities = d.identities()
    tenants = [i.name for i in identities if i.role is Role.TENANT]
    for identity in identities:
        p = permissions(identity, tenants)
        print(f"{identity.role.value:8} {identity.name}  {identity.nkey}  inbox {inbox_prefix(identity)}")
        print(f"         publish:   {' '.join(p.publish)}")
        print(f"         subscribe: {' '.join(p.subscribe)}")
    return 0
