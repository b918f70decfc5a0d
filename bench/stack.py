"""A local broker and real worker processes for the stream benchmarks (one launcher: ``LocalKafka``).

Workers are subprocesses of ``coldstart worker`` (as a shop runs them), each with its own port and data
directory, all in one Faust app, so two or four of them split the partitions through the group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldstart.settings import Settings


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return self.base_url + "/metrics"

    def scrape(self) -> dict[str, float]:
        return scrape(self.metrics_url)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker on port {self.port} exited with {self.proc.returncode}")


@dataclass
class LocalStack:
    """Broker + topics + workers in a temporary directory; ``close()`` stops all of them."""

    settings: Settings
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="coldstart-bench-")))
    app_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:6]}")
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        from coldstart.kafka_local import LocalKafka, free_port
        from coldstart.streams.topics import ensure_topics

        self.kafka = LocalKafka(version=self.settings.kafka_version, port=free_port(), data_dir=self.tmp / "kafka")
        self.bootstrap = self.kafka.start()
        self.settings = self.settings.replace(bootstrap_servers=self.bootstrap)
        ensure_topics(self.settings)

    def start_worker(self, **changes: Any) -> WorkerProcess:
        """A worker process with this stack's settings, ``changes`` applied (e.g. ``anomaly_guard=False``)."""
        from coldstart.kafka_local import free_port

        port = free_port()
        n = len(self.workers)
        settings = self.settings.replace(bootstrap_servers=self.bootstrap, web_port=port,
                                         data_dir=self.tmp / f"worker{n}", app_id=self.app_id, **changes)
        env = {**os.environ, **settings.to_env()}
        proc = subprocess.Popen([sys.executable, "-m", "coldstart.cli", "worker", "--loglevel", "warning"],
                                env=env, stdout=open(self.tmp / f"worker{n}.log", "wb"), stderr=subprocess.STDOUT)
        worker = WorkerProcess(proc, port)
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until every worker's /health says ok (partitions assigned, catalog caught up)."""
        deadline = time.monotonic() + timeout
        for w in self.workers:
            while True:
                w.alive()
                try:
                    with urllib.request.urlopen(w.base_url + "/health", timeout=5) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker on port {w.port} not healthy within {timeout} s")
                time.sleep(0.5)

    def close(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.workers:
            try:
                w.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
        self.kafka.stop()
        # the broker's log segments and the workers' RocksDB: gigabytes after a long run
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus text page, keyed by ``name{labels}`` (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def counter_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def total_counter(workers: list[WorkerProcess], name: str) -> float:
    total = 0.0
    for w in workers:
        w.alive()
        try:
            total += counter_sum(w.scrape(), name)
        except OSError:
            pass
    return total


def wait_total(workers: list[WorkerProcess], name: str, target: float, timeout: float,
               poll_s: float = 0.2) -> tuple[tuple[float, float], tuple[float, float]]:
    """Poll until the sum of counter ``name`` over ``workers`` reaches ``target``; returns the first
    (time, value) with a non-zero value and the last one (perf_counter clock)."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        value = total_counter(workers, name)
        now = time.perf_counter()
        if first is None and value > 0:
            first = (now, value)
        if value >= target:
            return first or (now, value), (now, value)
        time.sleep(poll_s)
    raise TimeoutError(f"{name} did not reach {target} within {timeout} s")


def histogram_quantiles(before: dict, after: dict, name: str, qs=(0.5, 0.99)) -> list[float]:
    """Quantiles of a Prometheus histogram over the interval between two scrapes, interpolated
    linearly inside a bucket (the fine buckets of ``streams.metrics`` keep that error small).

    >>> b = {'h_bucket{le="0.1"}': 0.0, 'h_bucket{le="0.2"}': 0.0, 'h_bucket{le="+Inf"}': 0.0}
    >>> a = {'h_bucket{le="0.1"}': 50.0, 'h_bucket{le="0.2"}': 100.0, 'h_bucket{le="+Inf"}': 100.0}
    >>> [round(x, 3) for x in histogram_quantiles(b, a, "h")]
    [0.1, 0.198]
    """
    buckets: dict[float, float] = {}
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            le = key.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value - before.get(key, 0.0)
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    result = []
    for q in qs:
        want = q * total
        prev_bound, prev_count = 0.0, 0.0
        value = float("nan")
        for bound, count in ordered:
            if count >= want and total > 0:
                if bound == float("inf"):
                    value = prev_bound
                else:
                    frac = (want - prev_count) / max(count - prev_count, 1e-9)
                    value = prev_bound + frac * (bound - prev_bound)
                break
            prev_bound, prev_count = bound, count
        result.append(value)
    return result


def merged_scrape(workers: list[WorkerProcess]) -> dict[str, float]:
    """The samples of all workers added up (histogram buckets and counters sum across processes)."""
    out: dict[str, float] = {}
    for w in workers:
        for k, v in w.scrape().items():
            out[k] = out.get(k, 0.0) + v
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
