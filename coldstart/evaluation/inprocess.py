"""The live system's code objects driven in-process, without a broker (``coldstart eval run --in-process``).

The same batch path (:class:`~coldstart.streams.processor.BatchProcessor`), item index, stream
statistics and learned ranker (:class:`~coldstart.streams.recommender.Recommender`) as a worker, fed
event by event in stream order with the prequential protocol of the live run (rank a click, then
apply it). Events go through the wire contract's parsers, so what the worker would dead-letter is
counted here too. For fast iteration; the live run through Kafka stays the figure of record.
"""

from __future__ import annotations

import time

from coldstart.contract import parse_click, parse_item, parse_search
from coldstart.errors import BadEvent
from coldstart.replay.events import ReplayEvent
from coldstart.settings import Settings

__all__ = ["InProcessPipeline"]


class InProcessPipeline:
    """A worker without Kafka, with the baselines' contract: ``rank`` before ``learn_one``."""

    name = "live"

    def __init__(self, settings: Settings, *, namespace: str = "") -> None:
        from coldstart.model.serving import ServingModel
        from coldstart.streams.processor import BatchProcessor
        from coldstart.streams.recommender import Recommender

        self.settings = settings
        if settings.torch_threads > 0:  # as the worker does: its per-batch tensor work is measured here
            import torch

            torch.set_num_threads(settings.torch_threads)
        self.model = ServingModel.load(path=settings.model_path or None, device=settings.device,
                                       cache_size=settings.embedding_cache_size, max_items=settings.max_items,
                                       max_queries=settings.item_queries)
        self.processor = BatchProcessor(settings, self.model)
        self.recommender = Recommender(settings, self.model)
        self.processor.click_hook = self.recommender.learn_clicks
        self.profiles = {}
        self.dead_letters: dict[str, int] = {}
        self.exclude_clicked = False

    def learn_one(self, event: ReplayEvent) -> None:
        from coldstart.replay.producer import encode

        key, value = encode(event)
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

    def rank(self, user: str, query: str | None, k: int) -> list[str]:
        # What the catalog reader does between batches: every changed item gets its vector.
        self.model.items.refresh(self.model.encoder, self.model.cache)
        recs = self.recommender.recommend(self.profiles.get(user), k=k, exclude_clicked=self.exclude_clicked)
        return [r.item_id for r in recs]

    def n_events(self, user: str) -> int:
        state = self.profiles.get(user)
        return state.n_events if state is not None else 0
