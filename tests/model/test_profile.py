"""Profile math on tiny hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coldstart.model.profile import popularity_blend, profile_vectors, recency_weights, top_contributors


def test_recency_halves_each_half_life() -> None:
    # Epoch seconds need float64: float32 resolves them to 128 s.
    ts = torch.tensor([1_700_000_000.0, 1_700_000_000.0 - 3600, 1_700_000_000.0 - 7200], dtype=torch.float64)
    w = recency_weights(ts, now=1_700_000_000.0, half_life_s=3600.0)
    assert torch.allclose(w, torch.tensor([1.0, 0.5, 0.25]))
    assert w.dtype == torch.float32


def test_recency_future_events_count_as_now() -> None:
    assert torch.equal(recency_weights(torch.tensor([10.0]), now=5.0, half_life_s=1.0), torch.ones(1))


def test_profile_by_hand() -> None:
    vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = profile_vectors(vecs, torch.tensor([3.0, 4.0]), torch.tensor([0, 0]), 1)
    assert torch.allclose(got, torch.tensor([[0.6, 0.8]]))


def test_profiles_of_many_users_equal_each_alone() -> None:
    torch.manual_seed(0)
    vecs = F.normalize(torch.randn(9, 16), dim=1)
    weights = torch.rand(9)
    owner = torch.tensor([0, 2, 0, 2, 2, 0, 3, 3, 0])
    together = profile_vectors(vecs, weights, owner, 4)
    for u in range(4):
        mine = owner == u
        alone = profile_vectors(vecs[mine], weights[mine], torch.zeros(int(mine.sum()), dtype=torch.long), 1)
        assert torch.allclose(together[u], alone[0], atol=1e-6)
    assert torch.equal(together[1], torch.zeros(16))  # no events: zero row
    norms = together[[0, 2, 3]].norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-6)


def test_profile_zero_weights_stay_zero() -> None:
    got = profile_vectors(torch.eye(2), torch.zeros(2), torch.tensor([0, 1]), 2)
    assert torch.equal(got, torch.zeros(2, 2))
    assert not torch.isnan(got).any()


def test_popularity_blend_starts_pure_and_decreases() -> None:
    n = torch.arange(0, 20)
    a = popularity_blend(n, prior_weight=0.5, half_events=2.0)
    assert float(a[0]) == 1.0
    assert float(a[2]) == pytest.approx(0.25)
    assert torch.all(a[1:] < a[:-1])


def test_top_contributors_shares() -> None:
    s = 1 / math.sqrt(2)
    vecs = torch.tensor([[1.0, 0.0], [s, s], [0.0, 1.0], [-1.0, 0.0]])
    weights = torch.tensor([1.0, 2.0, 1.0, 1.0])
    item = torch.tensor([1.0, 0.0])
    got = top_contributors(vecs, weights, item, k=3)
    total = 1.0 + 2 * s
    assert [i for i, _ in got] == [1, 0]  # event 2 adds nothing, event 3 pulls down
    assert got[0][1] == pytest.approx(2 * s / total) and got[1][1] == pytest.approx(1 / total)
    assert top_contributors(vecs[:0], weights[:0], item) == []
    assert top_contributors(vecs[3:], weights[3:], item) == []
