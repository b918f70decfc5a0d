"""The Faust worker, in the order data flows: app, topics, table, agents, web views.

Built by :func:`create_app` from one :class:`Settings` (no module-level app), so tests and the CLI can
run several workers with different ports and data directories.

Kafka keys and table keys are the raw UTF-8 bytes of the user id (``key_type=bytes``): the producer's
partitioner, the table's changelog and ``app.table_route`` then all hash the same bytes, so a
recommendation request is answered by the worker that owns the user (with the default JSON key
serializer the router would hash ``"u1"`` with quotes and route half the requests to a stale standby).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import asyncio
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import faust
import torch
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event  # the task-local event Faust's tables and sends read
from faust.types import TP
from prometheus_client import CollectorRegistry

from coldstart.errors import BadEvent
from coldstart.settings import Settings
from coldstart.model.serving import ServingModel
from coldstart.model.anomaly import ActivityGuard
from coldstart import contract
from coldstart.streams.api import UNAUTHORIZED, UNAUTHORIZED_HEADERS, authorized, recommendations_answer
from coldstart.streams.batching import take_batches
from coldstart.streams.catalog import CatalogReader
from coldstart.streams.metrics import BATCH_STAGES, GcPauses, Metrics
from coldstart.streams.processor import COLD_START_EVENTS, BatchProcessor
from coldstart.model.ranker import FEATURES, LinearRanker, load_ranker, save_ranker
from coldstart.streams.recommender import Recommender
from coldstart.contract import PARSERS, DeadLetter, parse_item
from coldstart.streams.state import ProfileState
from coldstart.streams import store as profile_store
from coldstart.streams.swap import ModelSwapper

log = logging.getLogger(__name__)
_EXPIRE_CHUNK = 500  # stale users deleted per hold of the batch lock (one batch's worth of table writes)


class Worker:
    """What one worker process holds: the app, its table, the model in service and its metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 model: ServingModel | None = None) -> None:
        self.settings = settings
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        # One writer of profiles' math and the item index, off the event loop: batches, catalog
        # upserts and refreshes run here one at a time, while HTTP and heartbeats keep answering.
        self.batch_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coldstart-batch")
        self.registry = registry or CollectorRegistry()
        # Every garbage collection timed (issue 11): registered first, so a scrape drains it first.
        self.gc_pauses = GcPauses().install()
        self.registry.register(self.gc_pauses)
        self.metrics = Metrics.create(self.registry)
        self.gc_pauses.histogram = self.metrics.gc_pause_seconds
        self.model = model or ServingModel.load(
            path=settings.model_path or None, device=settings.device,
            cache_size=settings.embedding_cache_size, max_items=settings.max_items,
            max_queries=settings.item_queries, precision=settings.encoder_precision)
        self.processor = BatchProcessor(settings, self.model)
        # issue 10: bot-like users' events go to the DLQ (reason = the rule) before they are applied.
        self.guard = ActivityGuard() if settings.anomaly_guard else None
        self.recommender = Recommender(settings, self.model, ranker=self._restore_ranker())
        self._ranker_saved_steps = self.recommender.ranker.steps
        self.processor.click_hook = self.recommender.learn_clicks  # issue 9: ranker + stream statistics
        self.metrics.model_version_info.labels(self.model.version).set(1)
        for kind in ("search", "click"):  # a worker that got no event yet still reports 0 (ColdstartNoEvents)
            self.metrics.events_in.labels(kind)
        for name in BATCH_STAGES:  # every stage exported from the start, in its order
            self.metrics.batch_stage_seconds.labels(name)
        self._router_ready = False
        # Liveness of the stream (issue 8): when a batch last completed, the lag seen then, and the
        # error the stream is stuck on (a systemic failure retried with backoff, never acknowledged).
        self.last_progress = time.monotonic()
        self.lag_at_progress = 0
        self.lag_now = 0
        self.stream_failure: BaseException | None = None
        self.agent_crashes: dict[str, BaseException] = {}
        self.stream_time = 0.0  # the newest event time applied here: the clock of user expiry
        self._evictions_reported: dict[str, int] = {}
        self._shed_reported = 0  # recommender.steps_shed already carried to the counter
        self.batch_lock = asyncio.Lock()  # a model swap waits for the batch in flight
        self.app = self._build_app()

    def swap(self, model: ServingModel, reference=None) -> None:
        """Switch every consumer of the model at once (called between batches, under batch_lock);
        ``reference``: see :meth:`Recommender.swap`."""
        old = self.model.version
        self.model = model
        self.processor.swap(model)
        self.recommender.swap(model, reference)
        self.metrics.model_version_info.labels(old).set(0)
        self.metrics.model_version_info.labels(model.version).set(1)

    # ---------------------------------------------------------------------------------- app
    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=s.kafka_broker,
            store=profile_store.register(),  # Faust's RocksDB store, one memory budget for all partitions
            datadir=str(s.data_dir),
            web_host=s.web_host,
            web_port=s.web_port,
            # Other workers proxy requests for users they do not own to this URL.
            # Bound to 0.0.0.0 every worker would advertise the same URL: set COLDSTART_ADVERTISED_URL.
            canonical_url=s.advertised_url or f"http://{s.web_host}:{s.web_port}",
            web_in_thread=False,
            topic_partitions=s.partitions,
            topic_replication_factor=s.replication_factor,
            producer_acks=-1,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=min(3.0, s.session_timeout_s / 3),
            processing_guarantee="at_least_once",
            table_standby_replicas=0,
            autodiscover=False,
            # Faust's /table/... views serve raw profiles (recent queries) to anyone; /router/ maps
            # owners. Off (issue 12): recommendations are the only per-user view, behind the API token.
            web_tables_enabled=False,
            web_router_enabled=False,
            broker_credentials=kafka_credentials(s),
        )
        setup_prometheus_sensors(app, pattern="/metrics", registry=self.registry)

        # Raw bytes in: Faust must not decode (a bad event would be dropped inside Faust, not dead-lettered).
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        user_events = app.topic(*contract.USER_TOPICS, **raw)
        catalog = app.topic(contract.CATALOG, **raw)
        self.dlq_topic = app.topic(contract.DLQ, value_type=bytes, value_serializer="raw")
        self.audit_topic = app.topic(contract.AUDIT, value_type=bytes, value_serializer="raw")
        self.profiles = app.Table(
            "user_to_profile", key_type=bytes, value_type=bytes, partitions=s.partitions,
            help="user id -> ProfileState (bounded recent events, vector, model version)",
            options=profile_store.table_options(s.rocksdb_block_cache_mb, s.rocksdb_write_buffer_mb, s.partitions))
        self.catalog_reader = CatalogReader(s, self)
        self.swapper = ModelSwapper(s, self)

        @app.agent(user_events, name="update_profiles")
        async def update_profiles(stream):
            with self.crash_recorded("update_profiles"):
                async for batch in take_batches(stream, s.batch_size, within=s.batch_within_s):
                    async with self.batch_lock:
                        # Never returns before the batch's effect is written: take_batches acks the
                        # batch when this returns *or raises*, so raising would lose it.
                        await self.handle_batch_until_done(batch)

        @app.agent(catalog, name="validate_catalog")
        async def validate_catalog(stream):
            # Items reach every worker's index through CatalogReader (all partitions); this group
            # consumer only dead-letters invalid items, once.
            with self.crash_recorded("validate_catalog"):
                async for event in stream.events():
                    try:
                        parse_item(event.message.value, event.message.key)
                    except BadEvent as exc:
                        await self.dead_letter(exc, event)
                    except Exception as exc:  # a parser bug costs this item, not the stream
                        await self.dead_letter(internal_error(exc), event)

        @app.task
        async def read_catalog() -> None:
            await self.catalog_reader.run()

        @app.task
        async def follow_model_versions() -> None:
            await self.swapper.run()

        @app.timer(interval=s.gauges_every_s)
        async def report_gauges() -> None:
            await self.measure_lag()
            self.report_item_evictions()
            self.report_rocksdb_memory()
            self.report_ranker()
            self.gc_pauses.drain(self.metrics.gc_pause_seconds)

        @app.timer(interval=s.ranker_save_every_s)
        async def save_ranker() -> None:
            await self.save_ranker()

        if s.user_ttl_s > 0:
            @app.timer(interval=s.expiry_every_s)
            async def expire_inactive_users() -> None:
                await self.expire_inactive_users()

        async def owned_recommendations(web, request, user_id: str):
            return await self.recommendations_view(web, request, user_id)

        routed = app.table_route(table=self.profiles, match_info="user_id")(owned_recommendations)

        @app.page("/users/{user_id}/recommendations")
        async def recommendations(web, request, user_id: str):
            if not self.authorized(request):
                return web.json(UNAUTHORIZED, status=401, headers=UNAUTHORIZED_HEADERS)
            # The router hashes the key with the producer's partitioner, which needs metadata for the
            # changelog topic; the producer only has it once it wrote there, so fetch it first.
            if not self.ready():
                return web.json({"error": "worker is starting (partitions or catalog not ready yet); retry"},
                                status=503)
            if not self._router_ready:
                producer = app.producer._ensure_producer()
                await producer.partitions_for(self.profiles.changelog_topic.get_topic_name())
                self._router_ready = True
            return await routed(web, request, user_id=user_id)

        @app.page("/health")
        async def health(web, request):
            problem = self.health_problem()
            if problem is not None:
                return web.json({"status": "unhealthy", "problem": problem,
                                 "model_version": self.model.version}, status=503)
            ready = self.ready()
            return web.json({
                "status": "ok" if ready else "starting",
                "model_version": self.model.version,
                "items": len(self.model.items),
                # Issue 9: what an evaluation waits for before ranking (items with a vector; clicks the
                # batch path has learned from and counted in the stream statistics).
                "items_ready": int(self.model.items.valid[: len(self.model.items)].sum()),
                "clicks_learned": self.recommender.clicks_learned,
                "device": str(self.model.device),
            }, status=200 if ready else 503)

        self.update_profiles = update_profiles
        return app

    def authorized(self, request) -> bool:
        return authorized(self.settings, request.headers)

    def ready(self) -> bool:
        """Serving: partitions assigned, table recovered from its changelog, catalog caught up."""
        app = self.app
        return (not app.rebalancing and app.tables.recovery.completed.is_set()
                and bool(app.consumer.assignment()) and self.catalog_reader.caught_up.is_set()
                and self.swapper.caught_up.is_set())

    # ------------------------------------------------------------------------------------- lag
    async def measure_lag(self) -> None:
        """Committed offsets behind the log end, per source topic (what kafka-consumer-groups shows).

        The log end comes from the broker (ListOffsets), not from the last fetch response: a consumer
        that flow control has paused stops fetching, so its fetch highwater goes stale and would read
        as no lag exactly while the worker is furthest behind (and the stall check would miss it)."""
        consumer = self.app.consumer
        tps = [tp for tp in consumer.assignment() if tp.topic in contract.USER_TOPICS]
        if not tps:
            return
        try:
            ends = await asyncio.wait_for(consumer.highwaters(*tps), timeout=10.0)
        except Exception as exc:  # a slow or unreachable broker costs this reading, not the timer
            log.warning("consumer lag not measured this time (log end offsets unavailable): %r", exc)
            return
        lag: dict[str, int] = {}
        for tp in tps:
            committed = consumer._committed_offset.get(tp) or 0
            lag[tp.topic] = lag.get(tp.topic, 0) + max(0, (ends.get(tp) or 0) - committed)
        for topic, value in lag.items():
            self.metrics.consumer_lag.labels(topic).set(value)
        self.lag_now = sum(lag.values())

    # ---------------------------------------------------------------------------------- ranker
    @property
    def ranker_path(self) -> Path:
        return Path(self.settings.data_dir) / "ranker.safetensors"

    def _restore_ranker(self) -> LinearRanker | None:
        """What this worker's ranker had learned before a restart (its data directory), else None: a
        restarted worker keeps ranking as well as it did instead of starting from the fixed blend."""
        ranker, why = load_ranker(self.ranker_path)
        if ranker is None and why != "no saved ranker":
            log.warning("ranker checkpoint %s not used, starting from the initial weights: %s", self.ranker_path, why)
        elif ranker is not None:  # why: "loaded", or which features an upgrade added (they start at 0)
            log.info("ranker restored from %s (%d steps): %s", self.ranker_path, ranker.steps, why)
        return ranker

    async def save_ranker(self) -> None:
        """Checkpoint the ranker when it learned since the last save, on the writer thread (the one
        that updates it), so the file never holds a half-applied step."""
        ranker = self.recommender.ranker
        if ranker.steps == self._ranker_saved_steps:
            return
        loop = asyncio.get_running_loop()
        try:
            steps = await loop.run_in_executor(self.batch_executor, self._save_ranker_now)
        except OSError as exc:  # a full or read-only disk costs the checkpoint, never the stream
            log.warning("could not checkpoint the ranker to %s (retried at the next save): %s", self.ranker_path, exc)
            return
        self._ranker_saved_steps = steps

    def _save_ranker_now(self) -> int:
        ranker = self.recommender.ranker
        save_ranker(ranker, self.ranker_path)
        return ranker.steps

    def report_ranker(self) -> None:
        ranker = self.recommender.ranker
        self.metrics.ranker_steps.set(ranker.steps)
        shed = self.recommender.steps_shed - self._shed_reported
        if shed > 0:
            self.metrics.ranker_steps_shed.inc(shed)
            self._shed_reported += shed
        self.metrics.ranker_item_offsets.set(len(ranker.item_bias))
        for name, weight in zip(FEATURES, ranker.weights.tolist()):
            self.metrics.ranker_weight.labels(name).set(weight)

    def report_item_evictions(self) -> None:
        """Carry the item index's eviction counts (it survives swaps through ``adopt``) to the metric."""
        for reason, n in self.model.items.evictions.items():
            new = n - self._evictions_reported.get(reason, 0)
            if new > 0:
                self.metrics.item_evictions.labels(reason).inc(new)
                self._evictions_reported[reason] = n

    def report_rocksdb_memory(self) -> None:
        """What the profile table's RocksDB holds in memory, against its budget (streams/store.py)."""
        for kind, used in self.profiles.data.rocksdb_options.memory().items():
            self.metrics.rocksdb_memory.labels(kind).set(used)

    def health_problem(self) -> str | None:
        """Why this worker is unhealthy (None: it is not): a crashed agent, a stream stuck on an error,
        or no batch completed for ``stall_after_s`` while the consumer lag grew."""
        for name, exc in self.agent_crashes.items():
            return f"agent {name} crashed: {type(exc).__name__}: {exc}"[:500]
        for agent in (getattr(self, "update_profiles", None),):
            for aref in list(getattr(agent, "_actors", ())):
                if getattr(aref, "crashed", False):
                    return f"agent {agent.name} crashed: {aref.crash_reason!r}"[:500]
        if self.stream_failure is not None:
            exc = self.stream_failure
            return f"stream retrying a failed batch: {type(exc).__name__}: {exc}"[:500]
        idle = time.monotonic() - self.last_progress
        if idle > self.settings.stall_after_s and self.lag_now > self.lag_at_progress:
            return (f"stream stalled: no batch completed for {idle:.0f} s while lag grew "
                    f"{self.lag_at_progress} -> {self.lag_now}")
        return None

    @contextlib.contextmanager
    def crash_recorded(self, agent: str) -> Iterator[None]:
        """Remember an agent's crash for /health (Faust logs it and the process keeps answering)."""
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.agent_crashes[agent] = exc
            log.exception("agent %s crashed", agent)
            raise

    # ------------------------------------------------------------------------------- stream
    async def handle_batch_until_done(self, batch) -> None:
        """``handle_batch``, retried with backoff on a failure no single event explains (broker,
        device); /health is red meanwhile. Never gives up: an unacknowledged batch is redelivered
        to whoever owns it next, a given-up one would be lost."""
        delay = 0.5
        while True:
            try:
                await self.handle_batch(batch)
                self.stream_failure = None
                return
            except SystemicFailure as exc:
                failure: BaseException = exc.__cause__ or exc
            except Exception as exc:
                failure = exc
            self.stream_failure = failure
            log.error("batch of %d events failed, retrying in %.1f s: %r", len(batch), delay, failure)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def handle_batch(self, batch) -> None:
        """Parse, validate and apply a batch; every event that fails on its own goes to the DLQ.

        A failure of the batch step is retried once (``_bisect``'s first try) and then bisected down
        to the events that fail alone; only when *every* event fails alone is it systemic
        (``SystemicFailure``: retried by the caller, nothing dead-lettered).
        """
        started = time.perf_counter()
        m = self.metrics
        parsed = []
        flagged: list[str] = []  # event ids the guard dead-lettered in this batch
        wall = time.time()
        for event in batch:
            msg = event.message
            kind = "search" if msg.topic == contract.SEARCH else "click"
            m.events_in.labels(kind).inc()
            m.event_to_batch_seconds.observe(max(0.0, wall - msg.timestamp))
            try:
                ev = PARSERS[msg.topic](msg.value, msg.key, now=time.time(), min_ts=self.settings.min_event_ts,
                                        max_future_s=self.settings.max_future_skew_s)
            except BadEvent as exc:
                await self.dead_letter(exc, event)
                continue
            except Exception as exc:  # a parser bug costs this event, not the batch
                await self.dead_letter(internal_error(exc), event)
                continue
            reason = (self.guard.observe(ev.user_id, ev.ts, getattr(ev, "item_id", None), ev.event_id)
                      if self.guard is not None else None)
            if reason:  # issue 10: never applied to profiles, popularity or samples; visible in the DLQ
                await self.dead_letter(bot_event(reason, ev.user_id), event)
                flagged.append(ev.event_id)
                continue
            parsed.append((ev, event))
            self.stream_time = max(self.stream_time, ev.ts)
        if self.guard is not None and (flagged or self.guard.has_retractions()):
            parsed = await self.retract_flagged(parsed, flagged, anchor=batch[-1])
        m.batch_stage_seconds.labels("parse").observe(time.perf_counter() - started)
        if parsed:
            try:
                await self.apply(parsed)
            except Exception as exc:
                log.warning("batch step failed on %d events (%r): retrying, then bisecting", len(parsed), exc)
                poison = await self._bisect(parsed)
                if len(poison) == len(parsed) and len(parsed) > 1:
                    raise SystemicFailure(f"every one of {len(parsed)} events fails alone") from poison[0][1]
                for (ev, event), exc in poison:
                    await self.dead_letter(internal_error(exc), event)
        m.batch_size.observe(len(batch))
        m.batch_seconds.observe(time.perf_counter() - started)
        self.last_progress = time.monotonic()
        self.lag_at_progress = self.lag_now

    async def retract_flagged(self, parsed: list, flagged: list[str], anchor) -> list:
        """Flag bots back to their first event. A user flagged in this batch had events pass while the
        evidence built up: those of this batch go to the DLQ with the user's reason instead of being
        applied, and those of earlier batches are taken back out of the stream statistics (popularity,
        co-clicks, transitions, query clicks) that every other user's recommendations read. Every
        flagged id is also kept out of the statistics and the item index for good: the catalog reader
        counts every click of the topic, flagged or not. The events applied in earlier batches are in no
        DLQ record, so a ``FlaggedBack`` record per user on events.audit (attached to ``anchor``, this
        batch's last event: flushed before its offset is committed) tells every other worker to take
        them out too. Returns the events to apply."""
        taken = self.guard.take_retractions()
        earlier = {event_id for _, event_id in taken}
        in_batch = {ev.event_id for ev, _ in parsed}
        applied: dict[str, list[str]] = {}
        for user_id, event_id in taken:
            if event_id not in in_batch:
                applied.setdefault(user_id, []).append(event_id)
        for user_id, ids in applied.items():
            record = contract.FlaggedBack(self.guard.reason(user_id) or "bot", user_id, tuple(ids), time.time())
            with event_context(anchor):
                await self.audit_topic.send(key=user_id.encode(), value=record.dumps())
            self.metrics.events_out.labels(contract.AUDIT).inc()
        keep = []
        for ev, event in parsed:
            if ev.event_id in earlier:
                await self.dead_letter(bot_event(self.guard.reason(ev.user_id) or "bot", ev.user_id), event)
            else:
                keep.append((ev, event))
        await asyncio.get_running_loop().run_in_executor(
            self.batch_executor, self.retract_clicks, list(earlier) + flagged)
        if earlier:
            self.metrics.bot_events_flagged_back.inc(len(earlier))
            log.warning("flagged %d earlier events of newly flagged users: out of the stream statistics, "
                        "and dead-lettered where not applied yet", len(earlier))
        return keep

    def retract_clicks(self, event_ids: list[str]) -> None:
        """Take clicks back out of all that other users' recommendations read: the stream statistics
        and the item index (an untitled item's learned text, the query->click memory). Writer thread."""
        self.recommender.retract(event_ids)
        self.model.items.retract_clicks(event_ids)

    async def _bisect(self, parsed: list) -> list:
        """Apply ``parsed``, splitting it in halves on failure; returns the ((event, faust event),
        error) pairs that fail alone. Each try reloads the states from the table, so a failed try
        leaves nothing half-applied behind (writes come only after the batch step succeeded)."""
        try:
            await self.apply(parsed)
            return []
        except Exception as exc:
            if len(parsed) == 1:
                return [(parsed[0], exc)]
        mid = len(parsed) // 2
        return await self._bisect(parsed[:mid]) + await self._bisect(parsed[mid:])

    async def apply(self, parsed: list) -> None:
        """Apply parsed events to their users' profiles: read states, run the batch step, write back."""
        m = self.metrics
        stage = m.batch_stage_seconds
        t_read = time.perf_counter()
        last_event_of: dict[str, faust.EventT] = {ev.user_id: event for ev, event in parsed}
        states: dict[str, ProfileState] = {}
        for user_id, event in last_event_of.items():
            with event_context(event):
                raw = self.profiles.get(user_id.encode())
            if raw is not None:
                states[user_id] = ProfileState.loads(raw)
        cache = self.model.cache
        hits0, misses0 = cache.hits, cache.misses
        # The batch step runs on the one writer thread of the model (issue 11): HTTP and heartbeats go on.
        t_step = time.perf_counter()
        outcome = await asyncio.get_running_loop().run_in_executor(
            self.batch_executor, self.processor.process, [ev for ev, _ in parsed], states)
        t_write = time.perf_counter()
        # handoff: the batch thread busy with a catalog refresh, the GIL, the loop waking up again.
        stage.labels("read").observe(t_step - t_read)
        stage.labels("handoff").observe(max(0.0, t_write - t_step - sum(outcome.stage_seconds.values())))
        for name, seconds in outcome.stage_seconds.items():
            stage.labels(name).observe(seconds)
        # Everything that can fail on one event happens before the first write (a failed try must
        # leave nothing behind: its retry reloads the states and must not see its events as applied).
        rows = [(user_id.encode(), state.dumps()) for user_id, state in outcome.profiles.items()]
        samples = [(sample.user_id, sample.dumps()) for sample in outcome.samples]
        # One table write per touched user per batch, in the context of that user's last event so the
        # changelog record goes to the user's partition and is flushed before the offset commit.
        for key, value in rows:
            with event_context(last_event_of[key.decode()]):
                self.profiles[key] = value
        t_send = time.perf_counter()
        stage.labels("write").observe(t_send - t_write)
        # The batch's samples go straight to the producer and are awaited together: one acknowledged
        # round trip per batch before the batch (and its offsets) is acknowledged, instead of Faust's
        # per-message channel, attachment and sensor work (issue 11).
        producer = self.app.producer
        deliveries = [await producer.send(contract.SAMPLES, user_id.encode(), value, None, None, None)
                      for user_id, value in samples]
        await asyncio.gather(*deliveries)
        stage.labels("send").observe(time.perf_counter() - t_send)
        m.events_out.labels(contract.SAMPLES).inc(len(outcome.samples))
        now = time.time()
        for ev, event in parsed:
            m.event_to_profile_seconds.observe(max(0.0, now - event.message.timestamp))
        for kind, ws in outcome.importance.items():
            for w in ws:
                m.importance.labels(kind).observe(w)
        m.duplicate_events.inc(outcome.duplicates)
        m.profiles_updated.inc(len(outcome.profiles))
        m.encode_seconds.observe(outcome.encode_seconds)
        m.encoded_texts.inc(outcome.encoded_texts)
        m.items.set(int(self.model.items.valid.sum()))
        m.cache_lookups.labels("hit").inc(cache.hits - hits0)
        m.cache_lookups.labels("miss").inc(cache.misses - misses0)
        cold = sum(1 for st in outcome.profiles.values() if st.n_events <= COLD_START_EVENTS)
        m.cold_start_users.set(cold)

    async def expire_inactive_users(self) -> int:
        """Delete the profiles of this worker's users with no event for ``user_ttl_s`` of stream time.

        Each deletion is a tombstone on the table's changelog, in the user's partition, so a worker
        restoring the partition later does not bring the profile back. The scan reads only the
        profiles' headers and yields to the event loop as it goes; deletions take the batch lock and
        re-check the profile, so a user whose event is being applied right now is not expired.
        Returns the number of profiles deleted.
        """
        if self.stream_time <= 0:  # no event applied since start: no clock to expire by
            return 0
        cutoff = self.stream_time - self.settings.user_ttl_s
        store = self.profiles.data
        # Faust has no public per-partition iteration of a table: walk the RocksDB store's databases
        # of the partitions this worker actively owns (what its _dbs_for_actives does, with numbers).
        actives = self.app.assignor.assigned_actives()
        changelog = self.profiles.changelog_topic_name
        held, expired = 0, 0
        for partition, db in list(store._dbs.items()):
            if TP(changelog, partition) not in actives:
                continue
            stale = []
            for seen, (key, raw) in enumerate(store._visible_items(db), 1):
                held += 1
                if ProfileState.newest_event_ts(raw) < cutoff:
                    stale.append(key)
                if seen % 5000 == 0:
                    await asyncio.sleep(0)
            # In chunks, the batch lock taken per chunk: after a long quiet spell (or a jump in stream
            # time) a partition can hold tens of thousands of stale users, and one lock for all of them
            # would hold the stream for as long as their tombstones take.
            for start in range(0, len(stale), _EXPIRE_CHUNK):
                async with self.batch_lock:
                    with event_context(PartitionEvent(contract.SEARCH, partition)):
                        for key in stale[start:start + _EXPIRE_CHUNK]:
                            raw = self.profiles.get(key)
                            if raw is not None and ProfileState.newest_event_ts(raw) < cutoff:
                                del self.profiles[key]
                                expired += 1
                await asyncio.sleep(0)  # a batch waiting on the lock goes next
        self.metrics.users_expired.inc(expired)
        self.metrics.profiles.set(held - expired)
        if expired:
            log.info("expired %d users with no event since %s (stream time)", expired,
                     time.strftime("%Y-%m-%d %H:%M", time.gmtime(cutoff)))
        return expired

    async def dead_letter(self, exc: BadEvent, event) -> None:
        """Send the event to events.dlq, attached to the event so it is flushed before its offset is
        committed."""
        msg = event.message
        self.metrics.dlq.labels(exc.reason).inc()
        log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, exc)
        with event_context(event):
            await self.dlq_topic.send(value=DeadLetter.of(
                exc, msg.topic, msg.partition, msg.offset, msg.key, msg.value, time.time()).dumps())
        self.metrics.events_out.labels(contract.DLQ).inc()

    # ---------------------------------------------------------------------------------- web
    async def recommendations_view(self, web, request, user_id: str):
        started = time.perf_counter()
        status, body = recommendations_answer(self.recommender, self.metrics, user_id,
                                              self.profiles.get(user_id.encode()), request.query, started)
        return web.json(body, status=status)


