"""/health's verdict on the stream (issue 8): red when an agent crashed, when a batch keeps failing,
or when no batch completed for ``stall_after_s`` while the consumer lag grew; green otherwise."""

from __future__ import annotations

import time

import pytest

from coldstart.settings import Settings
from coldstart.streams.app import Worker


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    data = tmp_path_factory.mktemp("health")
    return Worker(Settings(device="cpu", data_dir=data / "w", stall_after_s=30.0))


def test_progress_keeps_health_green_even_with_lag(worker):
    worker.last_progress = time.monotonic() - 5
    worker.lag_at_progress, worker.lag_now = 100, 5_000  # a burst being worked through
    assert worker.health_problem() is None


def test_no_progress_while_lag_grows_is_a_stall(worker):
    worker.last_progress = time.monotonic() - 120
    worker.lag_at_progress, worker.lag_now = 10, 500
    assert worker.health_problem().startswith("stream stalled: no batch completed for 120 s")
    worker.lag_now = 10  # idle with nothing new to read: not a stall
    assert worker.health_problem() is None


def test_failing_batch_and_crashed_agent_are_reported(worker):
    worker.last_progress = time.monotonic()
    worker.stream_failure = ConnectionError("broker gone")
    assert worker.health_problem() == "stream retrying a failed batch: ConnectionError: broker gone"
    worker.stream_failure = None
    with pytest.raises(RuntimeError):
        with worker.crash_recorded("update_profiles"):
            raise RuntimeError("boom")
    assert worker.health_problem() == "agent update_profiles crashed: RuntimeError: boom"
    worker.agent_crashes.clear()
