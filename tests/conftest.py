"""Shared fixtures. Kafka tests run against a real broker started by deploy/kafka/kafka.sh."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coldstart.kafka_local import LocalKafka, free_port


def run_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """Start a real broker in a fresh directory, yield it, stop it."""
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


def module_broker_fixture():
    """For a conftest: ``kafka_bootstrap`` as a broker of each test module's own.

    Workers read every partition of catalog.items and events.click, and trainers read
    training.samples from the start, so modules that run workers or trainers get a broker of their
    own: one module's items, clicks and samples never leak into another's assertions.
    """

    @pytest.fixture(scope="module")
    def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        yield from (broker.bootstrap for broker in run_broker(tmp_path_factory))

    return kafka_bootstrap


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """One real Apache Kafka broker for the whole session (COLDSTART_TEST_KAFKA_VERSION, default 4.0.0).

    Fails (never skips) with the script's message when Java, Maven or Maven Central is missing.
    """
    yield from run_broker(tmp_path_factory)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalKafka) -> str:
    """Bootstrap servers ("127.0.0.1:PORT") of the session broker."""
    return kafka_broker.bootstrap