class SystemicFailure(Exception):
    """The batch step fails for every event of a batch alone: the device or a dependency, not the input."""


def bot_event(reason: str, user_id: str) -> BadEvent:
    """The DLQ reason of an event whose user the anomaly guard flagged (``reason``: the rule broken)."""
    return BadEvent(reason, f"user {user_id!r} behaves like a bot")


def internal_error(exc: BaseException) -> BadEvent:
    """An unexpected error on one event as a DLQ reason: ``internal:<error type>``.

    >>> internal_error(OverflowError("int too large")).reason
    'internal:OverflowError'
    """
    return BadEvent(f"internal:{type(exc).__name__}", str(exc)[:500])


def kafka_credentials(s: Settings):
    """Faust's form of the Kafka security settings (the other clients use coldstart.kafka_security)."""
    from coldstart.kafka_security import aiokafka_options

    options = aiokafka_options(s)  # validates the settings
    if not options:
        return None
    if "sasl_mechanism" not in options:
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(username=s.kafka_sasl_username, password=s.kafka_sasl_password,
                                 mechanism=s.kafka_sasl_mechanism, ssl_context=options.get("ssl_context"))


@dataclasses.dataclass
class PartitionMessage:
    topic: str
    partition: int


class PartitionEvent:
    """Stands in for an event of ``partition`` where there is none (the expiry timer): Faust's table
    writes read only ``message.topic`` (to check co-partitioning) and ``message.partition``."""

    def __init__(self, topic: str, partition: int) -> None:
        self.message = PartitionMessage(topic, partition)


@contextlib.contextmanager
def event_context(event) -> Iterator[None]:
    """Run table reads/writes and sends as if inside this event's iteration.

    ``take_batches`` hands over a list of events after they left the per-event context, and
    Faust's RocksDB store, changelog and send attachments all read the *task-local* current event
    (``faust.streams.current_event()``). Setting that context variable to the user's own event keeps
    every write on the user's partition, and attaches sends to the event so they are flushed before
    its offset is committed. ``stream.current_event`` is left alone on purpose: take_batches' buffering
    task reads it for every event it adds to the next batch while we consume this one.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
