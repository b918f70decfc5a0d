"""The local broker is a real Apache Kafka: round trips, explicit topics only, and a clean lifecycle."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaTimeoutError

from coldstart.errors import KafkaUnavailable
from coldstart.kafka_local import LocalKafka, free_port

# The 3.x line the project still supports next to the 4.x default.
KAFKA_3_VERSION = os.environ.get("COLDSTART_TEST_KAFKA3_VERSION", "3.9.1")


def create_topic(bootstrap: str, partitions: int) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


def round_trip(bootstrap: str, topic: str, key: bytes, value: bytes) -> tuple[bytes, bytes, int]:
    """Produce one record and read it back through a consumer group that commits its offset."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    meta = producer.send(topic, key=key, value=value).get(timeout=30)
    producer.close()

    group = f"group-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=30_000)
    try:
        record = next(iter(consumer))
        consumer.commit()  # needs __consumer_offsets, i.e. a replication factor that fits one node
        committed = consumer.committed(TopicPartition(topic, meta.partition))
    finally:
        consumer.close()
    assert committed == meta.offset + 1
    return record.key, record.value, record.partition


@pytest.mark.kafka
def test_round_trip_through_an_explicit_topic(kafka_bootstrap: str) -> None:
    topic = create_topic(kafka_bootstrap, partitions=3)

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == {0, 1, 2}
    finally:
        consumer.close()
    key, value, _ = round_trip(kafka_bootstrap, topic, b"u1", b'{"event_id": "e1"}')
    assert (key, value) == (b"u1", b'{"event_id": "e1"}')


@pytest.mark.kafka
def test_missing_topics_are_not_created_automatically(kafka_bootstrap: str) -> None:
    missing = f"missing-{uuid.uuid4().hex[:10]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, max_block_ms=2000)
    try:
        with pytest.raises(KafkaTimeoutError):
            producer.send(missing, b"x").get(timeout=10)
    finally:
        producer.close()

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert missing not in admin.list_topics()
        [described] = admin.describe_topics([missing])
        assert described["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION
    finally:
        admin.close()


@pytest.mark.kafka
def test_session_broker_reports_running(kafka_broker: LocalKafka) -> None:
    assert kafka_broker.status() is True


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_3_broker_lifecycle(tmp_path: Path) -> None:
    broker = LocalKafka(version=KAFKA_3_VERSION, port=free_port(), data_dir=tmp_path / "kafka3")
    try:
        bootstrap = broker.start()
        assert bootstrap == f"127.0.0.1:{broker.port}"
        assert broker.status() is True
        assert broker.start() == bootstrap  # idempotent: finds the running broker

        topic = create_topic(bootstrap, partitions=3)
        assert round_trip(bootstrap, topic, b"u2", b"hello")[:2] == (b"u2", b"hello")
    finally:
        broker.stop()
    assert broker.status() is False
    broker.stop()  # stopping a stopped broker is harmless
    assert broker.status() is False


def test_start_on_a_busy_port_fails_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        broker = LocalKafka(port=squatter.getsockname()[1], data_dir=tmp_path / "kafka")
        with pytest.raises(KafkaUnavailable, match="in use by another process"):
            broker.start()
    assert broker.status() is False


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
