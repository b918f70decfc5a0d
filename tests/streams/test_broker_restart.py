"""The broker stopped and started in the middle of a replay (issue 8): the worker reconnects by itself
and every event sent before, during (buffered by the producer) and after the outage is applied exactly
once."""

from __future__ import annotations

import json
import os
import time

import pytest
from kafka import KafkaProducer

from coldstart.kafka_local import LocalKafka, free_port
from coldstart.settings import Settings
from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


@pytest.fixture
def broker(tmp_path):
    b = LocalKafka(version=os.environ.get("COLDSTART_TEST_KAFKA_VERSION", "4.0.0"), port=free_port(),
                   data_dir=tmp_path / "kafka")
    b.start()
    yield b
    b.stop()


def test_worker_reconnects_after_broker_restart_and_applies_every_event_once(broker, tmp_path):
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=broker.bootstrap, partitions=2))
    w = WorkerProcess(broker.bootstrap, unique("cs-br"), tmp_path / "data").start()
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
        for u in users:
            w.wait_for_events(u, truth[u], timeout=120)
        broker.stop()
        time.sleep(5)  # the worker sees the broker gone
        broker.start()
        restarted = time.monotonic()
        send(200)
        for u in users:
            body = w.wait_for_events(u, truth[u], timeout=180)
            assert body["n_events"] == truth[u], (u, body["n_events"], truth[u])
        print(f"\nbroker restart: all {sum(truth.values())} events applied once "
              f"{time.monotonic() - restarted:.1f} s after the broker came back")
        assert w.proc.poll() is None
        status, body = w.get_status("/health")
        assert status == 200, body
    finally:
        w.stop()
