"""The trainer killed (SIGKILL, no cleanup) at every step of a round, then restarted (issue 8).

A real ``coldstart trainer`` process consumes samples from the broker and runs a round;
``COLDSTART_CRASH_AT`` kills it after the buffer flush (offsets not committed yet), after the version
folder is renamed into place (``CURRENT`` not moved yet), after ``CURRENT`` moved (not announced yet)
or just before the announcement. A second trainer on the same buffer, registry and consumer group then
runs with no new traffic. Ground truth: every sample sent is in the buffer exactly once, ``CURRENT``
names a version that verifies, ``model.versions`` announces that very version, and a worker started
afterwards serves it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest

from coldstart.failpoints import POINTS
from coldstart.kafka_local import free_port
from coldstart.model.registry import Registry
from coldstart.settings import Settings, TrainerSettings
from coldstart.trainer.buffer import SampleBuffer
from coldstart.trainer.service import latest_announcement
from tests.streams.conftest import WorkerProcess, unique
from tests.trainer.test_trainer_kafka import sample, send

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

N = 80  # above the trainer's 64-sample minimum and --round-min-samples: one round is due


def trainer(settings: Settings, log: Path, crash_at: str | None = None, *, round_min_samples: int = 64,
            metrics_port: int | None = None) -> subprocess.Popen:
    """A ``coldstart trainer`` process with tiny rounds (2 steps, a gate that lets any candidate through)."""
    env = {k: v for k, v in os.environ.items() if k != "COLDSTART_CRASH_AT"}
    env.update({"COLDSTART_BOOTSTRAP_SERVERS": settings.bootstrap_servers, "COLDSTART_APP_ID": settings.app_id,
                "COLDSTART_BUFFER_DIR": str(settings.buffer_dir), "COLDSTART_REGISTRY_URI": settings.registry_uri,
                "COLDSTART_DEVICE": "cpu", "COLDSTART_TORCH_THREADS": "1"})
    if crash_at:
        env["COLDSTART_CRASH_AT"] = crash_at
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "coldstart.cli", "trainer", "--round-min-samples", str(round_min_samples),
             "--steps", "2", "--gate-tolerance", "1.0", "--metrics-port", str(metrics_port or free_port())],
            env=env, stdout=out, stderr=subprocess.STDOUT)


def announced_current(settings: Settings, registry: Registry, timeout: float = 240.0,
                      proc: subprocess.Popen | None = None, log: Path | None = None) -> str:
    """Wait until model.versions announces this registry's CURRENT; returns that version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, log.read_text()[-3000:] if log else "trainer exited"
        current = registry.current()
        if current:
            latest = asyncio.run(latest_announcement(settings, timeout_s=5))
            if latest is not None and latest.version == current and latest.uri.endswith(
                    f"{registry.root}/versions/{current}"):
                return current
        time.sleep(1.0)
    raise AssertionError(f"CURRENT {registry.current()} never announced:\n" + (log.read_text()[-3000:] if log else ""))


@pytest.mark.parametrize("point", POINTS)
def test_a_trainer_killed_at_any_step_recovers_to_an_agreeing_state(point, kafka_bootstrap, tmp_path):
    from coldstart.streams.topics import ensure_topics

    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=2, app_id=unique("cs-crash"), device="cpu",
                        buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"))
    ensure_topics(settings)
    tag = unique(point)
    sent = [sample(i, tag) for i in range(N)]
    send(kafka_bootstrap, sent)
    log = tmp_path / "trainer.log"

    crashed = trainer(settings, log, crash_at=point)
    try:
        assert crashed.wait(timeout=300) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        crashed.kill()
    registry = Registry(settings.registry_uri)
    if point == "after_version_rename":
        assert registry.list_versions() and registry.current() is None  # a folder, never made current

    restarted = trainer(settings, log)
    try:
        current = announced_current(settings, registry, proc=restarted, log=log)
        registry.load(current)  # every file's sha256 verifies
        time.sleep(2.0)  # a poll or two more: nothing may arrive twice
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
    # the buffer holds each sample once, none lost (the crash may have come before the offset commit)
    buffer = SampleBuffer(settings.buffer_dir, TrainerSettings.buffer_max_bytes, TrainerSettings.buffer_max_age_s)
    ids = buffer.read().column("sample_id")
    mine = pc.filter(ids, pc.starts_with(ids, f"{tag}-")).to_pylist()
    assert sorted(mine) == sorted(s.sample_id for s in sent)
    assert len(set(ids.to_pylist())) == len(ids)
    print(f"\n{point}: restarted trainer announced CURRENT={current}; {len(mine)} samples buffered once")

    if point == "before_announcement":  # a worker started now serves the last good version
        worker = WorkerProcess(kafka_bootstrap, unique("cs-crash-w"), tmp_path / "worker",
                               extra_env={"COLDSTART_REGISTRY_URI": settings.registry_uri}).start()
        try:
            deadline = time.monotonic() + 120
            while worker.get("/health")["model_version"] != current:
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.5)
        finally:
            worker.stop()
