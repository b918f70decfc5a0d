"""The unit that is swapped: one model version = its encoder + the item vectors it produced.

Invariant 3 of the design: every vector a worker serves comes from ``ServingModel.version``. A new
version is built off the event loop (``load``), then replaces the old one between batches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model.encoder import EmbeddingCache, TextEncoder
from model.items import ItemIndex


@dataclasses.dataclass
class ServingModel:
    encoder: TextEncoder
    cache: EmbeddingCache
    items: ItemIndex

    @property
    def version(self) -> str:
        return self.encoder.version

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @classmethod
    def load(cls, *, path: str | Path | None = None, device: str = "auto", version: str | None = None,
             cache_size: int = 100_000, previous: "ServingModel | None" = None,
             max_items: int = 1_000_000, max_queries: int = 16,
             popularity_half_life_s: float = 3 * 86_400.0) -> "ServingModel":
        """Load an encoder and (re)build the item index in its vector space.

        With ``previous``, items, texts and popularity carry over and every item vector is re-encoded
        by the new encoder, so old and new vectors never mix.
        """
        encoder = TextEncoder(path, device=device, version=version)
        # A fresh cache per version: entries of the old version are useless to the new one.
        cache = EmbeddingCache(cache_size)
        if previous is not None:
            items = previous.items.copy_metadata(encoder.device)
        else:
            items = ItemIndex(encoder.dim, encoder.device, max_items=max_items, max_queries=max_queries,
                              popularity_half_life_s=popularity_half_life_s)
        items.reencode_all(encoder, cache)
        return cls(encoder, cache, items)
