"""The broker stopped and started in the middle of a replay (issue 8): the worker and the trainer
reconnect by themselves; every event sent before and after the outage is applied exactly once and every
training sample is buffered exactly once."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from kafka import KafkaProducer

from coldstart.local import scrape  # prometheus_client's parser
from coldstart.kafka_local import LocalKafka, free_port
from coldstart.settings import Settings, TrainerSettings
from coldstart.trainer.buffer import SampleBuffer
from tests.streams.conftest import WorkerProcess, unique
from tests.trainer.test_crash_points import trainer
from tests.trainer.test_trainer_kafka import sample
from tests.trainer.test_trainer_kafka import send as send_samples

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


@pytest.fixture
def broker(tmp_path):
    b = LocalKafka(version=os.environ.get("COLDSTART_TEST_KAFKA_VERSION", "4.0.0"), port=free_port(),
                   data_dir=tmp_path / "kafka")
    b.start()
    yield b
    b.stop()


def buffered(port: int) -> float:
    return scrape(f"http://127.0.0.1:{port}/metrics").get('coldstart_trainer_samples_in_total{result="buffered"}', 0.0)


def wait_buffered(port: int, n: int, trainer_proc, log) -> None:
    deadline = time.monotonic() + 180
    while True:
        assert trainer_proc.poll() is None, log.read_text()[-3000:]
        try:
            if buffered(port) >= n:
                return
        except httpx.HTTPError:  # the trainer's /metrics is not listening yet
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def test_worker_and_trainer_reconnect_after_broker_restart_and_lose_nothing(broker, tmp_path):
    from coldstart.streams.topics import ensure_topics

    settings = Settings(bootstrap_servers=broker.bootstrap, partitions=2, app_id=unique("cs-br"), device="cpu",
                        buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"))
    ensure_topics(settings)
    w = WorkerProcess(broker.bootstrap, unique("cs-br"), tmp_path / "data").start()
    port, log = free_port(), tmp_path / "trainer.log"
    t = trainer(settings, log, round_min_samples=100_000, metrics_port=port)  # buffers, never trains here
    tag = unique("br")
    samples = [sample(i, tag) for i in range(60)]
    users = [unique("b") for _ in range(40)]
    truth = {u: 0 for u in users}

    def send(n: int) -> None:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", retries=20,
                                 reconnect_backoff_max_ms=2000)
        for i in range(n):
            u = users[i % len(users)]
            ev = {"event_id": unique("e"), "user_id": u, "ts": time.time(), "query": f"query {i % 5}"}
            producer.send("events.search", key=u.encode(), value=json.dumps(ev).encode()).get(60)
            truth[u] += 1
        producer.close()

    try:
        send(200)
        send_samples(broker.bootstrap, samples[:30])
        for u in users:
            w.wait_for_events(u, truth[u], timeout=120)
        wait_buffered(port, 30, t, log)
        broker.stop()
        time.sleep(5)  # the worker sees the broker gone
        broker.start()
        restarted = time.monotonic()
        send(200)
        send_samples(broker.bootstrap, samples[30:])
        for u in users:
            body = w.wait_for_events(u, truth[u], timeout=180)
            assert body["n_events"] == truth[u], (u, body["n_events"], truth[u])
        print(f"\nbroker restart: all {sum(truth.values())} events applied once "
              f"{time.monotonic() - restarted:.1f} s after the broker came back")
        assert w.proc.poll() is None
        status, body = w.get_status("/health")
        assert status == 200, body
        wait_buffered(port, 60, t, log)
        print(f"trainer: all 60 samples buffered {time.monotonic() - restarted:.1f} s after the broker came back")
    finally:
        w.stop()
        t.send_signal(signal.SIGTERM)
        t.wait(timeout=60)
    ids = SampleBuffer(settings.buffer_dir, TrainerSettings.buffer_max_bytes, TrainerSettings.buffer_max_age_s) \
        .read().column("sample_id").to_pylist()
    assert sorted(ids) == sorted(s.sample_id for s in samples)  # each once, none lost
