"""The live system's code objects driven in-process, without a broker (``coldstart eval run --in-process``).

The same batch path (:class:`~coldstart.streams.processor.BatchProcessor`), item index, stream
statistics and learned ranker (:class:`~coldstart.streams.recommender.Recommender`) as a worker, fed
event by event in stream order with the prequential protocol of the live run (rank a click, then
apply it). Events go through the wire contract's parsers, so what the worker would dead-letter is
counted here too. For fast iteration; the live run through Kafka stays the figure of record.

With ``trainer_dir`` (``coldstart eval run --in-process --trainer``) a real
:class:`~coldstart.trainer.service.Trainer` learns from the training samples the batch step emits:
every ``round_samples`` new samples they are made durable in its buffer (``ingest``) and one round runs
(``run_round``: fine-tune, gate, publish into the registry under ``trainer_dir``). A version the gate
publishes is loaded as a worker loads it (``streams/swap.py``: checksums verified, encoder loaded, item
index built in the new vector space with the version's shipped vectors, smoke encode), and swapped into
the batch step and the recommender before the next event; profiles made by the older version are
recomputed from their recent events, as in a worker. The replay waits for each round, so a version serves
from the event after the last sample it was trained on: the live system's rounds run beside the
stream instead and their versions arrive later (seconds to minutes of stream).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from coldstart.contract import parse_click, parse_item, parse_search
from coldstart.errors import BadEvent
from coldstart.replay.events import ReplayEvent
from coldstart.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["InProcessPipeline"]


class InProcessPipeline:
    """A worker without Kafka, with the baselines' contract: ``rank`` before ``learn_one``."""

    name = "live"

    def __init__(self, settings: Settings, *, namespace: str = "", trainer_dir: Path | None = None,
                 round_samples: int | None = None) -> None:
        from coldstart.model.serving import ServingModel
        from coldstart.streams.processor import BatchProcessor
        from coldstart.streams.recommender import Recommender

        self.settings = settings
        if settings.torch_threads > 0:  # as the worker does: its per-batch tensor work is measured here
            import torch

            torch.set_num_threads(settings.torch_threads)
        self.model = ServingModel.load(path=settings.model_path or None, device=settings.device,
                                       cache_size=settings.embedding_cache_size, max_items=settings.max_items,
                                       max_queries=settings.item_queries,
                                       precision=settings.encoder_precision)
        self.processor = BatchProcessor(settings, self.model)
        self.recommender = Recommender(settings, self.model)
        self.processor.click_hook = self.recommender.learn_clicks
        self.profiles = {}
        self.dead_letters: dict[str, int] = {}
        self.exclude_clicked = False
        self.events_seen = 0
        # The trainer inside the replay (None: trainer off).
        self.trainer = None
        self.round_samples = round_samples or settings.evaluation.trainer_round_samples
        self.pending: list = []  # samples emitted since the last round
        self.samples_emitted = 0
        self.rounds: list[dict[str, Any]] = []
        if trainer_dir is not None:
            from coldstart.trainer.service import Trainer

            trainer_dir = Path(trainer_dir)
            trainer_settings = settings.replace(registry_uri=str(trainer_dir / "registry"),
                                                buffer_dir=trainer_dir / "buffer")
            self.trainer = Trainer(trainer_settings, settings.evaluation.trainer_config(settings.trainer))

    @property
    def version(self) -> str:
        """The model version serving now (recorded with every ranking)."""
        return self.model.version

    def learn_one(self, event: ReplayEvent) -> None:
        from coldstart.replay.producer import encode

        key, value = encode(event)
        self.events_seen += 1  # position in the stream (items included): where a round ran
        try:
            if event.type == "item":
                item = parse_item(value, key)
                self.model.items.upsert(item.item_id, item.title)
                self.recommender.stats.note_item(item.item_id, item.ts)
                return
            parser = parse_search if event.type == "search" else parse_click
            ev = parser(value, key, now=time.time())
        except BadEvent as exc:
            self.dead_letters[exc.reason] = self.dead_letters.get(exc.reason, 0) + 1
            return
        state = self.profiles.get(ev.user_id)
        outcome = self.processor.process([ev], {ev.user_id: state} if state is not None else {})
        self.profiles.update(outcome.profiles)
        if self.trainer is not None and outcome.samples:
            self.pending.extend(outcome.samples)
            self.samples_emitted += len(outcome.samples)
            if len(self.pending) >= self.round_samples:
                self.train_round()

    # ------------------------------------------------------------------------------ the trainer
    def train_round(self) -> dict[str, Any]:
        """Hand the pending samples to the trainer's buffer, run one round, swap in what it publishes."""
        started = time.perf_counter()
        served = self.model.version
        added = self.trainer.ingest(self.pending)
        self.pending = []
        report = self.trainer.run_round()
        entry: dict[str, Any] = {
            "round": len(self.rounds) + 1, "after_event": self.events_seen, "samples_emitted": self.samples_emitted,
            "samples_added": added, "buffer_samples": self.trainer.buffer.n_samples,
            "outcome": report.outcome, "reason": report.reason, "version": report.version, "serving": served,
            "n_train": report.n_train, "n_holdout": report.n_holdout,
            "candidate_metrics": report.candidate, "serving_metrics": report.serving,
            "steps": report.result.steps if report.result is not None else 0,
            "first_loss": report.result.first_loss if report.result is not None else None,
            "last_loss": report.result.last_loss if report.result is not None else None,
            "round_seconds": round(report.seconds, 2)}
        if report.version is not None:
            entry["swap_seconds"] = round(self.swap_to(report.version), 2)
            gains = dict(self.recommender.text_gains)
            entry["text_gain"] = round(gains[report.version], 4) if report.version in gains else None
        entry["seconds"] = round(time.perf_counter() - started, 2)
        self.rounds.append(entry)
        cand, serv = report.candidate or {}, report.serving or {}
        log.info("round %d after %d events: %s %s (holdout Recall@10 candidate %.3f vs serving %.3f; %.0f s)",
                 entry["round"], self.events_seen, report.outcome, report.version or "", cand.get("recall@10", float("nan")),
                 serv.get("recall@10", float("nan")), entry["seconds"])
        return entry

    def swap_to(self, version: str) -> float:
        """Load ``version`` from the trainer's registry as a worker does (``ModelSwapper._build`` and
        ``apply`` in streams/swap.py) and switch the batch step and the recommender to it. Returns the
        seconds the load and switch took (the replay is paused meanwhile)."""
        from coldstart.streams.swap import build_version

        started = time.perf_counter()
        snapshot = self.model.items.copy_metadata()
        revision = snapshot.revision
        model = build_version(self.trainer.registry, version, self.settings, snapshot)
        model.items.adopt(self.model.items, revision)  # nothing changed meanwhile here: kept for fidelity
        model.items.refresh(model.encoder, model.cache)
        self.model = model
        self.processor.swap(model)
        self.recommender.swap(model)
        return time.perf_counter() - started

    def rank(self, user: str, query: str | None, k: int) -> list[str]:
        # What the catalog reader does between batches: every changed item gets its vector.
        self.model.items.refresh(self.model.encoder, self.model.cache)
        recs = self.recommender.recommend(self.profiles.get(user), k=k, exclude_clicked=self.exclude_clicked)
        return [r.item_id for r in recs]

    def n_events(self, user: str) -> int:
        state = self.profiles.get(user)
        return state.n_events if state is not None else 0
