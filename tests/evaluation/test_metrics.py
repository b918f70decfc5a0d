"""Metric code against hand-computed cases."""

from __future__ import annotations

import math

import pytest

from coldstart.evaluation.metrics import (
    bootstrap_ci, coverage, mrr, ndcg_at_k, prior_group, rank_of, recall_at_k, summarize,
)


def test_recall_ndcg_mrr_by_hand():
    # ranks 1, 2, 5, 11 (outside the top 10) and a miss
    ranks = [1, 2, 5, 11, None]
    assert recall_at_k(ranks, 10) == pytest.approx(3 / 5)
    assert recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert ndcg_at_k(ranks, 10) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 5)
    # MRR counts every recorded rank, also one beyond K (the list holds what the method returned)
    assert mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 11) / 5)


def test_empty_inputs_are_nan_not_errors():
    assert math.isnan(recall_at_k([], 10))
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert summarize([], 10)["n"] == 0


def test_rank_of_and_coverage():
    assert rank_of(["x", "y", "z"], "z") == 3
    assert rank_of([], "z") is None
    assert coverage([["a", "b", "c"], ["a", "d"]], catalog_size=8, k=2) == pytest.approx(3 / 8)


def test_groups_match_the_issue():
    assert [prior_group(n) for n in range(8)] == ["0", "1", "2", "3-5", "3-5", "3-5", "6+", "6+"]
    with pytest.raises(ValueError):
        prior_group(-1)


def test_bootstrap_interval_contains_the_mean_and_is_deterministic():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(values, n_boot=500, seed=3)
    assert low < 0.3 < high
    assert (low, high) == bootstrap_ci(values, n_boot=500, seed=3)
    # about +-1.96 * sqrt(p(1-p)/n) = +-0.09
    assert 0.12 < high - low < 0.24


def test_summarize_counts_hits_and_misses():
    s = summarize([1, None, 3, 20], k=10, n_boot=100)
    assert (s["n"], s["hits"], s["misses"]) == (4, 2, 2)
    assert s["recall_ci"][0] <= s["recall"] <= s["recall_ci"][1]
