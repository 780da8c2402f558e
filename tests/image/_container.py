"""The built images and commands run in them with ``buildah run --isolation chroot``.

Chroot isolation needs no daemon, no cgroup setup and no user namespace (here there is no
Docker daemon, and podman's runtime refuses this machine's cgroup layout); the command shares
the host's network, so it reaches a nats-server on the host's loopback.
``buildah run`` ignores the image's entrypoint: ``_pods.pod_argv`` composes it the way the
kubelet does, and the tests run what that gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "image.sh"
TAG = "dev"
RUNTIME, LOADTEST = "agentbus:dev", "agentbus:dev-loadtest"  # what `make image` tags


def buildah() -> str:
    """The buildah binary; a missing one fails the suite (`make system-deps` installs it)."""
    found = shutil.which("buildah")
    assert found, "buildah is not installed (make system-deps, or apt-get install buildah mmdebstrap)"
    return found


def build() -> subprocess.CompletedProcess[str]:
    """Build both images with the script `make image` runs, on buildah (what runs them here)."""
    env = {**os.environ, "IMAGE_ENGINE": "buildah", "IMAGE_NAME": "agentbus", "TAG": TAG}
    return subprocess.run(
        [str(BUILD_SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )


@dataclass(frozen=True)
class Image:
    """One built image, by the name `make image` gave it."""

    name: str

    @cached_property
    def config(self) -> dict[str, Any]:
        """The OCI image config (User, Entrypoint, Cmd, Env, WorkingDir)."""
        out = subprocess.run(
            [buildah(), "inspect", "--type", "image", self.name],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        config: dict[str, Any] = json.loads(out.stdout)["OCIv1"]["config"]
        return config

    @property
    def entrypoint(self) -> list[str]:
        return list(self.config.get("Entrypoint") or [])

    @property
    def cmd(self) -> list[str]:
        return list(self.config.get("Cmd") or [])


class Container:
    """A buildah working container of an image; each :meth:`run` is a new process in it."""

    def __init__(self, image: Image) -> None:
        self.image = image
        out = subprocess.run(
            [buildah(), "from", "--pull-never", "--quiet", image.name],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        self.id = out.stdout.strip()

    def argv(
        self, command: list[str], env: dict[str, str] | None = None, mounts: dict[str, Path] | None = None
    ) -> list[str]:
        """The ``buildah run`` command line for ``command``, as the image's user; ``mounts`` maps
        a path in the container to a host directory, mounted read-only."""
        flags = [f"--env={k}={v}" for k, v in (env or {}).items()]
        flags += [f"--volume={host}:{path}:ro" for path, host in (mounts or {}).items()]
        return [buildah(), "run", "--isolation", "chroot", *flags, self.id, "--", *command]

    def run(
        self,
        command: list[str],
        env: dict[str, str] | None = None,
        mounts: dict[str, Path] | None = None,
        timeout_s: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` to its end; stdout and stderr captured."""
        return subprocess.run(
            self.argv(command, env, mounts), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def start(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
        """Start ``command`` in the background, its output going to ``log``."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                self.argv(command, env), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        return Process(proc, log)

    def remove(self) -> None:
        subprocess.run([buildah(), "rm", self.id], capture_output=True, timeout=120, check=False)


@dataclass
class Process:
    """A command started in a container (``buildah run`` and, below it, the command itself)."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, port: int, timeout_s: float = 90) -> None:
        """Wait until ``/readyz`` on the host's loopback (the container's too) answers 200."""
        deadline = time.monotonic() + timeout_s  # a liveness bound, not a timing assertion
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready after {timeout_s} s:\n{self.log()}")

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM to the command itself, as the kubelet sends it (``buildah run`` would kill it
        outright); returns ``buildah run``'s exit code, which is the command's."""
        if self.proc.poll() is None:
            leaves = [p for p in psutil.Process(self.proc.pid).children(recursive=True) if not p.children()]
            for leaf in leaves:
                leaf.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
