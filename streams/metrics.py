"""Every coldstart metric in one typed container, created with the registry passed in (testable with a
fresh ``CollectorRegistry``). Prometheus conventions: ``coldstart_`` prefix, base units, ``_total``
counters, histograms for distributions, no per-user labels."""

from __future__ import annotations

import collections
import dataclasses
import gc
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# Fine enough that a p99 interpolated between two bounds is a number to act on (issue 11), from 1 ms to
# a minute: a worker that falls behind shows how far behind, not "beyond the top bucket".
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065, 0.08,
                   0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
                   15.0, 20.0, 30.0, 60.0)
IMPORTANCE_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0)
# The stages of one batch, in the order they run (``coldstart_batch_stage_seconds{stage}``).
BATCH_STAGES = ("parse", "read", "handoff", "learn", "encode", "importance", "profile", "write", "send")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclasses.dataclass(frozen=True)
class Metrics:
    events_in: Counter
    events_out: Counter
    dlq: Counter
    event_to_profile_seconds: Histogram
    event_to_batch_seconds: Histogram
    batch_size: Histogram
    batch_seconds: Histogram
    batch_stage_seconds: Histogram  # issue 11: where a batch's time goes, by stage
    encode_seconds: Histogram
    encoded_texts: Counter
    cache_lookups: Counter
    importance: Histogram
    profiles_updated: Counter
    duplicate_events: Counter
    cold_start_users: Gauge
    profiles: Gauge
    items: Gauge
    model_version_info: Gauge
    swaps: Counter
    swaps_refused: Counter
    swap_pause_seconds: Histogram
    recommendations: Counter
    recommendation_seconds: Histogram
    consumer_lag: Gauge
    item_evictions: Counter  # issue 8: the item index's capacity policy
    users_expired: Counter  # issue 8: inactive users' profiles deleted (tombstones in the changelog)
    rocksdb_memory: Gauge  # issue 8: the profile table's RocksDB memory, against its budget
    bot_events_flagged_back: Counter  # issue 10: a newly flagged user's earlier events (the evidence)
    bot_clicks_kept_out: Counter  # issue 10: bot clicks another worker dead-lettered, kept out here
    ranker_steps: Gauge  # issue 9: clicks the learned ranker has learned from (restored across restarts)
    ranker_steps_shed: Counter  # issue 11: teaching clicks skipped by the per-batch cap under a backlog
    ranker_weight: Gauge  # issue 9: the ranker's weight per signal (which signal this shop's clicks follow)
    ranker_item_offsets: Gauge  # issue 9: items with a learned offset (restored across restarts)
    gc_pause_seconds: Histogram  # issue 11: the interpreter's garbage collections stop every thread

    @classmethod
    def create(cls, registry: CollectorRegistry, namespace: str = "coldstart") -> "Metrics":
        def counter(name, doc, labels=()):
            return Counter(name, doc, labels, namespace=namespace, registry=registry)

        def gauge(name, doc, labels=()):
            return Gauge(name, doc, labels, namespace=namespace, registry=registry)

        def histogram(name, doc, buckets, labels=()):
            return Histogram(name, doc, labels, namespace=namespace, registry=registry, buckets=buckets)

        # The standard process_* series (resident memory, CPU, open files): the worker's own registry
        # does not carry prometheus_client's default ones.
        ProcessCollector(registry=registry)

        return cls(
            events_in=counter("events_in_total", "Events received, by type.", ["type"]),
            events_out=counter("events_out_total", "Records produced, by topic.", ["topic"]),
            dlq=counter("dlq_total", "Events sent to the dead-letter topic, by reason.", ["reason"]),
            event_to_profile_seconds=histogram(
                "event_to_profile_seconds", "From the event's Kafka timestamp to its profile update.",
                LATENCY_BUCKETS),
            event_to_batch_seconds=histogram(
                "event_to_batch_seconds",
                "From the event's Kafka timestamp to the start of its batch (fetch + batching wait).",
                LATENCY_BUCKETS),
            batch_size=histogram("batch_events", "Events per processed batch.", BATCH_BUCKETS),
            batch_seconds=histogram("batch_seconds", "Time to process one batch.", LATENCY_BUCKETS),
            batch_stage_seconds=histogram(
                "batch_stage_seconds", "Time per batch in each stage, in order: parse (decode, validate, "
                "bot guard), read (profile states from the table), handoff (waiting for the batch thread), "
                "learn (ranker and stream statistics), encode (texts and item vectors), importance, profile "
                "(apply and recompute), write (table and changelog), send (training samples, acknowledged).",
                LATENCY_BUCKETS, ["stage"]),
            encode_seconds=histogram("encode_seconds", "Time spent in the encoder per batch.", LATENCY_BUCKETS),
            encoded_texts=counter("encoded_texts_total", "Distinct texts run through the encoder."),
            cache_lookups=counter("embedding_cache_lookups_total", "Embedding cache lookups.", ["result"]),
            importance=histogram("importance_weight", "Importance weight per event, by type.",
                                 IMPORTANCE_BUCKETS, ["type"]),
            profiles_updated=counter("profile_updates_total", "Profile writes (one per user per batch)."),
            duplicate_events=counter("duplicate_events_total", "Redelivered events ignored (idempotency)."),
            cold_start_users=gauge("cold_start_users", "Users with at most 5 events on this worker."),
            profiles=gauge("profiles", "Profiles held by this worker."),
            items=gauge("items", "Recommendable items in the index."),
            model_version_info=gauge("model_version_info", "The model version in service (value 1).",
                                     ["version"]),
            swaps=counter("model_swaps_total", "Model versions swapped in."),
            swaps_refused=counter("model_swaps_refused_total", "Announced versions refused, by reason.",
                                  ["reason"]),
            swap_pause_seconds=histogram("model_swap_pause_seconds", "Stream pause while switching versions.",
                                         LATENCY_BUCKETS),
            recommendations=counter("recommendations_total", "Recommendation requests, by outcome.",
                                    ["outcome"]),
            recommendation_seconds=histogram("recommendation_seconds", "Recommendation request latency.",
                                             LATENCY_BUCKETS),
            consumer_lag=gauge("consumer_lag_messages", "Messages behind the log end, by topic.", ["topic"]),
            item_evictions=counter("item_evictions_total", "Items evicted from the full item index, by "
                                   "reason (untitled, titled, refused: a new id not indexed).", ["reason"]),
            users_expired=counter("users_expired_total", "Profiles deleted after COLDSTART_USER_TTL_S without "
                                  "an event (a tombstone in the changelog)."),
            rocksdb_memory=gauge("rocksdb_memory_bytes", "The profile table's RocksDB memory, shared by all its "
                                 "partitions: block_cache (data, index and filter blocks) and memtables.",
                                 ["kind"]),
            bot_events_flagged_back=counter(
                "bot_events_flagged_back_total", "Earlier events of users flagged as bots (the evidence): "
                "dead-lettered where not applied yet, and taken out of the stream statistics (popularity, "
                "co-clicks, transitions, query clicks) that other users' recommendations read."),
            bot_clicks_kept_out=counter(
                "bot_clicks_kept_out_total", "Clicks dead-lettered as a bot's (by the worker that owns the "
                "user) that this worker's catalog reader keeps out of its stream statistics."),
            ranker_steps=gauge("ranker_steps", "Clicks the learned ranker has learned from, checkpoint included."),
            ranker_steps_shed=counter(
                "ranker_steps_shed_total", "Clicks that would have taught the ranker but were skipped: a batch "
                "takes at most COLDSTART_RANKER_MAX_STEPS steps (load shedding under a backlog); the clicks "
                "still count in the stream statistics."),
            ranker_weight=gauge("ranker_weight", "The learned ranker's weight of each signal.", ["feature"]),
            ranker_item_offsets=gauge("ranker_item_offsets", "Items with a learned offset in the ranker."),
            gc_pause_seconds=histogram(
                "gc_pause_seconds", "Python garbage collections, by generation: each one holds the GIL, so "
                "the event loop, the batch thread and requests all wait for it.", LATENCY_BUCKETS,
                ["generation"]),
        )


