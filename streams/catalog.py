"""Every worker's view of the whole catalog: titles from ``catalog.items`` and click evidence
(popularity, learned item text) from ``events.click``, read from ALL partitions.

It also reads ``events.dlq``: a click dead-lettered because its user behaves like a bot (flagged by the
worker that owns the user, the only one that sees all of that user's events) is kept out of this
worker's stream statistics too, or taken back out if this reader counted it first (issue 10).

A group consumer would give each worker only its share of items, but every worker must be able to
recommend every item. So each worker reads both topics outside any consumer group, from the start of
retention (``catalog.items`` is compacted: the latest title of every item), and keeps its item index
in step. The index is a derived cache: rebuilt from Kafka on restart, never the source of truth.
Invalid records are skipped here; the ``validate_catalog`` agent dead-letters them once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from coldstart.kafka_security import aiokafka_options

from coldstart.errors import BadEvent
from coldstart.settings import Settings
from coldstart.model.anomaly import BOT_REASONS
from coldstart.model.items import ClickEvidence
from coldstart import contract
from coldstart.contract import parse_click, parse_item

log = logging.getLogger(__name__)

REFRESH_CHUNK = 64  # item texts encoded per slice of the event loop


class CatalogReader:
    def __init__(self, settings: Settings, worker) -> None:
        self.settings = settings
        self.worker = worker  # reads worker.model at every batch: follows hot-swaps
        self.items_seen = 0
        self.clicks_seen = 0
        self.caught_up = asyncio.Event()

    async def run(self) -> None:
        """Follow both topics forever; a failure restarts the reader (the index is idempotent)."""
        await follow_forever(self._follow, "catalog reader")

    @staticmethod
    async def _at_end(consumer, end) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"{self.settings.app_id}-catalog-reader",
            **aiokafka_options(self.settings),
        )
        await consumer.start()
        try:
            tps = await assign_all_partitions(consumer, (contract.CATALOG, contract.CLICK, contract.DLQ,
                                                         contract.AUDIT))
            end = await consumer.end_offsets(tps)
            while True:
                batch = await consumer.getmany(timeout_ms=50, max_records=2000)
                if batch:
                    await self._on_writer(self.apply, [m for msgs in batch.values() for m in msgs])
                # Encode new item texts in small chunks on the writer thread: a whole catalog arriving
                # at once takes a minute on a CPU, and the stream's batches take turns with it.
                model = self.worker.model
                while await self._on_writer(model.items.refresh, model.encoder, model.cache, REFRESH_CHUNK):
                    self.worker.metrics.items.set(int(model.items.valid.sum()))
                    model = self.worker.model
                if not self.caught_up.is_set() and not model.items.pending and await self._at_end(consumer, end):
                    self.caught_up.set()
                    log.info("catalog reader caught up: %d items, %d clicks",
                             self.items_seen, self.clicks_seen)
        finally:
            await consumer.stop()

    async def _on_writer(self, fn, *args):
        """Run an item-index write on the worker's single writer thread, between batches and swaps
        (issue 11: one writer of the index, never the event loop)."""
        worker = self.worker
        async with worker.batch_lock:
            return await asyncio.get_running_loop().run_in_executor(worker.batch_executor, fn, *args)

    def apply(self, messages) -> None:
        model = self.worker.model
        clicks = []
        for msg in messages:
            try:
                if msg.topic == contract.DLQ:
                    event_id = bot_click_id(msg.value)
                    if event_id is not None:
                        self.worker.retract_clicks([event_id])
                        self.worker.metrics.bot_clicks_kept_out.inc()
                elif msg.topic == contract.AUDIT:
                    # A bot's events that its owner applied before flagging it: out here too.
                    self.worker.retract_clicks(list(contract.FlaggedBack.loads(msg.value).event_ids))
                elif msg.topic == contract.CATALOG:
                    item = parse_item(msg.value, msg.key)
                    model.items.upsert(item.item_id, item.title)
                    self.worker.recommender.stats.note_item(item.item_id, item.ts)
                    self.items_seen += 1
                else:
                    c = parse_click(msg.value, msg.key, now=time.time(), min_ts=self.settings.min_event_ts,
                                    max_future_s=self.settings.max_future_skew_s)
                    clicks.append(ClickEvidence(c.event_id, c.item_id, c.query, c.ts))
                    # Every partition's clicks: transitions, co-clicks, query memory, popularity.
                    self.worker.recommender.stats.observe(c.event_id, c.user_id, c.item_id, c.ts, query=c.query)
            except BadEvent:
                continue
        self.clicks_seen += model.items.observe_clicks(clicks)


def bot_click_id(raw: bytes | None) -> str | None:
    """The event id of the click a DLQ record holds when the record says its user behaves like a bot;
    None for any other record (another reason, a search, an unreadable original).

    >>> import base64, json
    >>> def record(reason, topic, value):
    ...     return json.dumps({"reason": reason, "topic": topic,
    ...                        "value_b64": base64.b64encode(json.dumps(value).encode()).decode()}).encode()
    >>> bot_click_id(record("click_flood", "events.click", {"event_id": "c7", "user_id": "bot"}))
    'c7'
    >>> bot_click_id(record("not_json", "events.click", {"event_id": "c7"})) is None
    True
    >>> bot_click_id(b"not a record") is None
    True
    """
    try:
        record = json.loads(raw or b"")
        if record.get("reason") not in BOT_REASONS or record.get("topic") != contract.CLICK:
            return None
        # The id as the parser made it (an integer id is counted under its string), as stats.observe saw it.
        return contract.event_id_of(json.loads(base64.b64decode(record["value_b64"])))
    except (BadEvent, ValueError, TypeError, KeyError, AttributeError):
        return None


async def assign_all_partitions(consumer: AIOKafkaConsumer, topics) -> list[TopicPartition]:
    """Assign every partition of ``topics`` (no consumer group) and seek to the beginning."""
    tps: list[TopicPartition] = []
    for topic in topics:
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await asyncio.sleep(0.5)
        tps += [TopicPartition(topic, p) for p in sorted(parts)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return tps


async def follow_forever(follow, name: str, backoff_s: float = 2.0) -> None:
    """Run a reader coroutine forever: a broker hiccup or a bug in one record restarts the reader,
    never the worker (both readers here rebuild their state idempotently from the topic)."""
    while True:
        try:
            await follow()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; restarting in %.0f s", name, backoff_s)
            await asyncio.sleep(backoff_s)
