"""From a gated round to a registry version and its announcement on ``model.versions``.

A version ships its encoder together with the item vectors that encoder produced (one vector space at a time), so the
item vectors are computed here with the trained module, over the catalog the trainer knows; with the
text of each, so that a worker swapping the version in takes them instead of encoding those texts again.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import torch

from coldstart.model.encoder import TextEncoder
from coldstart.model.registry import LoadedVersion, Registry
from coldstart.contract import ANNOUNCE_KEY, ModelAnnouncement, announce_key, redact_uri
from coldstart.trainer.rounds import encode_texts



def publish_version(registry: Registry, encoder: TextEncoder, module: torch.nn.Module, *,
                    item_ids: Sequence[str], item_vectors: torch.Tensor | None = None,
                    item_texts: Sequence[str] | None = None, parent: str | None,
                    base_model: str, data_window: tuple[float, float] | None,
                    metrics: Mapping[str, float]) -> str:
    """Write ``module`` (trained from ``encoder``) and its item vectors as a new current version.

    Item vectors are taken as given (encoded from ``item_texts`` with ``module``), or encoded here.
    """
    if item_vectors is None:
        if item_texts is None:
            raise ValueError("publish_version needs item_vectors or item_texts")
        item_vectors = encode_texts(module, encoder.tokenizer, list(item_texts), max_length=encoder.max_length)
    return registry.publish(module.state_dict(), base_dir=encoder.path, item_ids=list(item_ids),
                            item_vectors=item_vectors, item_texts=item_texts, parent=parent, base_model=base_model,
                            data_window=data_window, metrics=dict(metrics))


def load_encoder(registry: Registry, version: str | None = None, device: str = "auto",
                 max_length: int = 64) -> tuple[TextEncoder, LoadedVersion]:
    """The verified encoder of a registry version (CURRENT by default), its ``version`` being the id."""
    loaded = registry.load(version)
    return TextEncoder(loaded.path, device=device, max_length=max_length, version=loaded.version), loaded


def announcement(registry: Registry, version: str, action: str = "publish",
                 now: float | None = None, *, secret: str = "") -> ModelAnnouncement:
    """The signed record workers read from ``model.versions`` (key :data:`ANNOUNCE_KEY`).

    ``secret`` is ``COLDSTART_ANNOUNCE_SECRET`` (empty: the public development key). The URI is
    redacted: a registry URI with credentials must not be copied to every reader of the topic.
    """
    if action not in ("publish", "rollback"):
        raise ValueError(f"action must be publish or rollback, got {action!r}")
    record = ModelAnnouncement(version=version, uri=redact_uri(registry.version_uri(version)), action=action,
                               announced_ts=time.time() if now is None else now)
    return record.signed(announce_key(secret))