class GcPauses:
    """Times every garbage collection of this process (``gc.callbacks``) and hands the durations to
    ``histogram`` when :meth:`drain` is called: by the worker's 5 s timer, and as a collector of the
    registry (registered before the histogram), at every scrape, so a scrape sees every pause before it.
    The callback itself only appends to a deque: observing a histogram takes a lock, and a collection
    can start inside that very lock's holder (any allocation can trigger one), so a histogram call from
    the callback could deadlock.

    >>> pauses = GcPauses().install()
    >>> _ = gc.collect(2)
    >>> pauses.uninstall(); [(gen, secs >= 0) for gen, secs in pauses.pending][-1]
    (2, True)
    """

    def __init__(self, keep: int = 100_000) -> None:
        self.pending: collections.deque[tuple[int, float]] = collections.deque(maxlen=keep)
        self.histogram: Histogram | None = None  # where collect() drains to
        self._started = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:
            self.pending.append((info["generation"], time.perf_counter() - self._started))
            self._started = 0.0

    def install(self) -> "GcPauses":
        gc.callbacks.append(self._callback)
        return self

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def collect(self) -> list:
        """As a registry's collector: drain into :attr:`histogram`; no samples of its own."""
        if self.histogram is not None:
            self.drain(self.histogram)
        return []

    def drain(self, histogram: Histogram) -> int:
        """Observe the pauses recorded since the last call; returns how many."""
        n = 0
        while self.pending:
            generation, seconds = self.pending.popleft()
            histogram.labels(str(generation)).observe(seconds)
            n += 1
        return n
