"""The serving replica (``coldstart serve``): recommendations from a process of their own, so that
answering a request never waits for a worker's batch (issue 11).

A worker answers requests and runs the stream in one Python process: one GIL for its event loop, its
batch thread and aiokafka's consumer thread. At 500 events/s the stream takes most of a core of Python,
and requests queue behind it (``coldstart bench serve``: the worker answered 89-99 of 200 requests/s
while ingesting). The replica holds everything a request reads and nothing else:

- every user's profile, from the profile table's changelog (``<app_id>-user_to_profile-changelog``, all
  partitions, outside any consumer group): the values the owning worker wrote, tombstones included;
- the item index and the stream statistics, from the same :class:`CatalogReader` every worker runs
  (``catalog.items`` and ``events.click``, all partitions);
- the model in service, from ``model.versions`` (:class:`ModelSwapper`, the same verified hot-swap);
- the learned ranker, from a worker's checkpoint (``COLDSTART_SERVE_RANKER_PATH``, by default
  ``COLDSTART_DATA_DIR/ranker.safetensors``), reloaded whenever the file changes. The ranker learns in
  the worker, from the clicks it owns, before each is applied: the replica serves what it learned up to
  the last checkpoint (``COLDSTART_RANKER_SAVE_EVERY_S``, 30 s), never a half-applied step.

So its answers are the owning worker's answers as of the changelog's last record and the last ranker
checkpoint: the same profile, items, statistics and model; only the ranker may be a checkpoint behind.
Nothing here writes to Kafka. Several replicas can serve behind one load balancer; each reads the whole
changelog, so its memory grows with the users (a profile's serialized state, ~2-3 kB a user).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from coldstart.kafka_security import aiokafka_options
from coldstart.model.ranker import load_ranker
from coldstart.model.serving import ServingModel
from coldstart.settings import Settings
from coldstart.streams.api import UNAUTHORIZED, UNAUTHORIZED_HEADERS, authorized, recommendations_answer
from coldstart.streams.catalog import CatalogReader, assign_all_partitions, follow_forever
from coldstart.streams.metrics import GcPauses, Metrics
from coldstart.streams.recommender import Recommender
from coldstart.streams.swap import ModelSwapper

log = logging.getLogger(__name__)

PROFILE_TABLE = "user_to_profile"  # the worker's table (streams/app.py)


def changelog_topic(app_id: str) -> str:
    """The profile table's changelog, as Faust names it.

    >>> changelog_topic("coldstart")
    'coldstart-user_to_profile-changelog'
    """
    return f"{app_id}-{PROFILE_TABLE}-changelog"


def offsets_behind(ends: Mapping[Any, int | None], positions: Mapping[Any, int]) -> int:
    """Offsets between what the replica applied (each partition's next offset) and that partition's log
    end, summed; a partition whose end is unknown counts 0.

    >>> offsets_behind({0: 120, 1: None, 2: 50}, {0: 100, 1: 7, 2: 60})
    20
    """
    return sum(max(0, end - positions[tp]) for tp, end in ends.items() if end is not None)


async def reader_lag(consumer: AIOKafkaConsumer, tps, timeout_s: float = 10.0) -> int:
    """Offsets ``consumer`` has not read yet in ``tps``. The log end comes from the broker (ListOffsets),
    not ``consumer.highwater``: that is the last fetch response's, and it goes stale exactly while a
    starved reader fetches rarely (the worker's lag gauge read 0 through a whole burst that way,
    streams/app.py ``measure_lag``)."""
    ends = await asyncio.wait_for(consumer.end_offsets(list(tps)), timeout=timeout_s)
    return offsets_behind(ends, {tp: await consumer.position(tp) for tp in tps})


class Replica:
    """What a serving replica holds; the attributes :class:`CatalogReader` and :class:`ModelSwapper`
    read from a worker (``model``, ``recommender``, ``metrics``, ``batch_lock``, ``batch_executor``,
    ``swap``, ``retract_clicks``) mean the same here."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None,
                 model: ServingModel | None = None) -> None:
        self.settings = settings
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        # One writer of the item index and the statistics (the catalog reader's), as in a worker.
        self.batch_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="coldstart-replica")
        self.batch_lock = asyncio.Lock()
        self.registry = registry or CollectorRegistry()
        self.gc_pauses = GcPauses().install()
        self.registry.register(self.gc_pauses)
        self.metrics = Metrics.create(self.registry)
        self.gc_pauses.histogram = self.metrics.gc_pause_seconds
        self.profile_count = Gauge("coldstart_replica_profiles", "Profiles the serving replica holds.",
                                   registry=self.registry)
        self.changelog_lag = Gauge(
            "coldstart_replica_changelog_lag_offsets",
            "Offsets of the profile changelog the replica has not applied yet, all partitions: how far its "
            "answers trail the workers' profiles.", registry=self.registry)
        self.ranker_loads = Gauge("coldstart_replica_ranker_loaded_timestamp_seconds",
                                  "When the replica last adopted the worker's ranker checkpoint (0: never).",
                                  registry=self.registry)
        self.model = model or ServingModel.load(
            path=settings.model_path or None, device=settings.device,
            cache_size=settings.embedding_cache_size, max_items=settings.max_items,
            max_queries=settings.item_queries, precision=settings.encoder_precision)
        self.recommender = Recommender(settings, self.model)
        self.metrics.model_version_info.labels(self.model.version).set(1)
        self.profiles: dict[bytes, bytes] = {}  # user id bytes -> ProfileState.dumps(), as in the table
        self.profiles_caught_up = asyncio.Event()
        self.catalog_reader = CatalogReader(settings, self)
        self.swapper = ModelSwapper(settings, self)
        self.ranker_path = Path(settings.serve_ranker_path or Path(settings.data_dir) / "ranker.safetensors")
        self._ranker_stamp: tuple[int, int] | None = None
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ what the readers call
    def swap(self, model: ServingModel, reference=None) -> None:
        old = self.model.version
        self.model = model
        self.recommender.swap(model, reference)
        self.metrics.model_version_info.labels(old).set(0)
        self.metrics.model_version_info.labels(model.version).set(1)

    def retract_clicks(self, event_ids: list[str]) -> None:
        """A flagged bot's clicks out of the statistics and the item index (as :meth:`Worker.retract_clicks`)."""
        self.recommender.retract(event_ids)
        self.model.items.retract_clicks(event_ids)

    def ready(self) -> bool:
        return (self.profiles_caught_up.is_set() and self.catalog_reader.caught_up.is_set()
                and self.swapper.caught_up.is_set())

    # ------------------------------------------------------------------ profiles
    def apply_changelog(self, records) -> None:
        """Each record is the table's new value for its key; a tombstone (None) deletes the profile."""
        for msg in records:
            if msg.key is None:
                continue
            if msg.value is None:
                self.profiles.pop(msg.key, None)
            else:
                self.profiles[msg.key] = msg.value
        self.profile_count.set(len(self.profiles))

    async def follow_profiles(self) -> None:
        await follow_forever(self._follow_profiles, "profile changelog reader")

    async def _follow_profiles(self) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", client_id=f"{s.app_id}-replica-profiles",
                                    **aiokafka_options(s))
        await consumer.start()
        lag_task = None
        try:
            tps = await assign_all_partitions(consumer, (changelog_topic(s.app_id),))
            end = await consumer.end_offsets(tps)
            # A restarted reader reads the changelog again from its start over what it holds (records
            # overwrite, tombstones delete): requests keep their answers meanwhile.
            lag_at = 0.0
            while True:
                batch = await consumer.getmany(timeout_ms=50, max_records=5000)
                for records in batch.values():
                    self.apply_changelog(records)
                if time.monotonic() - lag_at >= s.gauges_every_s and (lag_task is None or lag_task.done()):
                    lag_at = time.monotonic()  # beside the reader: a slow broker never holds records back
                    lag_task = asyncio.create_task(self.measure_changelog_lag(consumer, tps))
                if not self.profiles_caught_up.is_set() and await CatalogReader._at_end(consumer, end):
                    self.profiles_caught_up.set()
                    log.info("profile changelog caught up: %d profiles", len(self.profiles))
        finally:
            if lag_task is not None:
                lag_task.cancel()
            await consumer.stop()

    async def measure_changelog_lag(self, consumer: AIOKafkaConsumer, tps) -> None:
        try:
            self.changelog_lag.set(await reader_lag(consumer, tps))
        except Exception as exc:  # a slow or unreachable broker costs this reading, not the reader
            log.warning("replica changelog lag not measured this time (log end offsets unavailable): %r", exc)

    # ------------------------------------------------------------------ ranker
    async def follow_ranker(self) -> None:
        """Adopt the worker's ranker checkpoint whenever the file changes (checked as often as the worker
        writes it, and at start)."""
        while True:
            try:
                await self.reload_ranker()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the ranker checkpoint %s failed; retried at the next check", self.ranker_path)
            await asyncio.sleep(min(self.settings.ranker_save_every_s, 5.0))

    async def reload_ranker(self) -> bool:
        """True when a new checkpoint was adopted. The worker replaces the file atomically, so a read
        sees a whole checkpoint or the previous one."""
        try:
            st = os.stat(self.ranker_path)
        except FileNotFoundError:
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._ranker_stamp:
            return False
        loop = asyncio.get_running_loop()
        ranker, why = await loop.run_in_executor(None, load_ranker, self.ranker_path)
        self._ranker_stamp = stamp
        if ranker is None:
            log.warning("ranker checkpoint %s not used: %s", self.ranker_path, why)
            return False
        async with self.batch_lock:  # no writer runs while the ranker and its row cache change
            self.recommender.adopt_ranker(ranker)
        self.ranker_loads.set(time.time())
        self.metrics.ranker_steps.set(ranker.steps)
        log.info("ranker checkpoint adopted from %s (%d steps)", self.ranker_path, ranker.steps)
        return True

    # ------------------------------------------------------------------ web
    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/users/{user_id}/recommendations", self.recommendations)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_view)
        app.on_startup.append(self._start_readers)
        app.on_cleanup.append(self._stop_readers)
        return app

    async def recommendations(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        if not authorized(self.settings, request.headers):
            return web.json_response(UNAUTHORIZED, status=401, headers=UNAUTHORIZED_HEADERS)
        if not self.ready():
            return web.json_response({"error": "replica is starting (profiles, catalog or model not read yet); "
                                               "retry"}, status=503)
        user_id = request.match_info["user_id"]
        status, body = recommendations_answer(self.recommender, self.metrics, user_id,
                                              self.profiles.get(user_id.encode()), request.query, started)
        return web.json_response(body, status=status)

    async def health(self, request: web.Request) -> web.Response:
        ready = self.ready()
        return web.json_response({
            "status": "ok" if ready else "starting",
            "role": "replica",
            "model_version": self.model.version,
            "profiles": len(self.profiles),
            "items": len(self.model.items),
            "items_ready": int(self.model.items.valid[: len(self.model.items)].sum()),
            "ranker_steps": self.recommender.ranker.steps,
            "device": str(self.model.device),
        }, status=200 if ready else 503)

    async def metrics_view(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _start_readers(self, app: web.Application) -> None:
        for coro in (self.follow_profiles(), self.catalog_reader.run(), self.swapper.run(), self.follow_ranker()):
            self._tasks.append(asyncio.create_task(coro))

    async def _stop_readers(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.batch_executor.shutdown(wait=False, cancel_futures=True)


def run_replica(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT (aiohttp's runner handles both)."""
    replica = Replica(settings)
    if settings.gc_freeze:
        from coldstart.memory import freeze_startup_objects

        freeze_startup_objects()
    web.run_app(replica.web_app(), host=settings.web_host, port=settings.web_port, print=None,
                handle_signals=True)
