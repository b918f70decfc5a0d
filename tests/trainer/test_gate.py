"""The evaluation gate: holdout split, ranking metrics with the real encoder, and the publish decision."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest
import torch

from coldstart.model.encoder import TextEncoder
from hypothesis import given, settings, strategies as st

from coldstart.trainer.gate import (catalog_from, decide, evaluate, holdout_ranks, paired_standard_errors, ranking_metrics,
                                    split_holdout)

CATALOG = {
    "sku1": "xbox 360 console", "sku2": "office stapler", "sku3": "hdmi cable 6 ft",
    "sku4": "noise cancelling headphones", "sku5": "stainless steel kettle", "sku6": "wifi router",
    "sku7": "camping tent for four people", "sku8": "cordless power drill", "sku9": "kitchen blender",
    "sku10": "27 inch computer monitor", "sku11": "running shoes", "sku12": "espresso machine",
}
# Distractors, so that recall@10 means something (more than 10 candidates per query).
FILLER = {f"fill{i}": f"{a} {b}" for i, (a, b) in enumerate(
    (a, b) for a in ("vintage", "portable", "smart", "wooden", "leather", "solar")
    for b in ("lamp", "clock", "backpack", "chair", "speaker", "wallet", "umbrella"))}
CATALOG |= FILLER
QUERIES = {"sku1": "xbox console", "sku2": "stapler for the office", "sku3": "hdmi cable",
           "sku4": "headphones that cancel noise", "sku5": "electric kettle", "sku6": "wireless router",
           "sku7": "tent for camping", "sku8": "power drill", "sku9": "blender", "sku10": "pc monitor",
           "sku11": "shoes for running", "sku12": "coffee espresso maker"}


def make_holdout() -> pa.Table:
    return pa.Table.from_pylist([{"context": q, "item_id": i, "item_text": CATALOG[i], "ts": 1.7e9 + n}
                                 for n, (i, q) in enumerate(QUERIES.items())])


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


def test_split_holdout_keeps_the_most_recent_rows_apart() -> None:
    table = pa.table({"ts": [float(t) for t in (9, 1, 5, 3, 7, 2, 8, 4, 6, 0)]})
    train, holdout = split_holdout(table, 0.2)
    assert train.column("ts").to_pylist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert holdout.column("ts").to_pylist() == [8.0, 9.0]
    with pytest.raises(ValueError):
        split_holdout(table, 1.0)


def test_catalog_from_keeps_the_latest_text_per_item() -> None:
    table = pa.table({"item_id": ["a", "a", "b"], "item_text": ["new", "old", "bee"], "ts": [2.0, 1.0, 1.5]})
    assert catalog_from(table) == {"a": "new", "b": "bee"}


def test_ties_rank_against_the_target() -> None:
    from coldstart.trainer.gate import ranks_of

    items = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert ranks_of(torch.tensor([[1.0, 0.0]]), items, torch.tensor([0])).tolist() == [1]
    assert ranks_of(torch.tensor([[0.0, 1.0]]), items, torch.tensor([2])).tolist() == [0]


def test_ranking_metrics_by_hand() -> None:
    metrics = ranking_metrics(torch.tensor([0, 9, 10]))
    assert metrics["recall@10"] == pytest.approx(2 / 3)
    assert metrics["ndcg@10"] == pytest.approx((1.0 + 1 / torch.log2(torch.tensor(11.0)).item()) / 3)
    assert metrics["n"] == 3


def holdout_of(n: int, both: int, only_serving: int, only_candidate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate and serving ranks over ``n`` rows: ``both`` rows hit by both (rank 0), then rows only
    one of them hits; the rest both miss (rank 50)."""
    cand = [0] * both + [50] * only_serving + [0] * only_candidate
    serv = [0] * both + [0] * only_serving + [50] * only_candidate
    miss = [50] * (n - len(cand))
    return torch.tensor(cand + miss), torch.tensor(serv + miss)


def gate(cand_ranks: torch.Tensor, serv_ranks: torch.Tensor, z: float, tolerance: float = 0.005) -> bool:
    return decide(ranking_metrics(cand_ranks), ranking_metrics(serv_ranks), tolerance, z=z,
                  standard_errors=paired_standard_errors(cand_ranks, serv_ranks)).publish


