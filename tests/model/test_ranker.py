"""The learned ranker: starts as the fixed blend it replaces, then learns which signal predicts clicks."""

from __future__ import annotations

import torch

from coldstart.model.profile import popularity_blend
from coldstart.model.ranker import FEATURES, INITIAL_SCALE, LinearRanker, feature_matrix
from coldstart.model.retrieval import score_items


def test_initial_weights_reproduce_the_fixed_blend():
    g = torch.Generator().manual_seed(0)
    n = 50
    items = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    profile = torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=1)
    pop = torch.rand(n, generator=g)
    memory = (torch.rand(n, generator=g) > 0.9).float()
    for n_events in (1, 3, 7):
        a = popularity_blend(torch.tensor([float(n_events)]))
        old = score_items(profile, items, pop, a)[0] + memory
        sig = {"profile_cos": (profile @ items.T)[0], "popularity": pop, "query_memory": memory,
               "last_cos": torch.rand(n, generator=g), "transition": torch.rand(n, generator=g)}
        new = LinearRanker().score(feature_matrix(sig, n_events, float(a[0])))
        assert torch.allclose(old * INITIAL_SCALE, new, atol=1e-5)  # the same ranking, a sharper softmax


def test_learns_that_transitions_predict_clicks_when_text_does_not():
    # A stream where the clicked item is the one with the strongest transition and cosine is noise.
    g = torch.Generator().manual_seed(1)
    ranker, fixed = LinearRanker(), LinearRanker()
    n = 40
    hits_fixed = hits_after = 0
    for step in range(300):
        sig = {"profile_cos": torch.rand(n, generator=g), "popularity": torch.rand(n, generator=g),
               "transition": torch.rand(n, generator=g) * 0.5}
        target = int(torch.randint(n, (1,), generator=g))
        sig["transition"][target] = 1.0
        feats = feature_matrix(sig, n_events=2, pop_weight=0.25)
        if step >= 200:
            hits_after += target in ranker.score(feats).topk(5).indices.tolist()
            hits_fixed += target in fixed.score(feats).topk(5).indices.tolist()
        ranker.learn_one(feats, target)
    w = dict(zip(FEATURES, ranker.weights.tolist()))
    assert w["transition"] > w["profile_cos_blend"]
    assert hits_after >= 95 and hits_fixed < 60, (hits_after, hits_fixed)


def test_state_round_trips_and_masked_candidates_get_no_mass():
    r = LinearRanker()
    feats = torch.rand(6, len(FEATURES), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([True, True, True, False, False, True])
    r.learn_one(feats, 1, mask=mask)
    assert torch.isfinite(r.weights).all()
    clone = LinearRanker.from_state(r.state_dict())
    assert torch.equal(clone.weights, r.weights) and clone.steps == r.steps == 1
