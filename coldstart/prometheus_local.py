"""A real Prometheus server on this machine, with the project's own configuration and alert rules.

Used by ``coldstart demo`` (when the ``prometheus`` binary is on the PATH: Debian's ``prometheus``
package) and by the monitoring tests. Only the ``targets`` of ``deploy/prometheus/prometheus.yml`` are
rewritten (compose service names -> local ports); jobs, scrape paths and ``alerts.yml`` are used as
they ship, so what is tested here is what is deployed.

>>> cfg = local_config(["127.0.0.1:7001"], ["127.0.0.1:7002"], scrape_interval_s=1)
>>> [(job["job_name"], job["static_configs"][0]["targets"]) for job in cfg["scrape_configs"]]
[('coldstart-worker', ['127.0.0.1:7001']), ('coldstart-replica', []), ('coldstart-trainer', ['127.0.0.1:7002'])]
>>> cfg["rule_files"][0].endswith("deploy/prometheus/alerts.yml")
True
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from coldstart.errors import ColdstartError

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
JOBS = {"worker": "coldstart-worker", "replica": "coldstart-replica", "trainer": "coldstart-trainer"}


def local_config(workers: list[str], trainers: list[str], scrape_interval_s: float = 5.0,
                 replicas: list[str] = ()) -> dict[str, Any]:
    """The shipped configuration with local targets and absolute rule paths (a job without local
    targets, such as the replica's when none runs, keeps an empty target list)."""
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    cfg["global"]["scrape_interval"] = cfg["global"]["evaluation_interval"] = f"{scrape_interval_s:g}s"
    cfg["rule_files"] = [str(DEPLOY / name) for name in cfg["rule_files"]]
    targets = {JOBS["worker"]: workers, JOBS["replica"]: replicas, JOBS["trainer"]: trainers}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
    return cfg


class PrometheusServer:
    """``prometheus`` as a child process on ``127.0.0.1:port`` with its data under ``data_dir``."""

    def __init__(self, data_dir: Path, port: int, workers: list[str], trainers: list[str],
                 scrape_interval_s: float = 5.0, replicas: list[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.config = local_config(workers, trainers, scrape_interval_s, replicas)
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("prometheus") is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "PrometheusServer":
        binary = shutil.which("prometheus")
        if binary is None:
            raise ColdstartError("no `prometheus` binary on the PATH; on Debian: apt-get install -y prometheus")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        log = open(self.data_dir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ColdstartError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise ColdstartError(f"prometheus did not become ready in {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant-query result vector of ``expr`` (raises on a PromQL error)."""
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        if body.get("status") != "success":
            raise ColdstartError(f"prometheus refused {expr!r}: {body.get('error')}")
        return body["data"]["result"]

    def log_tail(self, n: int = 20) -> str:
        path = self.data_dir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
