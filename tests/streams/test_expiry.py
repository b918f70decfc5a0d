"""Bounded state (issue 8): a user with no event for ``COLDSTART_USER_TTL_S`` of stream time loses their
profile; the deletion is a tombstone on the table's changelog (so a restore does not bring it back) and
is counted; active users keep theirs."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from coldstart.settings import Settings
from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

TTL_S = 3600


def changelog_records(bootstrap: str, topic: str, key: bytes) -> list[bytes | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    values = [msg.value for msg in consumer if msg.key == key]
    consumer.close()
    return values


def expired_total(worker: WorkerProcess) -> float:
    return worker.metric("coldstart_users_expired_total")


def test_inactive_users_expire_with_a_tombstone_and_active_users_stay(kafka_bootstrap, produce, tmp_path):
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    app_id = unique("cs-expiry")
    worker = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "data", extra_env={
        "COLDSTART_USER_TTL_S": str(TTL_S), "COLDSTART_EXPIRY_EVERY_S": "1"}).start()
    try:
        now = time.time()
        idle = [unique("idle") for _ in range(6)]
        active = [unique("active") for _ in range(6)]
        for i, user in enumerate(idle):  # their last event two hours before the stream's newest one
            produce("events.search", user, {"event_id": unique("e"), "user_id": user, "ts": now - 2 * TTL_S - i,
                                            "query": "garden hose"})
        for user in idle:
            worker.wait_for_events(user, 1, timeout=120)
        for user in active:  # the stream's clock moves to now: the idle users are past the TTL
            produce("events.search", user, {"event_id": unique("e"), "user_id": user, "ts": now,
                                            "query": "desk lamp"})

        deadline = time.monotonic() + 120
        while expired_total(worker) < len(idle):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.5)
        for user in active:
            assert worker.wait_for_events(user, 1, timeout=60)["n_events"] == 1
        for user in idle:
            body = worker.get(f"/users/{user}/recommendations?k=3")
            assert body["n_events"] == 0 and body["strategy"] == "popular", body
        assert expired_total(worker) == len(idle)  # the active users were never expired

        changelog = f"{app_id}-user_to_profile-changelog"
        for user in idle:
            records = changelog_records(kafka_bootstrap, changelog, user.encode())
            assert records and records[-1] is None, records  # a profile, then its tombstone
        assert changelog_records(kafka_bootstrap, changelog, active[0].encode())[-1] is not None
    finally:
        worker.stop()
