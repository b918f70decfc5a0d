"""The evaluation gate: holdout split, ranking metrics with the real encoder, and the publish decision."""

from __future__ import annotations

import copy

import pyarrow as pa
import pytest
import torch

from coldstart.model.encoder import TextEncoder
from coldstart.trainer.gate import catalog_from, decide, evaluate, ranking_metrics, split_holdout

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
