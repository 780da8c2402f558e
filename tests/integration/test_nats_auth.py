"""NATS credentials beyond the URL: an NKEY user and mutual TLS, against real nats-servers.

* a server in operator mode (accounts from JWTs, as ``nsc`` sets them up; the JWTs are
  signed here with NKEYs): a worker and a publisher given a ``.creds`` file by
  ``AGENTBUS_NATS_CREDS`` run a task, JetStream included; without it the server refuses;
* a server that lists one NKEY user: a worker and ``agentbus publish --wait``, both
  given the seed file by ``AGENTBUS_NATS_NKEY_SEED``, run a task end to end; without
  the seed the connection is refused with a clear error;
* a server that requires TLS with client certificates (made here by ``openssl``):
  a worker and a publisher given ``NatsAuth`` (CA, certificate, key) run a task over
  ``tls://``; without a client certificate the server refuses it;
* bad settings fail at once, naming the variable or what is missing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nkeys
import pytest
from conftest import WorkerProcess

from agentbus.errors import BusError, ConfigError
from agents.builtin.basic import echo
from agents.config import WorkerConfig, nats_auth_from_env
from agents.registry import Registry
from agents.worker import Worker
from bus.connection import NatsAuth, connect
from bus.embedded import EmbeddedNats
from bus.publisher import Publisher

pytestmark = pytest.mark.integration


@pytest.fixture
def nkey_server(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Path]]:
    """A nats-server whose only user is an NKEY; the user's seed file."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed + b"\n")
    server = EmbeddedNats(
        store_dir=tmp_path / "nats", extra_config=f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}'
    )
    with server:
        yield server, seed_file


def _key(prefix: int) -> tuple[bytes, str, nkeys.KeyPair]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(seed)
    return seed, pair.public_key.decode(), pair


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, nats: dict[str, object]) -> str:
    """A NATS v2 JWT (ed25519-nkey) for ``subject``, signed by ``issuer``."""
    claims: dict[str, object] = {
        "iat": int(time.time()),
        "iss": issuer.public_key.decode(),
        "name": name,
        "sub": subject,
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing}.{_b64(issuer.sign(signing.encode()))}"


@pytest.fixture
def operator_server(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Path]]:
    """A nats-server trusting one operator, with a system account and a JetStream-enabled account
    whose one user's ``.creds`` file is returned."""
    _, operator_public, operator = _key(nkeys.PREFIX_BYTE_OPERATOR)
    _, account_public, account = _key(nkeys.PREFIX_BYTE_ACCOUNT)
    _, system_public, _ = _key(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, user_public, _ = _key(nkeys.PREFIX_BYTE_USER)
    open_limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "conn": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    accounts = {
        account_public: _jwt(
            operator, account_public, "agents", {"type": "account", "limits": open_limits | jetstream}
        ),
        system_public: _jwt(operator, system_public, "SYS", {"type": "account", "limits": open_limits}),
    }
    user = _jwt(
        account,
        user_public,
        "worker",
        {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1},
    )
    creds = tmp_path / "worker.creds"
    creds.write_text(
        f"-----BEGIN NATS USER JWT-----\n{user}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n------END USER NKEY SEED------\n"
    )
    preload = "\n".join(f'  {public}: "{token}"' for public, token in accounts.items())
    config = (
        f'operator: "{_jwt(operator, operator_public, "op", {"type": "operator"})}"\n'
        f"system_account: {system_public}\nresolver: MEMORY\nresolver_preload: {{\n{preload}\n}}\n"
    )
    with EmbeddedNats(store_dir=tmp_path / "nats", extra_config=config) as server:
        yield server, creds


async def test_a_creds_file_runs_a_task_on_an_operator_mode_server(
    operator_server: tuple[EmbeddedNats, Path],
) -> None:
    server, creds = operator_server
    with pytest.raises(BusError, match="cannot connect"):
        await connect(server.url, first_connect_timeout_s=2.0)
    config = WorkerConfig.from_env({"AGENTBUS_NATS_URL": server.url, "AGENTBUS_NATS_CREDS": str(creds)})
    assert await _echo(config.with_(http_port=-1), "as an account user") == "as an account user"


async def _echo(config: WorkerConfig, text: str) -> str:
    """Run an in-process worker on ``config`` and one echo task through it, as the same user."""
    worker = Worker(config, Registry([echo]))
    await worker.start()
    try:
        nc = await connect(config.nats_url, first_connect_timeout_s=5.0, auth=config.nats_auth)
        result = await Publisher(nc).call("acme", "echo", {"text": text}, timeout_s=30)
        await nc.close()
    finally:
        await worker.stop()
    assert result.ok
    assert result.output is not None
    return str(result.output["text"])


def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentbus", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_nkey_user_runs_a_task_from_the_command_line(
    nkey_server: tuple[EmbeddedNats, Path], tmp_path: Path
) -> None:
    server, seed_file = nkey_server
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTBUS_")}
    env |= {"AGENTBUS_NATS_URL": server.url, "AGENTBUS_NATS_NKEY_SEED": str(seed_file)}
    worker = WorkerProcess(
        server.url, tmp_path, "A", "--kind", "echo", env={"AGENTBUS_NATS_NKEY_SEED": str(seed_file)}
    )
    try:
        worker.wait_ready()  # connected with the seed
        done = _cli(tmp_path, env, "publish", "echo", '{"text":"signed"}', "--tenant", "acme", "--wait")
        assert done.returncode == 0, done.stderr
        assert '"signed"' in done.stdout
    finally:
        worker.stop()
    assert worker.proc.returncode == 0, worker.log()

    refused = _cli(tmp_path, {**env, "AGENTBUS_NATS_NKEY_SEED": ""}, "publish", "echo", '{"text":"x"}')
    assert refused.returncode != 0
    assert "cannot connect to NATS" in refused.stderr


