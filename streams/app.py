"""The Faust worker, in the order data flows: app, topics, table, agents, web views.

Built by :func:`create_app` from one :class:`Settings` (no module-level app), so tests and the CLI can
run several workers with different ports and data directories.

Kafka keys and table keys are the raw UTF-8 bytes of the user id (``key_type=bytes``): the producer's
partitioner, the table's changelog and ``app.table_route`` then all hash the same bytes, so a
recommendation request is answered by the worker that owns the user (with the default JSON key
serializer the router would hash ``"u1"`` with quotes and route half the requests to a stale standby).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import asyncio
import time
import weakref
from collections.abc import Iterator

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.streams import _current_event  # the task-local event Faust's tables and sends read
from prometheus_client import CollectorRegistry

from coldstart.errors import BadEvent
from coldstart.settings import Settings
from coldstart.model.serving import ServingModel
from coldstart import contract
from coldstart.streams.catalog import CatalogReader
from coldstart.streams.metrics import Metrics
from coldstart.streams.processor import COLD_START_EVENTS, BatchProcessor, Recommender
from coldstart.contract import PARSERS, DeadLetter, parse_item
from coldstart.streams.state import ProfileState
from coldstart.streams.swap import ModelSwapper

log = logging.getLogger(__name__)


class Worker:
    """What one worker process holds: the app, its table, the model in service and its metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 model: ServingModel | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics.create(self.registry)
        self.model = model or ServingModel.load(
            path=settings.model_path or None, device=settings.device,
            cache_size=settings.embedding_cache_size, max_items=settings.max_items,
            max_queries=settings.item_queries)
        self.processor = BatchProcessor(settings, self.model)
        self.recommender = Recommender(settings, self.model)
        self.metrics.model_version_info.labels(self.model.version).set(1)
        for kind in ("search", "click"):  # a worker that got no event yet still reports 0 (ColdstartNoEvents)
            self.metrics.events_in.labels(kind)
        self._router_ready = False
        self.batch_lock = asyncio.Lock()  # a model swap waits for the batch in flight
        self.app = self._build_app()

    def swap(self, model: ServingModel) -> None:
        """Switch every consumer of the model at once (called between batches, under batch_lock)."""
        old = self.model.version
        self.model = model
        self.processor.swap(model)
        self.recommender.swap(model)
        self.metrics.model_version_info.labels(old).set(0)
        self.metrics.model_version_info.labels(model.version).set(1)

    # ---------------------------------------------------------------------------------- app
    def _build_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.app_id,
            broker=s.kafka_broker,
            store="rocksdb://",
            datadir=str(s.data_dir),
            web_host=s.web_host,
            web_port=s.web_port,
            # Other workers proxy requests for users they do not own to this URL.
            canonical_url=f"http://{s.web_host}:{s.web_port}",
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
        self.samples_topic = app.topic(contract.SAMPLES, **raw)
        self.profiles = app.Table(
            "user_to_profile", key_type=bytes, value_type=bytes, partitions=s.partitions,
            help="user id -> ProfileState (bounded recent events, vector, model version)")
        self.catalog_reader = CatalogReader(s, self)
        self.swapper = ModelSwapper(s, self)

        @app.agent(user_events, name="update_profiles")
        async def update_profiles(stream):
            async for batch in stream.take_events(s.batch_size, within=s.batch_within_s):
                async with self.batch_lock:
                    await self.handle_batch(batch)

        @app.agent(catalog, name="validate_catalog")
        async def validate_catalog(stream):
            # Items reach every worker's index through CatalogReader (all partitions); this group
            # consumer only dead-letters invalid items, once.
            async for event in stream.events():
                try:
                    parse_item(event.message.value, event.message.key)
                except BadEvent as exc:
                    await self.dead_letter(exc, event)

        @app.task
        async def read_catalog() -> None:
            await self.catalog_reader.run()

        @app.task
        async def follow_model_versions() -> None:
            await self.swapper.run()

        @app.timer(interval=5.0)
        async def measure_lag() -> None:
            # Committed offsets behind the log end, per source topic (what kafka-consumer-groups shows).
            lag: dict[str, int] = {}
            consumer = app.consumer
            for tp in consumer.assignment():
                if tp.topic not in contract.USER_TOPICS:
                    continue
                end = consumer.highwater(tp)
                committed = consumer._committed_offset.get(tp) or 0
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, (end or 0) - committed)
            for topic, value in lag.items():
                self.metrics.consumer_lag.labels(topic).set(value)

        async def owned_recommendations(web, request, user_id: str):
            return await self.recommendations_view(web, request, user_id)

        routed = app.table_route(table=self.profiles, match_info="user_id")(owned_recommendations)

        @app.page("/users/{user_id}/recommendations")
        async def recommendations(web, request, user_id: str):
            if not self.authorized(request):
                return web.json({"error": "this API needs the header 'Authorization: Bearer <token>' with the "
                                          "token set in COLDSTART_API_TOKEN"}, status=401,
                                headers={"WWW-Authenticate": 'Bearer realm="coldstart"'})
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
            ready = self.ready()
            return web.json({
                "status": "ok" if ready else "starting",
                "model_version": self.model.version,
                "items": len(self.model.items),
                "device": str(self.model.device),
            }, status=200 if ready else 503)

        self.update_profiles = update_profiles
        return app

    def authorized(self, request) -> bool:
        """True when no API token is configured, or the request carries it as a bearer token."""
        token = self.settings.api_token
        if not token:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())

    def ready(self) -> bool:
        """Serving: partitions assigned, table recovered from its changelog, catalog caught up."""
        app = self.app
        return (not app.rebalancing and app.tables.recovery.completed.is_set()
                and bool(app.consumer.assignment()) and self.catalog_reader.caught_up.is_set()
                and self.swapper.caught_up.is_set())

    # ------------------------------------------------------------------------------- stream
    async def handle_batch(self, batch) -> None:
        started = time.perf_counter()
        m = self.metrics
        parsed = []
        last_event_of: dict[str, faust.EventT] = {}
        for event in batch:
            msg = event.message
            kind = "search" if msg.topic == contract.SEARCH else "click"
            m.events_in.labels(kind).inc()
            try:
                ev = PARSERS[msg.topic](msg.value, msg.key, now=time.time())
            except BadEvent as exc:
                with event_context(event):
                    await self.dead_letter(exc, event)
                continue
            parsed.append((ev, event))
            last_event_of[ev.user_id] = event
        if not parsed:
            return
        states: dict[str, ProfileState] = {}
        for user_id, event in last_event_of.items():
            with event_context(event):
                raw = self.profiles.get(user_id.encode())
            if raw is not None:
                states[user_id] = ProfileState.loads(raw)
        cache = self.model.cache
        hits0, misses0 = cache.hits, cache.misses
        outcome = self.processor.process([ev for ev, _ in parsed], states)
        # One table write per touched user per batch, in the context of that user's last event so the
        # changelog record goes to the user's partition and is flushed before the offset commit.
        for user_id, state in outcome.profiles.items():
            with event_context(last_event_of[user_id]):
                self.profiles[user_id.encode()] = state.dumps()
        for sample in outcome.samples:
            with event_context(last_event_of[sample.user_id]):
                await self.samples_topic.send(key=sample.user_id.encode(), value=sample.dumps())
        m.events_out.labels(contract.SAMPLES).inc(len(outcome.samples))
        now = time.time()
        for ev, event in parsed:
            m.event_to_profile_seconds.observe(max(0.0, now - event.message.timestamp))
        for kind, ws in outcome.importance.items():
            for w in ws:
                m.importance.labels(kind).observe(w)
        m.duplicate_events.inc(outcome.duplicates)
        m.profiles_updated.inc(len(outcome.profiles))
        m.batch_size.observe(len(batch))
        m.encode_seconds.observe(outcome.encode_seconds)
        m.encoded_texts.inc(outcome.encoded_texts)
        m.items.set(int(self.model.items.valid.sum()))
        m.cache_lookups.labels("hit").inc(cache.hits - hits0)
        m.cache_lookups.labels("miss").inc(cache.misses - misses0)
        m.batch_seconds.observe(time.perf_counter() - started)
        cold = sum(1 for st in outcome.profiles.values() if st.n_events <= COLD_START_EVENTS)
        m.cold_start_users.set(cold)

    async def dead_letter(self, exc: BadEvent, event) -> None:
        msg = event.message
        self.metrics.dlq.labels(exc.reason).inc()
        log.warning("dead-letter %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, exc)
        await self.dlq_topic.send(value=DeadLetter.of(
            exc, msg.topic, msg.partition, msg.offset, msg.key, msg.value, time.time()).dumps())
        self.metrics.events_out.labels(contract.DLQ).inc()

    # ---------------------------------------------------------------------------------- web
    async def recommendations_view(self, web, request, user_id: str):
        started = time.perf_counter()
        try:
            k = int(request.query.get("k", "10"))
        except ValueError:
            k = -1
        if not 1 <= k <= 1000:
            self.metrics.recommendations.labels("bad_request").inc()
            return web.json({"error": "k must be an integer between 1 and 1000"}, status=400)
        exclude = request.query.get("exclude_clicked", "true").lower() not in {"0", "false", "no"}
        raw = self.profiles.get(user_id.encode())
        state = ProfileState.loads(raw) if raw is not None else None
        recs = self.recommender.recommend(state, k=k, exclude_clicked=exclude)
        outcome = "personal" if state is not None else "popular"
        self.metrics.recommendations.labels(outcome).inc()
        self.metrics.recommendation_seconds.observe(time.perf_counter() - started)
        return web.json({
            "user_id": user_id,
            "model_version": self.model.version,
            "n_events": state.n_events if state else 0,
            "strategy": outcome,
            "items": [
                {"item_id": r.item_id, "score": round(r.score, 5), "text": r.text, "because": r.because}
                for r in recs
            ],
        })


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


@contextlib.contextmanager
def event_context(event) -> Iterator[None]:
    """Run table reads/writes and sends as if inside this event's iteration.

    ``stream.take_events`` hands over a list of events after they left the per-event context, and
    Faust's RocksDB store, changelog and send attachments all read the *task-local* current event
    (``faust.streams.current_event()``). Setting that context variable to the user's own event keeps
    every write on the user's partition, and attaches sends to the event so they are flushed before
    its offset is committed. ``stream.current_event`` is left alone on purpose: take_events' buffering
    task, parked while we consume the batch, reads it when it resumes.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)
