"""A version's shipped item vectors (one vector space at a time; issue 7): a worker building the version's item index
takes them for the texts they were made from instead of encoding those texts again, and refuses vectors
its encoder would not make. Real registry files, real MiniLM weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coldstart.errors import ArtifactRefused
from coldstart.model.encoder import TextEncoder
from coldstart.model.items import ClickEvidence, ItemIndex
from coldstart.model.registry import Registry
from coldstart.model.serving import ServingModel

pytestmark = pytest.mark.model

TITLES = {f"sku{i}": f"{kind} model {i}" for i, kind in enumerate(["xbox controller", "hdmi cable", "desk lamp",
                                                                     "office stapler", "usb hub", "gaming headset"] * 5)}


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


def serving_index(encoder: TextEncoder) -> ItemIndex:
    """What a worker holds at a swap: every titled item, plus one untitled item known by a query."""
    index = ItemIndex(encoder.dim, encoder.device)
    for item_id, title in TITLES.items():
        index.upsert(item_id, title)
    index.observe_clicks([ClickEvidence("c1", "untitled", "wireless mouse", 1.0)])
    return index.copy_metadata()


def publish(tmp_path: Path, encoder: TextEncoder, texts: dict[str, str], vectors: torch.Tensor | None = None) -> Registry:
    registry = Registry(tmp_path / "registry")
    registry.publish(encoder.module.state_dict(), base_dir=encoder.path, item_ids=list(texts),
                     item_vectors=encoder.encode(list(texts.values())) if vectors is None else vectors,
                     item_texts=list(texts.values()), base_model=encoder.version)
    return registry


def test_a_swap_takes_the_shipped_vectors_and_encodes_only_the_rest(tmp_path, encoder):
    shipped = dict(list(TITLES.items())[:20])  # the items the trainer saw clicked
    loaded = publish(tmp_path, encoder, shipped).load()
    assert loaded.item_texts == list(shipped.values())

    model = ServingModel.load(path=loaded.path, device="cpu", version=loaded.version, items=serving_index(encoder),
                              shipped=(loaded.item_texts, loaded.item_vectors))
    # Encoded: the 10 titles not shipped and the untitled item's query (the shipped ones came from the version).
    assert model.cache.misses == len(TITLES) - len(shipped) + 1
    vectors, valid = model.items.matrix()
    assert bool(valid[: len(model.items)].all())
    fresh = ServingModel.load(path=loaded.path, device="cpu", version=loaded.version, items=serving_index(encoder))
    assert fresh.cache.misses == len(TITLES) + 1  # without them, every text is encoded
    torch.testing.assert_close(vectors, fresh.items.matrix()[0], atol=1e-5, rtol=0)


def test_a_bfloat16_worker_takes_the_float32_trainers_vectors_as_its_own_space(tmp_path, encoder):
    # The trainer publishes float32 vectors; a worker serving in bfloat16 (issue 11, opt-in) checks them
    # against its own encoding and must find them within the shipped-vector tolerance, and its own
    # vectors for the texts not shipped must rank as float32's do.
    shipped = dict(list(TITLES.items())[:20])
    loaded = publish(tmp_path, encoder, shipped).load()
    model = ServingModel.load(path=loaded.path, device="cpu", version=loaded.version, items=serving_index(encoder),
                              shipped=(loaded.item_texts, loaded.item_vectors), precision="bfloat16")
    assert model.encoder.precision == "bfloat16" and model.version == loaded.version
    reference = ServingModel.load(path=loaded.path, device="cpu", version=loaded.version, items=serving_index(encoder))
    ours, theirs = model.items.matrix()[0][: len(TITLES)], reference.items.matrix()[0][: len(TITLES)]
    assert float((ours * theirs).sum(dim=1).min()) > 0.999


def test_shipped_vectors_another_encoder_made_are_refused(tmp_path, encoder):
    wrong = torch.nn.functional.normalize(torch.randn(len(TITLES), encoder.dim), dim=1)
    loaded = publish(tmp_path, encoder, TITLES, vectors=wrong).load()
    with pytest.raises(ArtifactRefused, match="do not match this encoder"):
        ServingModel.load(path=loaded.path, device="cpu", version=loaded.version, items=serving_index(encoder),
                          shipped=(loaded.item_texts, loaded.item_vectors))


def test_a_version_published_without_texts_still_loads(tmp_path, encoder):
    registry = Registry(tmp_path / "registry")
    registry.publish(encoder.module.state_dict(), base_dir=encoder.path, item_ids=list(TITLES),
                     item_vectors=encoder.encode(list(TITLES.values())), base_model=encoder.version)
    assert registry.load().item_texts is None
