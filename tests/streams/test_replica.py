"""The serving replica (``coldstart serve``) against a real worker on a real broker: it answers for every
user what the owning worker answers, from the table's changelog, the catalog and the ranker checkpoint."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

TITLES = {
    "hp": "Wireless noise cancelling over-ear headphones",
    "kb": "Mechanical gaming keyboard with RGB backlight",
    "st": "Heavy duty office stapler, 40 sheets",
    "pan": "Non-stick frying pan for the kitchen, 28 cm",
    "mouse": "Ergonomic wireless mouse for the office",
    "pot": "Stainless steel cooking pot with lid, 5 litres",
}


@pytest.fixture(scope="module")
def pair(kafka_bootstrap, tmp_path_factory):
    """A worker that checkpoints its ranker every second and a replica that follows the same app and
    the worker's data directory (so, by default, its ranker checkpoint)."""
    from coldstart.settings import Settings
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    app_id = unique("cs-replica")
    data = tmp_path_factory.mktemp("replica") / "data"
    env = {"COLDSTART_RANKER_SAVE_EVERY_S": "1", "COLDSTART_GAUGES_EVERY_S": "1"}
    worker = WorkerProcess(kafka_bootstrap, app_id, data, extra_env=env).start()
    replica = None
    try:
        replica = WorkerProcess(kafka_bootstrap, app_id, data, extra_env=env, role="serve").start()
        yield worker, replica
    finally:
        for proc in (replica, worker):
            if proc is not None:
                proc.stop()


def wait_until(check, timeout: float, what: str, *logs: WorkerProcess):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:  # not ready yet (503) or not listening
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout} s (last: {last!r}):\n" + "\n".join(p.log_tail() for p in logs))


def test_replica_answers_what_the_owning_worker_answers(pair, kafka_bootstrap):
    worker, replica = pair
    tag = unique("t")
    items = {f"{key}-{tag}": title for key, title in TITLES.items()}
    ids = list(items)
    now = time.time()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for item_id, title in items.items():
        producer.send("catalog.items", key=item_id.encode(), value=json.dumps(
            {"item_id": item_id, "title": title, "ts": now}).encode())
    producer.flush()
    users = [unique("u") for _ in range(8)]
    events = 0
    for i, user in enumerate(users):  # a search and two clicks each, over both partitions
        query = ["kitchen pan", "office supplies", "headphones", "keyboard"][i % 4]
        producer.send("events.search", key=user.encode(), value=json.dumps(
            {"event_id": unique("s"), "user_id": user, "ts": now + i, "query": query}).encode())
        for j in range(2):
            producer.send("events.click", key=user.encode(), value=json.dumps(
                {"event_id": unique("c"), "user_id": user, "ts": now + i + 0.1 * (j + 1),
                 "item_id": ids[(i + 3 * j) % len(ids)], "query": query}).encode())
        events += 3
    producer.flush()
    producer.close()

    for user in users:
        assert worker.wait_for_events(user, 3, timeout=120)["n_events"] == 3
    # The ranker has learned from these clicks; the replica adopts the checkpoint the worker writes.
    steps = wait_until(lambda: worker.metric("coldstart_ranker_steps") > 0 and worker.metric("coldstart_ranker_steps"),
                       60, "the worker's ranker learned", worker)

    def same_answers():
        if replica.get("/health")["ranker_steps"] != worker.metric("coldstart_ranker_steps"):
            return False
        for user in users:
            mine, theirs = replica.recommendations(user, k=6), worker.recommendations(user, k=6)
            if (mine["n_events"], mine["model_version"]) != (theirs["n_events"], theirs["model_version"]):
                return False
            if [r["item_id"] for r in mine["items"]] != [r["item_id"] for r in theirs["items"]]:
                return False
        return True

    wait_until(same_answers, 90, "the replica's answers equal the worker's", worker, replica)
    assert replica.get("/health")["ranker_steps"] >= steps
    for user in users:  # scores and explanations too, not only the order
        mine, theirs = replica.recommendations(user, k=6), worker.recommendations(user, k=6)
        assert mine["strategy"] == theirs["strategy"] == "personal"
        assert [(r["item_id"], r["because"]) for r in mine["items"]] == \
               [(r["item_id"], r["because"]) for r in theirs["items"]]
        assert [r["score"] for r in mine["items"]] == pytest.approx([r["score"] for r in theirs["items"]], abs=1e-4)

    nobody = replica.recommendations(unique("nobody"), k=3)
    assert nobody["strategy"] == "popular" and nobody["n_events"] == 0 and len(nobody["items"]) == 3
    status, body = replica.get_status(f"/users/{users[0]}/recommendations?k=0")
    assert status == 400 and "k must be" in body["error"]

    health = replica.get("/health")
    assert health["role"] == "replica" and health["profiles"] >= len(users)
    assert replica.metric("coldstart_replica_profiles") >= len(users)
    assert replica.metric("coldstart_recommendations_total", outcome="personal") > 0


def test_a_new_event_reaches_the_replica(pair, kafka_bootstrap):
    """The replica follows the changelog: an event the worker applies shows in the replica's answer."""
    worker, replica = pair
    user = unique("late")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    producer.send("events.search", key=user.encode(), value=json.dumps(
        {"event_id": unique("s"), "user_id": user, "ts": time.time(), "query": "frying pan"}).encode())
    producer.flush()
    producer.close()
    worker.wait_for_events(user, 1, timeout=60)
    body = replica.wait_for_events(user, 1, timeout=30)
    assert body["strategy"] == "personal"
    # Nothing of the changelog is left unapplied once the answer shows it (the gauge is set every second).
    wait_until(lambda: "\ncoldstart_replica_changelog_lag_offsets 0.0\n" in replica.metrics_text(), 10,
               "the replica's changelog lag at 0", replica)


def test_the_lag_counts_what_a_reader_has_not_read_by_the_brokers_log_end(kafka_bootstrap):
    """``reader_lag`` against a real topic: every record unread before the first fetch (a fetch highwater
    would not exist yet and read 0), none once read, and records written after the last read counted."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    from coldstart.streams.catalog import assign_all_partitions
    from coldstart.streams.replica import reader_lag

    topic = unique("lag")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")

    def send(n: int) -> None:
        for i in range(n):
            producer.send(topic, key=f"k{i}".encode(), value=b"v")
        producer.flush()

    async def scenario() -> list[int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            tps = await assign_all_partitions(consumer, (topic,))
            seen = [await reader_lag(consumer, tps)]
            read = 0
            while read < 30:
                read += sum(len(r) for r in (await consumer.getmany(timeout_ms=500)).values())
            seen.append(await reader_lag(consumer, tps))
            send(7)  # after the last fetch
            seen.append(await reader_lag(consumer, tps))
            return seen
        finally:
            await consumer.stop()

    send(30)
    try:
        assert asyncio.run(scenario()) == [30, 0, 7]
    finally:
        producer.close()
