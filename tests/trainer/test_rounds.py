"""fine_tune on the real MiniLM weights (CPU, a few steps) and its sampling helpers."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from coldstart.model.encoder import TextEncoder
from coldstart.trainer.rounds import draw_batch, encode_texts, fine_tune, importance_correction, info_nce

COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "gold"]
THINGS = ["kettle", "router", "stapler", "headset", "monitor", "drill", "tent", "blender"]


def make_pairs(n: int = 64, seed: int = 0) -> pa.Table:
    """Synthetic pairs whose item texts are opaque codes, so the base model starts far from solving them."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        colour, thing = COLOURS[i % 8], THINGS[(i // 8) % 8]
        rows.append({"sample_id": f"e{i}", "context": f"{colour} {thing}", "item_id": f"sku{i}",
                     "item_text": f"product code {i * 37 % 101} series {chr(97 + i % 26)}",
                     "weight": float(torch.rand(1, generator=g)) + 0.1, "ts": 1.7e9 + i})
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


def full_loss(module, encoder: TextEncoder, pairs: pa.Table) -> float:
    q = encode_texts(module, encoder.tokenizer, pairs.column("context").to_pylist())
    v = encode_texts(module, encoder.tokenizer, pairs.column("item_text").to_pylist())
    return float(info_nce(q, v, pairs.column("item_id").to_pylist()))


@pytest.mark.model
def test_a_few_steps_reduce_the_loss_and_leave_the_serving_encoder_untouched(encoder: TextEncoder) -> None:
    pairs = make_pairs(32)
    before_weights = {k: v.clone() for k, v in encoder.module.state_dict().items()}
    before = full_loss(encoder.module, encoder, pairs)
    result = fine_tune(encoder, pairs, steps=4, batch_size=8, lr=2e-4, sampling="importance",
                       time_budget_s=60, seed=0)
    after = full_loss(result.module, encoder, pairs)
    assert result.steps == 4 and len(result.losses) == 4 and result.samples_per_s > 0
    assert after < before - 0.3, (before, after)
    assert all(p.requires_grad for p in result.module.parameters())
    assert result.module is not encoder.module and not result.module.training
    for name, tensor in encoder.module.state_dict().items():
        assert torch.equal(tensor, before_weights[name]), name
    assert not encoder.module.training


@pytest.mark.model
@pytest.mark.parametrize("sampling", ["weighted_loss", "uniform"])
def test_every_sampling_mode_trains(encoder: TextEncoder, sampling: str) -> None:
    result = fine_tune(encoder, make_pairs(16), steps=1, batch_size=8, lr=1e-5, sampling=sampling,
                       time_budget_s=60, seed=1)
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.losses)).all()


@pytest.mark.model
def test_the_time_budget_bounds_a_round(encoder: TextEncoder) -> None:
    result = fine_tune(encoder, make_pairs(16), steps=1000, batch_size=8, lr=1e-5, sampling="uniform",
                       time_budget_s=0.0, seed=0)
    assert result.steps == 0 and result.stopped_by_time


def test_importance_draws_follow_the_weights_and_carry_normalised_inverse_probabilities() -> None:
    weights = torch.tensor([1.0, 1.0, 2.0, 4.0])
    g = torch.Generator().manual_seed(0)
    idx, mult = draw_batch(weights, 20_000, "importance", g)
    freq = torch.bincount(idx, minlength=4).double() / idx.numel()
    torch.testing.assert_close(freq, weights.double() / weights.sum(), atol=0.01, rtol=0)
    p = weights / weights.sum()
    raw = 1.0 / (weights.numel() * p[idx])
    torch.testing.assert_close(mult, raw / raw.mean())
    assert mult.mean().item() == pytest.approx(1.0)
    # The correction makes the expectation uniform: E_p[f / (N p)] = mean(f).
    f = torch.tensor([3.0, -1.0, 5.0, 2.0])
    assert (f[idx] * raw).mean().item() == pytest.approx(f.mean().item(), abs=0.05)


def test_importance_correction_of_uniform_probabilities_is_one() -> None:
    torch.testing.assert_close(importance_correction(torch.full((5,), 0.1), 10), torch.ones(5))


def test_weighted_loss_draws_uniformly_without_replacement_and_weights_by_importance() -> None:
    weights = torch.tensor([1.0, 3.0, 2.0, 2.0])
    idx, mult = draw_batch(weights, 4, "weighted_loss", torch.Generator().manual_seed(0))
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(mult, (weights[idx] / weights.mean()).float())
    idx, mult = draw_batch(weights, 3, "uniform", torch.Generator().manual_seed(0))
    assert len(set(idx.tolist())) == 3 and torch.equal(mult, torch.ones(3))
    with pytest.raises(ValueError, match="sampling"):
        draw_batch(weights, 2, "bogus", torch.Generator())


def test_info_nce_masks_in_batch_copies_of_the_positive_item() -> None:
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1]]), dim=1)
    v = q.clone()
    distinct = info_nce(q, v, ["a", "b"])
    same = info_nce(q, v, ["a", "a"])  # the same item twice is not its own negative
    assert same.item() == pytest.approx(0.0, abs=1e-6) and distinct.item() > 0.1


@pytest.mark.model
def test_bf16_autocast_gives_the_same_first_loss_within_bf16_precision(encoder: TextEncoder) -> None:
    """bfloat16 (the CUDA default, opt-in on a CPU) changes the arithmetic, not the objective."""
    pairs = make_pairs(16)
    full = fine_tune(encoder, pairs, steps=1, batch_size=8, lr=1e-5, sampling="uniform", precision="float32")
    amp = fine_tune(encoder, pairs, steps=1, batch_size=8, lr=1e-5, sampling="uniform", precision="bfloat16")
    assert amp.first_loss == pytest.approx(full.first_loss, rel=0.03)
    assert amp.first_loss != full.first_loss  # the autocast did run (on a CPU too: COLDSTART_TRAINER_PRECISION)
    assert all(p.dtype == torch.float32 for p in amp.module.parameters())
