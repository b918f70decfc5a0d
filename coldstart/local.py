"""The local toolkit: a broker and worker processes on this machine, and reading what they export.

The evaluation runner and the benchmarks start their stack here: ``LocalStack`` (a broker started here
or a given one, the topics, ``coldstart worker`` subprocesses handed their settings whole with
``Settings.to_env()``), HTTP polling with httpx, Prometheus text read with prometheus_client's parser.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from coldstart.errors import ColdstartError
from coldstart.settings import Settings

__all__ = ["LocalStack", "WorkerProcess", "parse_metrics", "scrape", "spawn_trainer", "spawn_worker"]


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, keyed by ``name{labels}`` (prometheus_client's parser).

    >>> parse_metrics('# TYPE c counter\\nc_total{type="a"} 2.0\\nc_total{type="b"} 3.0\\n')
    {'c_total{type="a"}': 2.0, 'c_total{type="b"}': 3.0}
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    """The Prometheus page at ``url`` (a worker's or the trainer's /metrics), keyed by ``name{labels}``."""
    return parse_metrics(httpx.get(url, timeout=timeout).text)


@dataclass
class WorkerProcess:
    """A ``coldstart worker`` subprocess and the URL it serves."""

    proc: subprocess.Popen
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def get(self, path: str, timeout: float = 10.0, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=timeout, **kwargs)

    def scrape(self) -> dict[str, float]:
        """Its /metrics, keyed by ``name{labels}``."""
        return scrape(self.url + "/metrics")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise ColdstartError(f"the worker on {self.url} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def wait_healthy(self, timeout: float = 240.0) -> None:
        """Until /health answers 200 (partitions assigned, table recovered, catalog caught up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.alive()
            try:
                if self.get("/health", timeout=5.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ColdstartError(f"the worker on {self.url} was not healthy within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn_worker(settings: Settings, log_path: Path, command: str = "worker") -> WorkerProcess:
    """Start ``coldstart worker`` (or ``command``: ``serve``, a serving replica) with exactly ``settings``
    (the rest of the environment inherited)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "coldstart.cli", command, "--loglevel", "warning"],
                                env={**os.environ, **settings.to_env()}, stdout=log, stderr=subprocess.STDOUT)
    return WorkerProcess(proc, f"http://{settings.web_host}:{settings.web_port}", log_path)


def spawn_replica(settings: Settings, log_path: Path) -> WorkerProcess:
    """Start ``coldstart serve`` (a serving replica) with exactly ``settings``."""
    return spawn_worker(settings, log_path, command="serve")


def spawn_trainer(settings: Settings, log_path: Path, metrics_port: int) -> WorkerProcess:
    """Start ``coldstart trainer`` with exactly ``settings``; its /metrics on ``metrics_port`` (no /health)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "coldstart.cli", "trainer", "--metrics-port", str(metrics_port)],
                                env={**os.environ, **settings.to_env()}, stdout=log, stderr=subprocess.STDOUT)
    return WorkerProcess(proc, f"http://{settings.web_host}:{metrics_port}", log_path)


class LocalStack:
    """A broker (started here unless ``bootstrap`` is given), its topics and worker subprocesses, in
    ``workdir`` (a temporary folder, removed on close, when none is given).

    All workers of a stack are one Faust app (``app_id``), so two or four split the partitions through the
    consumer group; each has its own port and data directory.
    """

    def __init__(self, settings: Settings | None = None, *, bootstrap: str | None = None,
                 workdir: Path | None = None, app_id: str | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.bootstrap = bootstrap
        self.own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="coldstart-local-"))
        self.app_id = app_id or f"cs-local-{uuid.uuid4().hex[:8]}"
        self.kafka = None
        self.workers: list[WorkerProcess] = []
        self.trainers: list[WorkerProcess] = []
        self.replicas: list[WorkerProcess] = []

    def start(self) -> "LocalStack":
        from coldstart.kafka_local import LocalKafka, free_port
        from coldstart.streams.topics import ensure_topics

        s = self.settings
        if self.bootstrap is None:
            self.kafka = LocalKafka(version=s.kafka_version, port=free_port(), data_dir=self.workdir / "kafka")
            self.bootstrap = self.kafka.start()
            # The broker started here listens in plaintext: a shop's Kafka credentials are not for it.
            s = s.replace(kafka_security_protocol="PLAINTEXT", kafka_sasl_username="", kafka_sasl_password="",
                          kafka_ssl_cafile="")
        self.settings = s.replace(bootstrap_servers=self.bootstrap)
        ensure_topics(self.settings)
        return self

    def start_worker(self, **changes: Any) -> WorkerProcess:
        """A worker with this stack's settings and ``changes`` (e.g. ``anomaly_guard=False``); not waited for."""
        from coldstart.kafka_local import free_port

        n = len(self.workers)
        settings = self.settings.replace(**{"app_id": self.app_id, "web_host": "127.0.0.1", "web_port": free_port(),
                                            "data_dir": self.workdir / f"worker{n}", **changes})
        worker = spawn_worker(settings, self.workdir / f"worker{n}.log")
        self.workers.append(worker)
        return worker

    def start_replica(self, of: WorkerProcess, **changes: Any) -> WorkerProcess:
        """A ``coldstart serve`` replica of this stack's app, following the ranker checkpoint of ``of``
        (a worker of this stack); not waited for."""
        from coldstart.kafka_local import free_port

        n = len(self.replicas)
        settings = self.settings.replace(**{
            "app_id": self.app_id, "web_host": "127.0.0.1", "web_port": free_port(),
            "data_dir": self.workdir / f"replica{n}",
            "serve_ranker_path": str(self.workdir / f"worker{self.workers.index(of)}" / "ranker.safetensors"),
            **changes})
        replica = spawn_replica(settings, self.workdir / f"replica{n}.log")
        self.replicas.append(replica)
        return replica

    def start_trainer(self, **changes: Any) -> WorkerProcess:
        """A ``coldstart trainer`` with this stack's settings and ``changes``: it reads this stack's
        training.samples and publishes into ``registry_uri`` (the workers must be given the same one)."""
        from coldstart.kafka_local import free_port

        n = len(self.trainers)
        settings = self.settings.replace(**{"app_id": self.app_id, "web_host": "127.0.0.1", **changes})
        trainer = spawn_trainer(settings, self.workdir / f"trainer{n}.log", free_port())
        self.trainers.append(trainer)
        return trainer

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until every worker's /health says ok."""
        deadline = time.monotonic() + timeout
        for worker in self.workers + self.replicas:
            worker.wait_healthy(max(1.0, deadline - time.monotonic()))

    def close(self) -> None:
        for worker in self.replicas + self.trainers + self.workers:
            if worker.proc.poll() is None:
                worker.proc.terminate()
        for worker in self.replicas + self.trainers + self.workers:
            worker.stop()
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None
        if self.own_dir:  # the broker's log segments and the workers' RocksDB: gigabytes after a long run
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.close()