async def test_without_the_seed_the_server_refuses(nkey_server: tuple[EmbeddedNats, Path]) -> None:
    server, seed_file = nkey_server
    with pytest.raises(BusError, match="cannot connect"):
        await connect(server.url, first_connect_timeout_s=2.0)
    nc = await connect(server.url, first_connect_timeout_s=5.0, auth=NatsAuth(nkey_seed_file=str(seed_file)))
    await nc.close()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (Debian package `openssl`)")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "1", "-subj", "/CN=agentbus-test-ca", cwd=d)  # fmt: skip
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(extension + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return d


async def test_mutual_tls_runs_a_task_and_refuses_a_client_without_a_certificate(
    pki: Path, tmp_path: Path
) -> None:
    tls = (
        f'tls {{ cert_file: "{pki / "server.pem"}", key_file: "{pki / "server.key"}",'
        f' ca_file: "{pki / "ca.pem"}", verify: true }}'
    )
    with EmbeddedNats(store_dir=tmp_path / "nats", extra_config=tls) as server:
        url = f"tls://127.0.0.1:{server.port}"
        auth = NatsAuth(
            tls_ca_file=str(pki / "ca.pem"),
            tls_cert_file=str(pki / "client.pem"),
            tls_key_file=str(pki / "client.key"),
        )
        assert await _echo(WorkerConfig(nats_url=url, nats_auth=auth, http_port=-1), "over tls") == "over tls"

        anonymous = NatsAuth(tls_ca_file=str(pki / "ca.pem"))  # verifies the server, shows no certificate
        with pytest.raises(BusError, match="cannot connect"):
            await connect(url, first_connect_timeout_s=2.0, auth=anonymous)


def test_bad_settings_fail_at_once_naming_what_is_wrong(tmp_path: Path) -> None:
    seed = tmp_path / "user.nk"
    seed.write_text("SU...\n")
    with pytest.raises(ConfigError, match="AGENTBUS_NATS_CREDS"):
        nats_auth_from_env({"AGENTBUS_NATS_CREDS": str(tmp_path / "missing.creds")})
    with pytest.raises(ConfigError, match="not both"):
        nats_auth_from_env({"AGENTBUS_NATS_CREDS": str(seed), "AGENTBUS_NATS_NKEY_SEED": str(seed)})
    with pytest.raises(ConfigError, match="needs its key"):
        nats_auth_from_env({"AGENTBUS_NATS_TLS_CERT": str(seed)})
    with pytest.raises(ConfigError, match="TLS files unusable"):
        NatsAuth(tls_ca_file=str(seed)).options()  # not a certificate
    auth = nats_auth_from_env({"AGENTBUS_NATS_CREDS": str(seed), "AGENTBUS_NATS_URL": "nats://x:4222"})
    assert auth.options() == {"user_credentials": str(seed)}
    assert WorkerConfig.from_env({"AGENTBUS_NATS_NKEY_SEED": str(seed)}).nats_auth == NatsAuth(
        nkey_seed_file=str(seed)
    )
    assert nats_auth_from_env({}) == NatsAuth()
