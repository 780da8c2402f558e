"""Helpers of the autoscaler's integration tests: a real Prometheus server and a fake worker's /metrics.

``PrometheusServer`` runs Debian's ``prometheus`` binary on a free loopback port with a
temp TSDB and a ``file_sd_configs`` target file the test (or the LocalActuator)
rewrites as replicas come and go. Readiness comes from ``/-/ready``; data from polling
the query API (the first scrape lands ~5 s after start: the discovery throttle).
A missing binary fails the test: ``make test`` installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bus.embedded import free_port

__all__ = ["PrometheusServer", "find_prometheus"]


def find_prometheus() -> str:
    """Path of the prometheus binary; fails (not skips) when it is missing."""
    found = shutil.which("prometheus")
    if found is None:
        raise AssertionError(
            "prometheus is not installed: `make test` installs it, or "
            "`apt-get install -y --no-install-recommends prometheus`"
        )
    return found


class PrometheusServer:
    """One Prometheus process scraping the targets listed in ``targets_file`` every ``scrape_interval_s``."""

    def __init__(self, workdir: Path, *, scrape_interval_s: float = 1.0, job: str = "agentbus") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets_file = workdir / "targets.json"
        self.job = job
        self.scrape_interval_s = scrape_interval_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def set_targets(self, targets: list[str]) -> None:
        """Replace the scraped ``host:port`` targets (atomically)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": {}}]))
        tmp.replace(self.targets_file)

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        """Write the config, start the server, wait for ``/-/ready``."""
        binary = find_prometheus()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.targets_file.exists():
            self.set_targets([])
        interval = f"{self.scrape_interval_s:g}s"
        config = self.workdir / "prometheus.yml"
        config.write_text(
            f"global: {{scrape_interval: {interval}, evaluation_interval: {interval},"
            f" scrape_timeout: {interval}}}\n"
            f"scrape_configs:\n"
            f"  - job_name: {self.job}\n"
            f"    file_sd_configs: [{{files: ['{self.targets_file}'], refresh_interval: 1s}}]\n"
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                output = self.log_path.read_text()
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{output}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"prometheus not ready after {timeout_s}s")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The raw result vector of an instant query ([] on any failure)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = json.load(r)
        except (urllib.error.URLError, OSError, ValueError):
            return []
        result: list[dict[str, Any]] = body.get("data", {}).get("result", [])
        return result

    def stop(self) -> None:
        """SIGTERM (Prometheus exits 0 on it), SIGKILL past a bound."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
