"""Scoring, top-k with exclusions and untitled item vectors, by hand."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from coldstart.model.profile import popularity_blend
from coldstart.model.retrieval import item_text_vector, popularity_scores, score_items, top_k


def test_popularity_scores_log_scaled() -> None:
    got = popularity_scores(torch.tensor([0.0, 9.0, 99.0]))
    assert torch.allclose(got, torch.tensor([0.0, math.log(10) / math.log(100), 1.0]))
    assert torch.equal(popularity_scores(torch.zeros(3)), torch.zeros(3))
    assert popularity_scores(torch.zeros(0)).shape == (0,)


def test_score_items_by_hand() -> None:
    profiles = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    pop = torch.tensor([0.0, 1.0])
    got = score_items(profiles, items, pop, torch.tensor([0.0, 0.5]))
    assert torch.allclose(got, torch.tensor([[1.0, 0.6], [0.0, 0.5 * 0.8 + 0.5]]))


def test_user_without_events_gets_pure_popularity() -> None:
    torch.manual_seed(0)
    items = F.normalize(torch.randn(6, 4), dim=1)
    pop = popularity_scores(torch.tensor([5.0, 0.0, 50.0, 1.0, 2.0, 3.0]))
    scores = score_items(torch.zeros(1, 4), items, pop, popularity_blend(torch.tensor([0])))
    assert torch.allclose(scores[0], pop)
    _, idx = top_k(scores, 3)
    assert idx[0].tolist() == [2, 0, 5]


def test_top_k_excludes() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    exclude = torch.tensor([[True, False, True, False], [False, False, False, True]])
    vals, idx = top_k(scores, 2, exclude)
    assert idx.tolist() == [[1, 3], [2, 1]]
    assert torch.allclose(vals, torch.tensor([[0.8, 0.1], [0.3, 0.2]]))


def test_top_k_clamps_k_and_sorts_excluded_last() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.1]])
    vals, idx = top_k(scores, 10, torch.tensor([[False, True, False]]))
    assert vals.shape == idx.shape == (1, 3)
    assert idx.tolist() == [[0, 2, 1]] and vals[0, -1] == float("-inf")


def test_item_text_vector_weighted_mean() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = item_text_vector(q, torch.tensor([1.0, 1.0]))
    assert torch.allclose(got, torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.equal(item_text_vector(q, torch.zeros(2)), torch.zeros(2))
