"""Shared fixtures. Kafka tests run against a real broker started by deploy/kafka/kafka.sh."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coldstart.kafka_local import LocalKafka, free_port


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One real Apache Kafka broker for the whole session (COLDSTART_TEST_KAFKA_VERSION, default 4.0.0).

    Fails (never skips) with the script's message when Java, Maven or Maven Central is missing.
    """
    broker = LocalKafka(
        version=os.environ.get("COLDSTART_TEST_KAFKA_VERSION", "4.0.0"),
        port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka"),
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalKafka) -> str:
    """Bootstrap servers ("127.0.0.1:PORT") of the session broker."""
    return kafka_broker.bootstrap
