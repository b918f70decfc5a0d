"""Fixtures for stream tests: real workers (subprocesses of `coldstart worker`) on a broker of
the test module's own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from kafka import KafkaProducer

from tests.conftest import module_broker_fixture

# Workers and trainers read whole topics: each module of this folder gets a broker of its own.
kafka_bootstrap = module_broker_fixture()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WorkerProcess:
    bootstrap: str
    app_id: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"  # any 127.x.y.z: two workers may share a port on distinct loopback addresses
    role: str = "worker"  # or "serve": a serving replica (coldstart serve) of the app ``app_id``

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 180.0) -> "WorkerProcess":
        """``coldstart worker`` through the local toolkit, configured as an operator would: ``COLDSTART_*``
        strings (``extra_env`` on top of the test defaults) read by ``Settings.from_env``."""
        from coldstart.local import spawn_replica, spawn_worker
        from coldstart.settings import Settings

        settings = Settings.from_env({
            **os.environ,
            "COLDSTART_BOOTSTRAP_SERVERS": self.bootstrap,
            "COLDSTART_APP_ID": self.app_id,
            "COLDSTART_DATA_DIR": str(self.data_dir),
            "COLDSTART_WEB_PORT": str(self.port),
            "COLDSTART_WEB_HOST": self.host,
            "COLDSTART_PARTITIONS": "2",
            "COLDSTART_DEVICE": "cpu",
            # A killed member is replaced only after the session timeout: keep it short for tests.
            "COLDSTART_SESSION_TIMEOUT_S": "10",
            "COLDSTART_REGISTRY_URI": str(self.data_dir.parent / "registry"),
            **self.extra_env,
        })
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{self.port}.log"
        self.proc = (spawn_replica if self.role == "serve" else spawn_worker)(settings, self.log_path).proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get("/health")
                return self
            except httpx.HTTPError:  # not listening yet, or 503 until its partitions are ready
                time.sleep(0.5)
        raise RuntimeError(f"worker did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # HTTP through httpx, as the local toolkit polls (coldstart.local).
    def get(self, path: str, timeout: float = 10.0) -> dict:
        """The JSON body of a 2xx answer; any other status raises ``httpx.HTTPStatusError``."""
        return httpx.get(self.url + path, timeout=timeout).raise_for_status().json()

    def get_status(self, path: str) -> tuple[int, dict]:
        resp = httpx.get(self.url + path, timeout=10)
        return resp.status_code, resp.json()

    def recommendations(self, user: str, k: int = 10, **params) -> dict:
        query = "&".join([f"k={k}"] + [f"{a}={b}" for a, b in params.items()])
        return self.get(f"/users/{user}/recommendations?{query}")

    def wait_for_events(self, user: str, n_events: int, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        body = {}
        while time.monotonic() < deadline:
            try:
                body = self.recommendations(user)
            except httpx.ReadTimeout:  # a worker that accepted the request and hangs: a failure, not a retry
                raise
            except httpx.HTTPError as exc:  # 503 while (re)balancing, or not listening yet
                body = {"error": str(exc)}
                time.sleep(0.5)
                continue
            if body["n_events"] >= n_events:
                return body
            time.sleep(0.25)
        raise AssertionError(f"user {user} has {body.get('n_events')} events after {timeout} s, "
                             f"expected {n_events}:\n{self.log_tail()}")

    def metrics_text(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).raise_for_status().text

    def metric(self, name: str, **labels: str) -> float:
        """The samples of ``name`` with these labels from /metrics, summed over any other labels (0.0 when
        absent), read with prometheus_client's parser."""
        from prometheus_client.parser import text_string_to_metric_families

        return sum(float(sample.value) for family in text_string_to_metric_families(self.metrics_text())
                   for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def log_tail(self, n: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(scope="module")
def worker(kafka_bootstrap, tmp_path_factory):
    """One worker per test module, with its own consumer group and table changelog."""
    from coldstart.settings import Settings
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    # Gauges every second, not every 5 s: a test's burst drains in a few seconds here and must be seen.
    w = WorkerProcess(kafka_bootstrap, f"cs-test-{uuid.uuid4().hex[:8]}",
                      tmp_path_factory.mktemp("worker") / "data", extra_env={"COLDSTART_GAUGES_EVERY_S": "1"}).start()
    yield w
    w.stop()


@pytest.fixture
def produce(kafka_bootstrap):
    """Send raw events: produce(topic, key, value) with value a dict (JSON) or bytes."""
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=2)

    def send(topic: str, key: str | None, value) -> None:
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.send(topic, key=key.encode() if key is not None else None, value=raw)
        producer.flush()

    yield send
    producer.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
