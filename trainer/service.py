"""``coldstart trainer``: consume training samples, fine-tune in rounds, gate, publish, announce.

Loop (one process, one device)::

    training.samples ─► poll ─► buffer.add ─► buffer.flush (fsync) ─► commit offsets
    events.audit     ─┘   (a user flagged as a bot: buffer.retract of the clicks already scored)
                                  every round_every_s, or after round_min_samples new samples:
                                  holdout split ─► fine_tune ─► gate ─► registry.publish ─► model.versions

Offsets are committed only after the samples they cover are in a flushed segment. A round
runs in a worker thread while the loop keeps consuming, so a long round never stalls the consumer
group. ``Trainer`` is easy to drive from a test: ``await trainer.start()``, ``await trainer.poll_once()``,
``trainer.run_round()``, ``await trainer.step()``, ``await trainer.stop()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from coldstart.errors import BadEvent, KafkaUnavailable
from coldstart.failpoints import crash_point
from coldstart.kafka_security import aiokafka_options
from coldstart.settings import Settings, TrainerSettings
from coldstart.model.augment import augment_table
from coldstart.model.encoder import TextEncoder
from coldstart.model.registry import Registry
from coldstart import contract
from coldstart.contract import ANNOUNCE_KEY, DeadLetter, TrainingSample, redact_uri
from coldstart.trainer.buffer import SampleBuffer, sample_id_of
from coldstart.trainer.gate import (Decision, catalog_from, decide, holdout_ranks, paired_standard_errors,
                                    ranking_metrics, split_holdout, with_context)
from coldstart.trainer.publish import announcement, load_encoder, publish_version
from coldstart.trainer.rounds import RoundResult, encode_texts, fine_tune

log = logging.getLogger(__name__)

ROUND_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


@dataclasses.dataclass(frozen=True)
class TrainerMetrics:
    samples_in: Counter
    loss: Gauge
    steps: Counter
    samples_per_second: Gauge
    round_seconds: Histogram
    rounds: Counter
    eval_recall: Gauge
    eval_ndcg: Gauge
    gate_decisions: Counter
    buffer_bytes: Gauge
    buffer_samples: Gauge
    buffer_age_seconds: Gauge
    published_version_info: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry, namespace: str = "coldstart") -> "TrainerMetrics":
        def counter(name, doc, labels=()):
            return Counter(name, doc, labels, namespace=namespace, registry=registry)

        def gauge(name, doc, labels=()):
            return Gauge(name, doc, labels, namespace=namespace, registry=registry)

        return cls(
            samples_in=counter("trainer_samples_in_total", "Training samples consumed, by result "
                               "(buffered, duplicate, malformed: a sample or an audit record dead-lettered; retracted: taken "
                               "out or refused because events.audit flagged their user as a bot).", ["result"]),
            loss=gauge("trainer_loss", "Training loss of the last step of the last round."),
            steps=counter("trainer_steps_total", "Optimiser steps taken."),
            samples_per_second=gauge("trainer_samples_per_second", "Training throughput of the last round."),
            round_seconds=Histogram("trainer_round_seconds", "Wall time of a whole round.", namespace=namespace,
                                    registry=registry, buckets=ROUND_BUCKETS),
            rounds=counter("trainer_rounds_total", "Rounds, by outcome (published, refused, skipped, failed).",
                           ["outcome"]),
            eval_recall=gauge("trainer_eval_recall_at_10", "Holdout recall@10, by model (candidate, serving).",
                              ["model"]),
            eval_ndcg=gauge("trainer_eval_ndcg_at_10", "Holdout nDCG@10, by model (candidate, serving).",
                            ["model"]),
            gate_decisions=counter("trainer_gate_decisions_total", "Evaluation gate decisions, by outcome.",
                                   ["outcome"]),
            buffer_bytes=gauge("trainer_buffer_bytes", "Bytes of Parquet segments in the buffer."),
            buffer_samples=gauge("trainer_buffer_samples", "Samples held in the buffer."),
            buffer_age_seconds=gauge("trainer_buffer_age_seconds", "Age of the oldest buffered sample."),
            published_version_info=gauge("trainer_model_version_info", "The version the trainer trains "
                                         "from (value 1).", ["version"]),
        )


@dataclasses.dataclass
class RoundReport:
    outcome: str  # published | refused | skipped
    reason: str
    version: str | None = None
    result: RoundResult | None = dataclasses.field(default=None, repr=False)
    candidate: dict[str, float] | None = None
    serving: dict[str, float] | None = None
    decision: Decision | None = None
    n_train: int = 0
    n_holdout: int = 0
    seconds: float = 0.0


class Trainer:
    def __init__(self, settings: Settings, config: TrainerSettings | None = None, *,
                 metrics: TrainerMetrics | None = None, encoder: TextEncoder | None = None) -> None:
        self.settings = settings
        self.config = config or settings.trainer
        self.metrics = metrics or TrainerMetrics.create(CollectorRegistry())
        for outcome in ("published", "refused", "skipped", "failed"):  # series exist before the first round,
            self.metrics.rounds.labels(outcome)  # so alert ratios over them are defined (issue 12)
        for model in ("candidate", "serving"):  # NaN = not evaluated yet (a 0 would read as a bad model)
            self.metrics.eval_recall.labels(model).set(float("nan"))
            self.metrics.eval_ndcg.labels(model).set(float("nan"))
        self.buffer = SampleBuffer(settings.buffer_dir, self.config.buffer_max_bytes, self.config.buffer_max_age_s)
        self.registry = Registry(settings.registry_uri, keep=self.config.keep_versions)
        self.encoder = encoder or self._serving_encoder()
        self.new_since_round = self._untrained_samples()
        self.last_round_ts = time.time()
        self.rounds_run = 0
        self._consumer = None
        self._producer = None
        self._round_task: asyncio.Task | None = None
        self._set_version_metric(None)
        self._update_buffer_metrics()

    # ---------------------------------------------------------------------------- pure (no Kafka)
    def ingest(self, samples: Iterable[Any], retracted: Iterable[str] = ()) -> int:
        """add, retract, flush (durable on return): the offsets of ``samples`` and of the audit records
        naming ``retracted`` may be committed afterwards."""
        samples = list(samples)
        removed = self.buffer.retract(retracted)  # first: a sample in the same poll as its retraction is refused
        refused = sum(1 for sample in samples if self.buffer.was_retracted(sample_id_of(sample)))
        added = self.buffer.add(samples)
        self.buffer.flush()
        crash_point("after_buffer_flush")
        self.new_since_round = max(0, self.new_since_round + added - removed)
        self.metrics.samples_in.labels("buffered").inc(added)
        self.metrics.samples_in.labels("duplicate").inc(len(samples) - added - refused)
        self.metrics.samples_in.labels("retracted").inc(removed + refused)
        self._update_buffer_metrics()
        return added

    def round_due(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.buffer.n_samples < self.config.min_train_samples or self.new_since_round == 0:
            return False
        return (self.new_since_round >= self.config.round_min_samples
                or now - self.last_round_ts >= self.config.round_every_s)

    def run_round(self) -> RoundReport:
        """One round on the buffer as it is now: split, fine-tune, gate, publish. Blocking."""
        started = time.perf_counter()
        cfg = self.config
        self.new_since_round = 0
        self.last_round_ts = time.time()
        table = with_context(self.buffer.read())  # a click nothing came before teaches nothing
        train, holdout = split_holdout(table, cfg.holdout_fraction) if table.num_rows else (table, table)
        if holdout.num_rows > cfg.max_holdout:
            holdout = holdout.slice(holdout.num_rows - cfg.max_holdout)
        if train.num_rows < max(2, cfg.min_train_samples - holdout.num_rows) or holdout.num_rows == 0:
            self.metrics.rounds.labels("skipped").inc()
            return RoundReport("skipped", f"{train.num_rows} training / {holdout.num_rows} holdout samples "
                               "are too few", n_train=train.num_rows, n_holdout=holdout.num_rows)
        self.rounds_run += 1
        if cfg.augment != "off":  # rows for cold items, after the split: the gate's holdout stays real clicks
            added = augment_table(train, cfg.augment, self.encoder.encode)
            log.info("augmentation %s: %d rows added for cold items", cfg.augment, added.num_rows)
            train = pa.concat_tables([train, added])
        result = fine_tune(self.encoder, train, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                           sampling=cfg.sampling, time_budget_s=cfg.time_budget_s,
                           seed=cfg.seed + self.rounds_run, precision=cfg.precision)
        m = self.metrics
        m.steps.inc(result.steps)
        m.samples_per_second.set(result.samples_per_s)
        if result.losses:
            m.loss.set(result.last_loss)

        catalog = catalog_from(table)
        ids = list(catalog)
        texts = [catalog[i] for i in ids]
        cand_items = encode_texts(result.module, self.encoder.tokenizer, texts, max_length=self.encoder.max_length)
        cand_ranks = holdout_ranks(result.module, self.encoder.tokenizer, holdout, catalog,
                                   max_length=self.encoder.max_length, item_vectors=cand_items)
        serv_ranks = holdout_ranks(self.encoder, None, holdout, catalog)
        candidate, serving = ranking_metrics(cand_ranks), ranking_metrics(serv_ranks)
        for name, scores in (("candidate", candidate), ("serving", serving)):
            m.eval_recall.labels(name).set(scores["recall@10"])
            m.eval_ndcg.labels(name).set(scores["ndcg@10"])
        decision = decide(candidate, serving, cfg.tolerance, z=cfg.gate_z,
                          standard_errors=paired_standard_errors(cand_ranks, serv_ranks))
        m.gate_decisions.labels(decision.outcome).inc()
        log.info("gate %s: %s (loss %.4f -> %.4f, %d steps, %.1f samples/s)", decision.outcome, decision.reason,
                 result.first_loss, result.last_loss, result.steps, result.samples_per_s)
        report = RoundReport(decision.outcome, decision.reason, result=result, candidate=candidate,
                             serving=serving, decision=decision, n_train=train.num_rows,
                             n_holdout=holdout.num_rows)
        if decision.publish:
            ts = train.column("ts")
            window = (min(ts.to_pylist()), max(ts.to_pylist()))
            version = publish_version(
                self.registry, self.encoder, result.module, item_ids=ids, item_vectors=cand_items, item_texts=texts,
                parent=self.encoder.version, base_model=self._base_model(), data_window=window,
                metrics={"candidate_" + k: v for k, v in candidate.items()}
                | {"serving_" + k: v for k, v in serving.items()}
                | {"first_loss": result.first_loss, "last_loss": result.last_loss, "steps": result.steps,
                   "n_train": train.num_rows, "sampling": cfg.sampling, "augment": cfg.augment,
                   "precision": cfg.precision},
            )
            # Train the next round from what was published, loaded back through verification.
            self.encoder, _ = load_encoder(self.registry, version, device=str(self.encoder.device),
                                           max_length=self.encoder.max_length)
            self._set_version_metric(version)
            report.version = version
            log.info("published %s (parent %s)", version, self.registry.manifest(version)["parent"])
        del result.module  # the candidate's weights are either published or discarded
        m.rounds.labels(report.outcome).inc()
        report.seconds = time.perf_counter() - started
        m.round_seconds.observe(report.seconds)
        return report

    # ---------------------------------------------------------------------------- Kafka
    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.errors import KafkaError

        s = self.settings
        self._consumer = AIOKafkaConsumer(
            contract.SAMPLES, contract.AUDIT, bootstrap_servers=s.bootstrap_servers, group_id=f"{s.app_id}-trainer",
            client_id=f"{s.app_id}-trainer", enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, s.session_timeout_s / 3) * 1000),
            max_poll_records=self.config.poll_max_records, **aiokafka_options(s))
        self._producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all",
                                          client_id=f"{s.app_id}-trainer", **aiokafka_options(s))
        try:
            await self._consumer.start()
            await self._producer.start()
            await self.reannounce_current()
        except KafkaError as exc:
            await self.stop()
            raise KafkaUnavailable(f"no Kafka broker answers at {s.bootstrap_servers} ({exc}); start one with "
                                   "`coldstart kafka start` or set COLDSTART_BOOTSTRAP_SERVERS") from exc

    async def reannounce_current(self) -> str | None:
        """Announce ``CURRENT`` when ``model.versions`` names another version (issue 8): a trainer that
        crashed after moving CURRENT but before announcing would leave the workers on the old version
        forever. Returns the version announced, or None when the topic already agrees."""
        current = self.registry.current()
        if current is None:
            return None
        announced = await latest_announcement(self.settings)
        # the same version name in another registry (a reset or moved registry) is not an agreement
        if announced is not None and (announced.version, announced.uri) == \
                (current, redact_uri(self.registry.version_uri(current))):
            return None
        log.warning("model.versions announces %s but the registry's CURRENT is %s: announcing %s",
                    announced.version if announced else "nothing", current, current)
        await self.announce(current, "publish")
        return current

    async def stop(self) -> None:
        if self._round_task is not None:
            await asyncio.gather(self._round_task, return_exceptions=True)
            self._round_task = None
        for client in (self._consumer, self._producer):
            if client is not None:
                await client.stop()
        self._consumer = self._producer = None

    async def poll_once(self, timeout_s: float | None = None) -> int:
        """Consume one batch, make it durable, then commit its offsets. Returns samples buffered."""
        timeout = self.config.poll_timeout_s if timeout_s is None else timeout_s
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000),
                                               max_records=self.config.poll_max_records)
        if not batches:
            self._update_buffer_metrics()
            return 0
        samples, retracted, offsets, rejected = [], [], {}, []
        for tp, messages in batches.items():
            for msg in messages:
                try:
                    if tp.topic == contract.AUDIT:
                        retracted += contract.FlaggedBack.loads(msg.value).event_ids
                    else:
                        samples.append(TrainingSample.loads(msg.value))
                except BadEvent as exc:
                    # Never skipped silently and never redelivered forever: dead-lettered with the
                    # original bytes, then its offset is committed with the rest.
                    self.metrics.samples_in.labels("malformed").inc()
                    log.warning("dead-lettering malformed record at %s:%d:%d: %s", tp.topic,
                                tp.partition, msg.offset, exc)
                    rejected.append(DeadLetter.of(exc, tp.topic, tp.partition, msg.offset, msg.key,
                                                  msg.value, time.time()))
            offsets[tp] = messages[-1].offset + 1
        for letter in rejected:
            await self._producer.send_and_wait(contract.DLQ, value=letter.dumps())
        added = await asyncio.to_thread(self.ingest, samples, retracted)
        await self._consumer.commit(offsets)  # only now: the samples are in a flushed segment, retractions too
        return added

    async def step(self) -> RoundReport | None:
        """poll_once, then start a round in the background when one is due; returns a finished round."""
        await self.poll_once()
        report = None
        if self._round_task is not None and self._round_task.done():
            task, self._round_task = self._round_task, None
            report = task.result()
        if self._round_task is None and self.round_due():
            self._round_task = asyncio.create_task(self.round_and_announce())
        return report

    async def round_and_announce(self) -> RoundReport | None:
        try:
            report = await asyncio.to_thread(self.run_round)
        except Exception:  # a failed round must not stop the consumer; the next one retries
            log.exception("training round failed")
            self.metrics.rounds.labels("failed").inc()
            return None
        if report.version is not None:
            crash_point("before_announcement")
            await self.announce(report.version, "publish")
        return report

    async def announce(self, version: str, action: str) -> None:
        record = announcement(self.registry, version, action, secret=self.settings.announce_secret)
        await self._producer.send_and_wait(contract.MODEL_VERSIONS, value=record.dumps(), key=ANNOUNCE_KEY)
        log.info("announced %s %s on %s", action, version, contract.MODEL_VERSIONS)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        await self.start()
        try:
            while not stop.is_set():
                await self.step()
        finally:
            await self.stop()

    # ---------------------------------------------------------------------------- internals
    def _untrained_samples(self) -> int:
        """Buffered samples newer than the data window of CURRENT (all of them before the first
        version): a trainer killed before its round, restarted while traffic is quiet, still trains on
        what it had buffered instead of waiting for new samples."""
        if self.buffer.n_samples == 0:
            return 0
        current = self.registry.current()
        window = self.registry.manifest(current).get("data_window") if current else None
        ts = self.buffer.read().column("ts")
        if current is None:
            return len(ts)
        if not window:
            return 0
        return int(pc.sum(pc.greater(ts, window[1])).as_py() or 0)

    def _serving_encoder(self) -> TextEncoder:
        s = self.settings
        if self.registry.current() is not None:
            encoder, _ = load_encoder(self.registry, device=s.device)
            return encoder
        return TextEncoder(s.model_path or None, device=s.device)

    def _base_model(self) -> str:
        current = self.registry.current()
        if current is not None and current == self.encoder.version:
            return self.registry.manifest(current).get("base_model", "")
        return self.encoder.version

    def _set_version_metric(self, version: str | None) -> None:
        self.metrics.published_version_info.clear()
        self.metrics.published_version_info.labels(version or self.encoder.version).set(1)

    def _update_buffer_metrics(self) -> None:
        m = self.metrics
        m.buffer_bytes.set(self.buffer.size_bytes)
        m.buffer_samples.set(self.buffer.n_samples)
        oldest = self.buffer.oldest_received_ts
        m.buffer_age_seconds.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)


# -------------------------------------------------------------------------------- entry points
def run_trainer(settings: Settings, *, metrics_port: int | None = None, registry: CollectorRegistry | None = None,
                stop: asyncio.Event | None = None) -> None:
    """``coldstart trainer``: run until interrupted, with the knobs of ``settings.trainer``."""
    registry = registry or CollectorRegistry()
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.web_host, registry=registry)
    if not settings.announce_secret:
        log.warning("COLDSTART_ANNOUNCE_SECRET is not set: announcements are signed with the public development "
                    "key, which authenticates nothing; set the same secret on the trainer and every worker")
    trainer = Trainer(settings, metrics=TrainerMetrics.create(registry))
    asyncio.run(trainer.run(stop))


def rollback(settings: Settings, version: str) -> None:
    """``coldstart models rollback VERSION``: point CURRENT at ``version`` and announce it."""
    registry = Registry(settings.registry_uri)
    registry.set_current(version)
    asyncio.run(_announce_once(settings, registry, version, "rollback"))


def list_versions(settings: Settings) -> list[dict[str, Any]]:
    """``coldstart models list``: every version with its manifest summary, oldest first."""
    registry = Registry(settings.registry_uri)
    current = registry.current()
    out = []
    for version in registry.list_versions():
        manifest = registry.manifest(version)
        out.append({"version": version, "current": version == current, "parent": manifest.get("parent"),
                    "created_ts": manifest.get("created_ts"), "data_window": manifest.get("data_window"),
                    "metrics": manifest.get("metrics", {}), "uri": redact_uri(registry.version_uri(version))})
    return out


async def latest_announcement(settings: Settings, timeout_s: float = 10.0) -> contract.ModelAnnouncement | None:
    """The newest record on the compacted ``model.versions`` topic (None: empty or unreadable)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, client_id=f"{settings.app_id}-trainer-versions")
    await consumer.start()
    try:
        tp = TopicPartition(contract.MODEL_VERSIONS, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        if end == 0:
            return None
        consumer.seek(tp, end - 1)  # compaction never removes the newest record
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            messages = batch.get(tp, [])
            if messages:
                try:
                    return contract.ModelAnnouncement.loads(messages[-1].value)
                except BadEvent:
                    return None  # a corrupt record: announcing CURRENT over it is right
        return None
    finally:
        await consumer.stop()


async def _announce_once(settings: Settings, registry: Registry, version: str, action: str) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all",
                                client_id=f"{settings.app_id}-models", **aiokafka_options(settings))
    try:
        await producer.start()
        record = announcement(registry, version, action, secret=settings.announce_secret)
        await producer.send_and_wait(contract.MODEL_VERSIONS, value=record.dumps(), key=ANNOUNCE_KEY)
    except KafkaError as exc:
        raise KafkaUnavailable(f"CURRENT now names {version}, but the announcement failed: no Kafka broker at "
                               f"{settings.bootstrap_servers} ({exc}); rerun the rollback once Kafka is up") from exc
    finally:
        await producer.stop()