def test_one_click_on_a_small_holdout_does_not_refuse_a_candidate() -> None:
    # The live run of stop 33: 24 vs 25 hits of 86 rows; the fixed tolerance (0.005) refused it on one click.
    cand, serv = holdout_of(86, both=22, only_serving=3, only_candidate=2)
    assert ranking_metrics(cand)["recall@10"] == pytest.approx(24 / 86)
    assert not gate(cand, serv, z=0.0)
    assert gate(cand, serv, z=1.0)


def test_a_real_loss_on_a_large_holdout_is_still_refused() -> None:
    # 60 clicks of 2,000 lost (0.03): the paired SE is ~0.007, so the margin (~0.012) does not cover it.
    cand, serv = holdout_of(2000, both=500, only_serving=130, only_candidate=70)
    se = paired_standard_errors(cand, serv)["recall@10"]
    assert 0.006 < se < 0.008
    assert not gate(cand, serv, z=1.0)
    # ... and the same rows a quarter as often: one SE covers what the fixed tolerance would refuse.
    cand, serv = holdout_of(500, both=125, only_serving=33, only_candidate=30)
    assert not gate(cand, serv, z=0.0) and gate(cand, serv, z=1.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=60),
       st.floats(0.0, 0.05), st.floats(0.0, 3.0))
def test_the_margin_only_widens_with_z_and_identical_models_always_ship(rows, tolerance, z) -> None:
    cand = torch.tensor([c for c, _ in rows])
    serv = torch.tensor([s for _, s in rows])
    if gate(cand, serv, z=0.0, tolerance=tolerance):  # what ships at z = 0 ships at any z
        assert gate(cand, serv, z=z, tolerance=tolerance)
    assert paired_standard_errors(serv, serv) == {"recall@10": 0.0, "ndcg@10": 0.0}
    assert gate(serv, serv, z=z, tolerance=tolerance)


@pytest.mark.model
def test_a_damaged_candidate_is_refused_with_a_reason(encoder: TextEncoder) -> None:
    holdout = make_holdout()
    serving = evaluate(encoder, None, holdout, CATALOG)
    assert serving["n"] == 12 and serving["recall@10"] > 0.9 and len(CATALOG) == 54
    broken = copy.deepcopy(encoder.module)
    with torch.no_grad():  # representation collapse: the last LayerNorm maps every token to its bias
        broken.encoder.layer[-1].output.LayerNorm.weight.zero_()
    candidate = evaluate(broken, encoder.tokenizer, holdout, CATALOG)
    assert candidate["recall@10"] == 0.0  # every item ties with the target: ties count against it
    decision = decide(candidate, serving, tolerance=0.01)
    assert not decision.publish and decision.outcome == "refused"
    assert "worse than serving" in decision.reason and "recall@10" in decision.reason
    # The default gate (one paired SE on top) refuses it too: it loses on every row, 12 of 12.
    se = paired_standard_errors(holdout_ranks(broken, encoder.tokenizer, holdout, CATALOG),
                                holdout_ranks(encoder, None, holdout, CATALOG))
    assert not decide(candidate, serving, tolerance=0.01, standard_errors=se, z=1.0).publish


@pytest.mark.model
def test_an_equal_candidate_is_published(encoder: TextEncoder) -> None:
    holdout = make_holdout()
    same = copy.deepcopy(encoder.module)
    candidate = evaluate(same, encoder.tokenizer, holdout, CATALOG)
    serving = evaluate(encoder, None, holdout, CATALOG)
    for key in ("recall@10", "ndcg@10"):
        assert candidate[key] == pytest.approx(serving[key], abs=1e-6)
    assert decide(candidate, serving, tolerance=0.0).publish
    slightly_worse = {**candidate, "ndcg@10": candidate["ndcg@10"] - 0.004}
    assert decide(slightly_worse, serving, tolerance=0.005).publish
    assert not decide(slightly_worse, serving, tolerance=0.001).publish


@pytest.mark.model
def test_holdout_items_missing_from_the_catalog_are_added(encoder: TextEncoder) -> None:
    partial = {k: v for k, v in CATALOG.items() if k != "sku12"}
    assert evaluate(encoder, None, make_holdout(), partial)["n"] == 12
    with pytest.raises(ValueError, match="not in the catalog"):
        evaluate(encoder, None, make_holdout(), partial, item_vectors=encoder.encode(list(partial.values())))


def test_an_empty_holdout_is_never_published() -> None:
    empty = {"recall@10": 0.0, "ndcg@10": 0.0, "n": 0}
    decision = decide(empty, empty, tolerance=1.0)
    assert not decision.publish and "empty holdout" in decision.reason
