"""TextEncoder and EmbeddingCache against the real packaged MiniLM weights, loaded offline on the CPU."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from coldstart.model.encoder import (EmbeddingCache, TextEncoder, _file_sha256, default_model_path, resolve_device,
                           weights_version)

pytestmark = pytest.mark.model

QUERIES = ["cheap xbox games", "inexpensive xbox 360 games", "office stapler", "hdmi cable 6ft",
           "a much longer query about noise cancelling wireless headphones with a long battery life"]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


class CountingEncoder(TextEncoder):
    """The real encoder, recording every ``encode`` call (shares the loaded module; no second load)."""

    calls: list[list[str]]

    @classmethod
    def wrap(cls, real: TextEncoder, version: str | None = None) -> "CountingEncoder":
        obj = cls.__new__(cls)
        obj.__dict__.update(real.__dict__)
        obj.calls = []
        if version is not None:
            obj.version = version
        return obj

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        self.calls.append(list(texts))
        return super().encode(texts, batch_size)


def test_loads_packaged_weights_offline(encoder: TextEncoder) -> None:
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert (default_model_path() / "model.safetensors").is_file()
    assert encoder.dim == 384
    assert encoder.device == torch.device("cpu")
    assert not encoder.module.training
    assert encoder.version.startswith("base-") and len(encoder.version) == len("base-") + 12


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_encode_shape_and_unit_rows(encoder: TextEncoder) -> None:
    vecs = encoder.encode(QUERIES)
    assert vecs.shape == (len(QUERIES), 384) and vecs.dtype == torch.float32
    assert torch.allclose(vecs.norm(dim=1), torch.ones(len(QUERIES)), atol=1e-5)
    assert not vecs.is_inference()  # usable as a constant in the trainer's autograd graph


def test_paraphrase_closer_than_unrelated(encoder: TextEncoder) -> None:
    cheap, inexpensive, stapler = encoder.encode(QUERIES[:3])
    assert float(cheap @ inexpensive) > float(cheap @ stapler) + 0.2


def test_order_preserved_and_batching_invariant(encoder: TextEncoder) -> None:
    batched = encoder.encode(QUERIES, batch_size=2)
    one_by_one = torch.cat([encoder.encode([q]) for q in QUERIES])
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    reversed_ = encoder.encode(QUERIES[::-1])
    assert torch.allclose(reversed_.flip(0), batched, atol=1e-5)


def test_empty_input(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    assert EmbeddingCache(4).encode(encoder, []).shape == (0, 384)


def test_version_stable_across_loads(encoder: TextEncoder) -> None:
    _file_sha256.cache_clear()  # hash the file again, not the memoised digest
    again = TextEncoder(device="cpu")
    assert again.version == encoder.version == weights_version(default_model_path())
    assert torch.allclose(again.encode(QUERIES[:2]), encoder.encode(QUERIES[:2]), atol=1e-6)


def test_forward_pooled_has_grad_and_matches_encode(encoder: TextEncoder) -> None:
    batch = encoder.tokenize(QUERIES[:2])
    pooled = encoder.forward_pooled(batch)
    assert pooled.requires_grad
    assert torch.allclose(pooled.detach(), encoder.encode(QUERIES[:2]), atol=1e-5)


def test_bfloat16_is_float32_within_the_shipped_vector_tolerance(encoder: TextEncoder) -> None:
    # Opt-in (Settings.encoder_precision): the transformer under bf16 autocast, pooling in float32. The
    # rows stay float32 unit vectors, each within cos 0.999 of float32's, so a paraphrase still ranks
    # above an unrelated query.
    bf16 = TextEncoder(device="cpu", precision="bfloat16")
    assert bf16.version == encoder.version  # one vector space: the precision is not a model version
    vecs = bf16.encode(QUERIES)
    assert vecs.dtype == torch.float32
    torch.testing.assert_close(vecs.norm(dim=1), torch.ones(len(QUERIES)), atol=1e-5, rtol=0)
    assert float((vecs * encoder.encode(QUERIES)).sum(dim=1).min()) > 0.999
    assert float(vecs[0] @ vecs[1]) > float(vecs[0] @ vecs[2])


def test_an_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="'int8' is not one of float32, bfloat16"):
        TextEncoder(device="cpu", precision="int8")


def test_cache_counts_and_encodes_each_distinct_text_once(encoder: TextEncoder) -> None:
    counting = CountingEncoder.wrap(encoder)
    cache = EmbeddingCache(capacity=16)
    texts = ["office stapler", "cheap xbox games", "office stapler"]
    first = cache.encode(counting, texts)
    assert counting.calls == [["office stapler", "cheap xbox games"]]
    assert (cache.misses, cache.hits, len(cache)) == (2, 1, 2)
    assert torch.allclose(first, encoder.encode(texts), atol=1e-5)

    second = cache.encode(counting, ["cheap xbox games", "hdmi cable 6ft", "office stapler"])
    assert counting.calls[1:] == [["hdmi cable 6ft"]]  # all misses of a call in one encode call
    assert (cache.misses, cache.hits) == (3, 3)
    assert torch.equal(second[0], first[1]) and torch.equal(second[2], first[0])

    cache.encode(counting, ["office stapler"])
    assert len(counting.calls) == 2 and cache.hits == 4


def test_cache_returns_copies(encoder: TextEncoder) -> None:
    cache = EmbeddingCache(capacity=4)
    out = cache.encode(encoder, ["hdmi cable 6ft"])
    out.zero_()
    assert float(cache.encode(encoder, ["hdmi cable 6ft"]).norm()) == pytest.approx(1.0, abs=1e-5)


def test_cache_capacity_is_lru(encoder: TextEncoder) -> None:
    counting = CountingEncoder.wrap(encoder)
    cache = EmbeddingCache(capacity=2)
    cache.encode(counting, ["a", "b"])
    cache.encode(counting, ["a"])       # a is now the most recently used
    cache.encode(counting, ["c"])       # evicts b
    assert len(cache) == 2
    cache.encode(counting, ["a", "b"])
    assert counting.calls[-1] == ["b"]
    big = cache.encode(counting, ["w", "x", "y", "z"])  # a call larger than the capacity still answers
    assert big.shape == (4, 384) and len(cache) == 2


def test_cache_rows_reused_after_eviction_hold_their_own_texts_vectors(encoder: TextEncoder) -> None:
    # The cache keeps its vectors as rows of one matrix: an evicted text's row goes to the next text,
    # and every answer, hit or miss, mixed in one call and repeated, must be that text's own vector.
    cache = EmbeddingCache(capacity=3)
    texts = QUERIES + ["usb hub", "desk lamp"]
    for start in range(len(texts)):
        cache.encode(encoder, texts[start:start + 2])
    mixed = [texts[-1], texts[0], texts[-1], texts[-2], texts[1]]
    torch.testing.assert_close(cache.encode(encoder, mixed), encoder.encode(mixed), atol=1e-6, rtol=0)
    assert len(cache) == 3


def test_cache_keys_on_model_version(encoder: TextEncoder) -> None:
    cache = EmbeddingCache(capacity=8)
    old = CountingEncoder.wrap(encoder, version="v0001")
    new = CountingEncoder.wrap(encoder, version="v0002")
    cache.encode(old, ["office stapler"])
    cache.encode(new, ["office stapler"])
    assert new.calls == [["office stapler"]]
    assert (cache.misses, cache.hits, len(cache)) == (2, 0, 2)


def test_cache_rejects_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        EmbeddingCache(0)
