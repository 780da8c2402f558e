"""The directory ``agentbus auth init`` writes: NKEY seeds, the nats-server include, the cluster key.

    DIR/                 mode 0700
      auth.conf          the ``authorization`` block (bus/permissions.py); public keys only
      nats-values.yaml   the same for the official NATS Helm chart (``helm ... -f`` it)
      identities.json    name, role and public key of every identity (what auth.conf is made from)
      <name>.nk          one NKEY user seed per identity (worker, scaler, operator, each tenant)
      <name>.env         its settings: AGENTBUS_NATS_NKEY_SEED, AGENTBUS_NATS_INBOX_PREFIX, ...
      cluster.key        32 random bytes as 64 hex digits: the gossip and snapshot MAC key
      nats-server.pid    written by the server that ``agentbus up --auth DIR`` runs
      nats-server_<pid>.ports  its addresses: the reload waits on its monitoring port

Every file is created with mode 0600, written whole to a temporary name and renamed, so a
server reloading ``auth.conf`` never reads half of it. :meth:`AuthDir.add_tenant` adds one
tenant and signals the embedded server (if one runs on this directory) to reload: a
reload applies the new users and permissions to open connections, so no worker restarts.
:meth:`AuthDir.remove_tenant` revokes one the same way: the server closes its connections;
:meth:`AuthDir.rotate` replaces an identity's key (a leaked seed stops working; the identity's
processes restart to use the new one).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shlex
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec
import nkeys

from agentbus.errors import ConfigError
from bus.embedded import monitor
from bus.permissions import (
    TENANT_REPLY_PREFIX,
    Identity,
    Role,
    check_identity_name,
    inbox_prefix,
    render_config,
)

__all__ = ["IDENTITY_VARIABLES", "AuthDir", "server_auth_config"]

IDENTITY_VARIABLES = frozenset(
    {"AGENTBUS_NATS_CREDS", "AGENTBUS_NATS_NKEY_SEED", "AGENTBUS_NATS_INBOX_PREFIX"}
)
"""The settings that say who a process is on NATS: a process given another identity drops them."""
_FIXED = (Role.WORKER, Role.SCALER, Role.OPERATOR)


class _Record(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    role: Role
    nkey: str


class _Manifest(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    identities: list[_Record]


class _Ports(msgspec.Struct):
    """What nats-server writes to ``ports_file_dir``: the URLs it listens on."""

    monitoring: list[str] = []


def _config_load_time(base_url: str) -> str | None:
    """When the server monitored at ``base_url`` last loaded its configuration (``/varz``);
    None if it does not answer."""
    body = monitor(base_url, "/varz")[1]
    when = body.get("config_load_time") if isinstance(body, dict) else None
    return when if isinstance(when, str) and when else None


class AuthDir:
    """One directory of credentials for one deployment."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).absolute()
        self.config_file = self.path / "auth.conf"
        self.cluster_key_file = self.path / "cluster.key"
        self.pid_file = self.path / "nats-server.pid"
        self.nats_values_file = self.path / "nats-values.yaml"
        self._manifest = self.path / "identities.json"

    def seed_file(self, name: str) -> Path:
        """The NKEY seed of identity ``name``."""
        return self.path / f"{name}.nk"

    def env_file(self, name: str) -> Path:
        """The settings of identity ``name`` as ``KEY=value`` lines (``set -a; . DIR/acme.env``)."""
        return self.path / f"{name}.env"

    @classmethod
    def init(cls, path: str | os.PathLike[str], tenants: Iterable[str]) -> AuthDir:
        """Create the directory with the fixed identities, ``tenants`` and a cluster key."""
        d = cls(path)
        names = list(tenants)
        for name in names:
            check_identity_name(name, Role.TENANT)
        if len(set(names)) != len(names):
            raise ConfigError("a tenant is named twice")
        if d._manifest.exists():
            raise ConfigError(f"{d.path} is initialized already: add tenants with `agentbus auth add-tenant`")
        d.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d.path, 0o700)  # also when it existed, and whatever the umask
        if any(d.path.iterdir()):
            raise ConfigError(f"{d.path} is not empty: give `agentbus auth init` a new directory")
        _write(d.cluster_key_file, secrets.token_hex(32) + "\n")
        identities = [d._new_identity(r.value, r) for r in _FIXED]
        identities += [d._new_identity(name, Role.TENANT) for name in names]
        d._save(identities)
        return d

    def identities(self) -> list[Identity]:
        """Every identity, as ``identities.json`` lists them."""
        try:
            manifest = msgspec.json.decode(self._manifest.read_bytes(), type=_Manifest)
        except FileNotFoundError:
            raise ConfigError(
                f"{self.path} holds no credentials: run `agentbus auth init {self.path}`"
            ) from None
        except (OSError, msgspec.DecodeError) as exc:
            raise ConfigError(f"{self._manifest} is unreadable: {exc}") from exc
        return [Identity(r.name, r.role, r.nkey) for r in manifest.identities]

    def identity(self, name: str) -> Identity:
        """The identity named ``name``; ConfigError if there is none."""
        for identity in self.identities():
            if identity.name == name:
                return identity
        raise ConfigError(f"{self.path} has no identity {name!r}")

    def tenants(self) -> list[str]:
        """The tenants' names."""
        return [i.name for i in self.identities() if i.role is Role.TENANT]

    def add_tenant(self, name: str) -> Identity:
        """Add tenant ``name``: its seed and settings, and a new ``auth.conf`` (reload the server next)."""
        check_identity_name(name, Role.TENANT)
        with self._locked():
            identities = self.identities()
            if any(i.name == name for i in identities):
                raise ConfigError(f"tenant {name!r} exists already in {self.path}")
            identity = self._new_identity(name, Role.TENANT)
            self._save([*identities, identity])
        return identity

    def remove_tenant(self, name: str) -> None:
        """Revoke tenant ``name``: its seed and settings go, and a new ``auth.conf`` (reload the
        server next: it then closes the tenant's connections)."""
        with self._locked():
            identities = self.identities()
            if not any(i.name == name and i.role is Role.TENANT for i in identities):
                raise ConfigError(f"{self.path} has no tenant {name!r}")
            self._save([i for i in identities if i.name != name])
            self.seed_file(name).unlink(missing_ok=True)
            self.env_file(name).unlink(missing_ok=True)

    def rotate(self, name: str) -> Identity:
        """A new seed for identity ``name`` (any role) and a new ``auth.conf``. After the reload the
        server closes the connections of the old key, and the processes of that identity must be
        restarted: nats-py keeps the public key of a seed for its reconnects (nats-py 2.16)."""
        with self._locked():
            identities = self.identities()
            old = next((i for i in identities if i.name == name), None)
            if old is None:
                raise ConfigError(f"{self.path} has no identity {name!r}")
            new = self._new_identity(name, old.role)
            self._save([new if i.name == name else i for i in identities])
        return new

    def environment(self, name: str) -> dict[str, str]:
        """The ``AGENTBUS_*`` settings a process of identity ``name`` runs with."""
        identity = self.identity(name)
        env = {  # every identity says its prefix: sourcing one .env after another leaves none behind
            "AGENTBUS_NATS_NKEY_SEED": str(self.seed_file(name)),
            "AGENTBUS_NATS_INBOX_PREFIX": inbox_prefix(identity),
        }
        if identity.role is Role.WORKER:
            env["AGENTBUS_REPLY_PREFIXES"] = TENANT_REPLY_PREFIX
            env["AGENTBUS_CLUSTER_KEY_FILE"] = str(self.cluster_key_file)
        return env

    def reload_server(self, *, timeout_s: float = 10.0) -> int | None:
        """Ask the nats-server running on this directory (``nats-server.pid``) to reload its
        configuration and wait until it has; its pid, or None when none runs.

        A reload happens some time after the signal: until then the old keys still work. The
        server ``up --auth`` runs writes its monitoring address beside the pid
        (``nats-server_<pid>.ports``), and its ``/varz`` ``config_load_time`` changes once the
        new configuration applies. A server that keeps the old time (it refused the new
        configuration, and logs why) raises :class:`ConfigError`; one without a ports file is
        signalled and not waited for.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:  # a stale pid file may name another process by now: signal only a nats-server
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if b"nats-server" not in cmdline:
            return None
        base = self._monitor_url(pid)
        before = _config_load_time(base) if base else None
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return None
        if base is None or before is None:
            return pid
        deadline = time.monotonic() + timeout_s
        while _config_load_time(base) in (before, None):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"nats-server (pid {pid}) did not reload {self.config_file} within {timeout_s:.0f}s: "
                    "its log says why (it keeps the previous configuration)"
                )
            time.sleep(0.05)
        return pid

    def _monitor_url(self, pid: int) -> str | None:
        """The monitoring address of server ``pid``, from the ports file it wrote here."""
        try:
            ports = msgspec.json.decode((self.path / f"nats-server_{pid}.ports").read_bytes(), type=_Ports)
        except (OSError, msgspec.DecodeError):
            return None
        return ports.monitoring[0] if ports.monitoring else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change of the directory at a time (two ``add-tenant`` at once would lose one)."""
        if not self.path.is_dir():
            raise ConfigError(f"{self.path} holds no credentials: see `agentbus auth init`")
        fd = os.open(self.path / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _new_identity(self, name: str, role: Role) -> Identity:
        seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
        identity = Identity(name, role, nkeys.from_seed(seed).public_key.decode())
        _write(self.seed_file(name), seed.decode() + "\n")
        return identity

    def _save(self, identities: list[Identity]) -> None:
        records = [_Record(i.name, i.role, i.nkey) for i in identities]
        _write(
            self._manifest, msgspec.json.format(msgspec.json.encode(_Manifest(1, records))).decode() + "\n"
        )
        for identity in identities:
            lines = (f"{k}={shlex.quote(v)}\n" for k, v in self.environment(identity.name).items())
            _write(self.env_file(identity.name), "".join(lines))
        config = render_config(identities)
        _write(self.config_file, config)
        _write(self.nats_values_file, _nats_chart_values(config))


def _nats_chart_values(config: str) -> str:
    """Values for the official NATS chart (1.x): ``auth.conf`` in its ConfigMap, included by its
    config; the chart's config reloader reloads the servers when the ConfigMap changes."""
    body = "".join(f"        {line}\n" if line else "\n" for line in config.splitlines())
    return (
        "# Written by `agentbus auth`: give it to the official NATS chart beside your own values,\n"
        "#   helm upgrade --install nats nats/nats -f your-values.yaml -f nats-values.yaml\n"
        "config:\n  merge:\n    $include: auth.conf\n"
        f"configMap:\n  merge:\n    data:\n      auth.conf: |\n{body}"
    )


def _write(path: Path, text: str) -> None:
    """Write ``path`` whole with mode 0600 (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def server_auth_config(auth: AuthDir, config_dir: str | os.PathLike[str]) -> str:
    """The lines that make a nats-server whose config file lies in ``config_dir`` enforce ``auth``
    and write its pid where :meth:`AuthDir.reload_server` finds it (nats-server resolves an
    ``include`` relative to the including file, even an absolute path)."""
    include = os.path.relpath(auth.config_file, Path(config_dir).absolute())
    return (
        f"include {_quote(include)}\npid_file: {_quote(str(auth.pid_file))}\n"
        f"ports_file_dir: {_quote(str(auth.path))}\n"
    )


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
