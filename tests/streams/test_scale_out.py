"""Scale-out under faults (issue 8): two workers on the same port, each bound to its own address and
advertising it (COLDSTART_ADVERTISED_URL, as a deployment binding 0.0.0.0 must set it), answer every
request from the owner's table; when one stops, the other takes its partitions and table over and
answers for every user with the exact event count sent."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaProducer

from coldstart.settings import Settings
from tests.streams.conftest import WorkerProcess, free_port, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


def test_two_workers_with_advertised_urls_answer_for_each_other_and_take_over(kafka_bootstrap, tmp_path):
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    app_id, port = unique("cs-scale"), free_port()
    workers = []
    for host in ("127.0.0.2", "127.0.0.3"):
        workers.append(WorkerProcess(kafka_bootstrap, app_id, tmp_path / host, port=port, host=host,
                                     extra_env={"COLDSTART_ADVERTISED_URL": f"http://{host}:{port}"}))
    a, b = (w.start() for w in workers)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(w.get_status("/health")[0] == 200 for w in (a, b)):
            time.sleep(0.5)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        truth, partitions = {}, set()
        for n in range(24):
            u = unique("r")
            truth[u] = n % 3 + 1
            for i in range(truth[u]):
                ev = {"event_id": unique("e"), "user_id": u, "ts": time.time(), "query": f"query {i}"}
                partitions.add(producer.send("events.search", key=u.encode(),
                                             value=json.dumps(ev).encode()).get(10).partition)
        producer.close()
        assert partitions == {0, 1}
        for u, want in truth.items():
            for w in (a, b):  # one of them proxies to the owner: never a silent "popular" answer
                body = w.wait_for_events(u, want, timeout=90)
                assert body["n_events"] == want and body["strategy"] == "personal", (u, w.host, body)

        b.stop()  # graceful: the group rebalances at once, b's partitions and table move to a
        stopped = time.monotonic()
        for u, want in truth.items():
            body = a.wait_for_events(u, want, timeout=120)
            assert body["n_events"] == want, (u, body["n_events"], want)
        print(f"\ntakeover: every user answered by the survivor {time.monotonic() - stopped:.1f} s after the stop")
    finally:
        a.stop()
        b.stop()
