"""The unit that is swapped: one model version = its encoder + the item vectors it produced.

One vector space at a time: every vector a worker serves comes from ``ServingModel.version``. A new
version is built off the event loop (``load``), then replaces the old one between batches.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from coldstart.errors import ArtifactRefused
from coldstart.model.encoder import EmbeddingCache, TextEncoder
from coldstart.model.items import ItemIndex


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
             cache_size: int = 100_000, items: ItemIndex | None = None,
             max_items: int = 1_000_000, max_queries: int = 16,
             popularity_half_life_s: float = 3 * 86_400.0,
             shipped: tuple[list[str], torch.Tensor] | None = None,
             precision: str = "float32") -> "ServingModel":
        """Load an encoder and build the item index in its vector space.

        ``items``: a snapshot of the serving index (``ItemIndex.copy_metadata``) whose every vector is
        re-encoded here by the new encoder, so old and new vectors never mix. ``shipped``: the
        ``(texts, vectors)`` the version was published with (made by this encoder): an item whose text
        is among them takes the shipped vector instead of being encoded again. ``precision``: the
        encoder's arithmetic (``Settings.encoder_precision``).
        """
        encoder = TextEncoder(path, device=device, version=version, precision=precision)
        # A fresh cache per version: entries of another version are useless to this one.
        cache = EmbeddingCache(cache_size)
        if shipped is not None and len(shipped[0]):
            texts, vectors = shipped
            check_shipped(encoder, texts, vectors)
            cache.seed(encoder.version, texts, vectors.to(encoder.device, torch.float32))
        if items is None:
            items = ItemIndex(encoder.dim, encoder.device, max_items=max_items, max_queries=max_queries,
                              popularity_half_life_s=popularity_half_life_s)
        items.reencode_all(encoder, cache)
        model = cls(encoder, cache, items)
        model.smoke_check()
        return model

    def smoke_check(self) -> None:
        """Refuse an encoder that does not produce finite unit vectors of the index's dimension."""
        vec = self.encoder.encode(["smoke test: wireless headphones"])
        if vec.shape != (1, self.items.dim):
            raise ArtifactRefused(f"smoke encode gave shape {tuple(vec.shape)}, expected (1, {self.items.dim})")
        if not torch.isfinite(vec).all() or abs(float(vec.norm()) - 1.0) > 1e-3:
            raise ArtifactRefused("smoke encode gave a non-finite or non-unit vector")


def check_shipped(encoder: TextEncoder, texts: list[str], vectors: torch.Tensor, probes: int = 8) -> None:
    """Refuse shipped item vectors that this encoder would not produce: the wrong shape, or a sample of
    them further than float tolerance from encoding their texts here (one vector space at a time)."""
    if vectors.ndim != 2 or vectors.shape != (len(texts), encoder.dim):
        raise ArtifactRefused(f"shipped item vectors have shape {tuple(vectors.shape)}, expected "
                              f"({len(texts)}, {encoder.dim})")
    step = max(1, len(texts) // probes)
    sample = list(range(0, len(texts), step))[:probes]
    mine = encoder.encode([texts[i] for i in sample])
    cos = (mine * vectors[sample].to(mine.device, torch.float32)).sum(dim=1)
    if not bool(torch.isfinite(cos).all()) or float(cos.min()) < 0.999:
        raise ArtifactRefused(f"shipped item vectors do not match this encoder (cosine {float(cos.min()):.4f} "
                              "with its own encoding of the same text)")
