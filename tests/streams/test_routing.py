"""Two workers in one app: each owns half the partitions, and a recommendation request sent to either
worker is answered from the owner's table (not from a stale copy), for users on every partition."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaProducer

from coldstart.settings import Settings
from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


def test_requests_are_routed_to_the_owning_worker(kafka_bootstrap, tmp_path):
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    app_id = unique("cs-route")
    a = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "a").start()
    b = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "b").start()
    try:
        # Both members must hold an assignment before the requests mean anything.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if all(w.get_status("/health")[0] == 200 for w in (a, b)):
                break
            time.sleep(0.5)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        users = [unique("r") for _ in range(24)]
        partitions = set()
        for n, u in enumerate(users, start=1):
            for i in range(n % 3 + 1):
                ev = {"event_id": unique("e"), "user_id": u, "ts": time.time(), "query": f"query {i}"}
                partitions.add(producer.send("events.search", key=u.encode(),
                                             value=json.dumps(ev).encode()).get(10).partition)
        producer.close()
        assert partitions == {0, 1}  # the users really are spread over both workers
        for n, u in enumerate(users, start=1):
            want = n % 3 + 1
            for w in (a, b):
                body = w.wait_for_events(u, want, timeout=90)
                assert body["n_events"] == want, (u, w.port, body["n_events"], want)
    finally:
        a.stop()
        b.stop()
