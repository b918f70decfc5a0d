"""Hot-swap: follow ``model.versions``, load and verify a version off the event loop, switch between
batches.

Hot-swap never stops the stream. The expensive part (checksums, loading the encoder, re-encoding every item
in the new vector space, a smoke encode) runs in a worker thread on a snapshot of the item index while
the stream keeps flowing on the old version. The switch itself takes the batch lock, so it happens
between two batches: it adopts the items that changed since the snapshot, re-encodes only those, and
swaps the model reference. A version that fails to load or verify is refused and counted, and the old
one keeps serving.

The control plane is authenticated: an announcement is acted on only when its HMAC
verifies under ``COLDSTART_ANNOUNCE_SECRET``; an unsigned or forged one, or a replay of an announcement
older than the one in service, is refused (``coldstart_model_swaps_refused_total{reason=...}``) before
anything is loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from coldstart.errors import ArtifactRefused, BadEvent
from coldstart.kafka_security import aiokafka_options
from coldstart.settings import Settings
from coldstart.model.registry import Registry
from coldstart.model.serving import ServingModel
from coldstart import contract
from coldstart.streams.catalog import follow_forever
from coldstart.contract import ModelAnnouncement, announce_key, redact_uri

log = logging.getLogger(__name__)

# Labels of coldstart_model_swaps_refused_total: announcement not verifiable (the first three), not a
# record at all, or a version whose artifact does not verify or load.
REFUSAL_REASONS = ("unsigned", "bad_signature", "replayed", "bad_announcement", "verification", "load")


class ModelSwapper:
    def __init__(self, settings: Settings, worker) -> None:
        self.settings = settings
        self.worker = worker
        self.registry = Registry(settings.registry_uri)
        self.caught_up = asyncio.Event()
        self.last_refused: str | None = None
        self._key = announce_key(settings.announce_secret)
        self._applied_ts = float("-inf")  # announced_ts of the announcement in service
        for reason in REFUSAL_REASONS:  # a series that starts at 0, so the first refusal shows in increase()
            worker.metrics.swaps_refused.labels(reason)
        if not settings.announce_secret:
            log.warning("COLDSTART_ANNOUNCE_SECRET is not set: model announcements are checked against the "
                        "public development key, so anyone who can write to model.versions can switch "
                        "this worker's model; set the same secret on the trainer and every worker")

    async def run(self) -> None:
        """Follow the compacted topic forever; on start, apply only the latest announcement."""
        await follow_forever(self._follow, "model watcher")

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", client_id=f"{self.settings.app_id}-model-watcher",
            **aiokafka_options(self.settings))
        await consumer.start()
        try:
            tp = TopicPartition(contract.MODEL_VERSIONS, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=100)
                messages = [m for msgs in batch.values() for m in msgs]
                if messages:
                    latest = messages[-1]  # compacted "current": only the newest matters
                    try:
                        announcement = ModelAnnouncement.loads(latest.value)
                    except Exception as exc:  # a foreign or corrupt record
                        self._refuse("bad_announcement", f"{exc}")
                    else:
                        applied = await self.apply_verified(announcement)
                        if not (applied or self.caught_up.is_set()
                                or announcement.version == self.worker.model.version):
                            await self.serve_last_good(refused=announcement.version)
                if not self.caught_up.is_set() and await consumer.position(tp) >= end:
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def apply_verified(self, announcement: ModelAnnouncement) -> bool:
        """Apply ``announcement`` only if it is signed with our secret and newer than the one in service."""
        try:
            announcement.verify(self._key)
        except BadEvent as exc:
            self._refuse(exc.reason, str(exc))
            return False
        if announcement.announced_ts < self._applied_ts:  # an old signed record produced again
            self._refuse("replayed", f"announcement of {announcement.version} at {announcement.announced_ts} "
                                     f"is older than the one in service ({self._applied_ts})")
            return False
        applied = await self.apply(announcement)
        if applied or announcement.version == self.worker.model.version:
            self._applied_ts = announcement.announced_ts
        return applied

    async def serve_last_good(self, refused: str) -> bool:
        """At start, when the announced version is refused: serve the newest older registry version that
        verifies (what the workers served before the refused one) instead of the base model. A worker
        restarted after a bad publish must not fall back to zero-shot while its peers serve a trained
        version. The registry is trusted storage; nothing from the topic is believed beyond the
        refused name."""
        try:
            versions = await asyncio.to_thread(self.registry.list_versions)
        except Exception as exc:  # an unreachable registry: keep what is loaded
            log.error("no fallback from refused %s: cannot list the registry (%s)", refused, exc)
            return False
        for version in sorted((v for v in versions if v < refused), reverse=True):
            fallback = ModelAnnouncement(version, redact_uri(self.registry.version_uri(version)), "fallback", 0.0)
            if await self.apply(fallback):
                log.warning("announced %s was refused at start: serving %s, the newest older version that "
                            "verifies", refused, version)
                return True
        return False

    async def apply(self, announcement: ModelAnnouncement) -> bool:
        """Load, verify and switch to ``announcement.version`` (its signature already checked)."""
        worker = self.worker
        if announcement.version == worker.model.version:
            return False
        log.info("model %s announced (%s, %s): loading off the event loop", announcement.version,
                 announcement.action, redact_uri(announcement.uri))
        loop = asyncio.get_running_loop()
        # Copied on the one writer thread of the item index (issue 11): on the event loop the copy could
        # interleave with a batch's or the catalog reader's writes and snapshot half an update.
        snapshot = await loop.run_in_executor(worker.batch_executor, worker.model.items.copy_metadata)
        revision = snapshot.revision
        try:
            model = await loop.run_in_executor(None, self._build, announcement.version, snapshot)
        except ArtifactRefused as exc:
            self._refuse("verification", str(exc))
            return False
        except Exception as exc:  # a version that cannot load must never take the worker down
            self._refuse("load", f"{type(exc).__name__}: {exc}")
            return False
        # After a restart the ranker's checkpoint may have learned in a version that is neither the one
        # loaded first nor this one: its item vectors measure how far the text weights must be rescaled.
        source = worker.recommender.ranker.text_version
        reference = None
        if source not in (None, worker.model.version, announcement.version):
            reference = await loop.run_in_executor(None, self._item_vectors, source)
        async with worker.batch_lock:  # between batches
            started = time.perf_counter()
            stale = model.items.adopt(worker.model.items, revision)
            model.items.refresh(model.encoder, model.cache)
            worker.swap(model, reference)
            pause = time.perf_counter() - started
        worker.metrics.swap_pause_seconds.observe(pause)
        worker.metrics.swaps.inc()
        log.warning("now serving model %s (%s; pause %.1f ms, %d items caught up)",
                    model.version, announcement.action, pause * 1e3, stale)
        return True

    def _build(self, version: str, snapshot) -> ServingModel:
        return build_version(self.registry, version, self.settings, snapshot)

    def _item_vectors(self, version: str):
        """``version``'s item ids and vectors from the registry (verified), or None when it cannot be read
        (removed by retention, say): the swap then keeps the ranker's scale."""
        try:
            loaded = self.registry.load(version)
        except Exception as exc:
            log.warning("the ranker's version %s cannot be read from the registry (%s)", version, exc)
            return None
        return loaded.item_ids, loaded.item_vectors

    def _refuse(self, reason: str, detail: str) -> None:
        self.last_refused = detail
        self.worker.metrics.swaps_refused.labels(reason).inc()
        log.error("refused model version (%s): %s; still serving %s", reason, detail,
                  self.worker.model.version)


def build_version(registry, version: str, settings: Settings, snapshot) -> ServingModel:
    """Load ``version`` from ``registry`` (every sha256 verified: raises ArtifactRefused) with the item
    index ``snapshot`` built in its vector space; what a worker does off the event loop before a swap,
    and what the in-process evaluation does between events."""
    loaded = registry.load(version)
    # The version's own item vectors stand in for encoding the same texts again (one vector space).
    shipped = (loaded.item_texts, loaded.item_vectors) if loaded.item_texts is not None else None
    model = ServingModel.load(path=loaded.path, device=settings.device, version=loaded.version,
                              cache_size=settings.embedding_cache_size, items=snapshot, shipped=shipped,
                              precision=settings.encoder_precision)
    # Another vector space needs its own coarse index (COLDSTART_ANN_MIN_ITEMS): built here, off the serving
    # path, so the version serves its candidates from the first request. Left to the writer's bounded steps,
    # a million rows took ~490 batches to assign, each batch and request scoring every item meanwhile.
    while model.items.maintain_coarse(settings.ann_min_items, budget=65_536):
        pass
    return model
