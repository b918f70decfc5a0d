"""The topics of the design, created explicitly before anything produces.

Faust does not create source topics, and a broker with auto-creation would make them with one
partition: so every topic is declared here with its partition count and cleanup policy and created
by :func:`ensure_topics` (idempotent). User-keyed topics share one partition count so that one worker
owns all of a user's events and the user's table shard.
"""

from __future__ import annotations

import dataclasses
import logging

from coldstart.contract import AUDIT, CATALOG, CLICK, DLQ, MODEL_VERSIONS, SAMPLES, SEARCH, USER_TOPICS
from coldstart.errors import ConfigError, KafkaUnavailable
from coldstart.settings import Settings

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = None

    def configs(self) -> dict[str, str]:
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


def topic_specs(settings: Settings) -> list[TopicSpec]:
    week = 7 * 24 * 3600 * 1000
    return [
        TopicSpec(SEARCH, settings.partitions, retention_ms=week),
        TopicSpec(CLICK, settings.partitions, retention_ms=week),
        # Latest title per item is all a worker needs to rebuild its catalog: compact.
        TopicSpec(CATALOG, settings.partitions, compacted=True),
        TopicSpec(DLQ, 1, retention_ms=4 * week),
        TopicSpec(AUDIT, 1, retention_ms=4 * week),
        TopicSpec(SAMPLES, settings.partitions, retention_ms=week),
        # Latest announcement per key ("current") is the version to serve: compact.
        TopicSpec(MODEL_VERSIONS, 1, compacted=True),
    ]


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create the missing topics; refuse to run when an existing user topic has another partition count.

    Returns the names of the topics it created.
    """
    from kafka.admin import KafkaAdminClient, NewTopic

    from coldstart.kafka_security import kafka_python_options
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.app_id}-admin",
            request_timeout_ms=int(timeout_s * 1000),
            **kafka_python_options(settings),
        )
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"no Kafka broker answers at {settings.bootstrap_servers} ({exc}); "
            "start one with `coldstart kafka start` or set COLDSTART_BOOTSTRAP_SERVERS"
        ) from exc
    try:
        specs = topic_specs(settings)
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created = []
        if missing:
            new = [
                NewTopic(s.name, num_partitions=s.partitions,
                         replication_factor=settings.replication_factor, topic_configs=s.configs())
                for s in missing
            ]
            try:
                admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
                created = [s.name for s in missing]
            except TopicAlreadyExistsError:
                pass  # a second worker raced us to it
        _check_partitions(admin, settings, [s for s in specs if s.name in USER_TOPICS])
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        admin.close()


def _check_partitions(admin, settings: Settings, specs: list[TopicSpec]) -> None:
    counts = {}
    for meta in admin.describe_topics([s.name for s in specs]):
        counts[meta.get("name") or meta.get("topic")] = len(meta["partitions"])  # kafka-python 3 says "name"
    if len(set(counts.values())) > 1:
        raise ConfigError(
            f"user-keyed topics must be co-partitioned, found partition counts {counts}: "
            "recreate them with the same count (COLDSTART_PARTITIONS)"
        )
