"""The learned ranker: starts as the fixed blend it replaces, then learns which signal predicts clicks."""

from __future__ import annotations

import pytest
import torch

from coldstart.model.profile import popularity_blend
from coldstart.model.ranker import FEATURES, INITIAL_SCALE, LinearRanker, feature_matrix, log_gap
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


def test_learns_along_the_gap_transitions_within_a_session_and_popularity_after_a_week():
    # Half the clicks come a minute after the user's last event and follow the transition, half a week
    # later and go to the popular item: no weight without the gap columns ranks both right.
    g = torch.Generator().manual_seed(3)
    ranker = LinearRanker()
    n = 40
    hits = {"minute": 0, "week": 0}
    for step in range(600):
        when, gap_s = ("minute", 60.0) if step % 2 else ("week", 7 * 86_400.0)
        sig = {"profile_cos": torch.rand(n, generator=g), "popularity": torch.rand(n, generator=g) * 0.5,
               "transition": torch.rand(n, generator=g) * 0.5}
        follow, popular = (int(i) for i in torch.randperm(n, generator=g)[:2])
        sig["transition"][follow], sig["popularity"][popular] = 1.0, 1.0
        target = follow if when == "minute" else popular
        feats = feature_matrix(sig, n_events=2, pop_weight=0.25, gap=log_gap(gap_s))
        if step >= 500:
            hits[when] += int(ranker.score(feats).argmax()) == target
        ranker.learn_one(feats, target)
    w = dict(zip(FEATURES, ranker.weights.tolist()))
    assert w["transition_x_gap"] < 0 < w["popularity_x_gap"], w
    assert hits["minute"] >= 45 and hits["week"] >= 45, hits  # of 50 each


def test_state_round_trips_and_masked_candidates_get_no_mass():
    r = LinearRanker()
    feats = torch.rand(6, len(FEATURES), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([True, True, True, False, False, True])
    r.learn_one(feats, 1, mask=mask)
    assert torch.isfinite(r.weights).all()
    clone = LinearRanker.from_state(r.state_dict())
    assert torch.equal(clone.weights, r.weights) and clone.steps == r.steps == 1


def test_item_biases_learn_what_the_signals_miss_and_survive_a_checkpoint(tmp_path):
    # Features are noise; one item is clicked half of the time: only its bias can say so.
    from coldstart.model.ranker import load_ranker, save_ranker

    g = torch.Generator().manual_seed(3)
    n, ids = 30, [f"item\n{i}é" for i in range(30)]  # ids may hold any character
    ranker, hits = LinearRanker(), 0
    for step in range(400):
        feats = feature_matrix({"profile_cos": torch.rand(n, generator=g)}, n_events=1, pop_weight=0.0)
        target = 7 if step % 2 == 0 else int(torch.randint(n, (1,), generator=g))
        offsets = ranker.offsets_of(ids)
        if step >= 300:
            hits += int(ranker.score(feats, offsets).argmax()) == 7
        ranker.learn_one(feats, target, offsets=offsets, item_ids=ids)
        assert ids[target] in ranker.bias_changed
    assert ranker.item_bias[ids[7]] > max(v for k, v in ranker.item_bias.items() if k != ids[7])
    assert hits >= 90, hits  # the blend without biases ranks item 7 first about 1 time in 30
    save_ranker(ranker, tmp_path / "ranker.safetensors")
    loaded, why = load_ranker(tmp_path / "ranker.safetensors")
    assert why == "loaded" and loaded.item_bias == pytest.approx(ranker.item_bias)
    assert loaded.item_bias_sq == pytest.approx(ranker.item_bias_sq)


def test_a_checkpoint_without_item_biases_still_loads(tmp_path):
    """A ranker saved before the biases existed (same features): its weights, and no biases."""
    from safetensors.torch import save_file

    from coldstart.model.ranker import load_ranker

    r = LinearRanker()
    r.weights[3] = 2.0
    old = {k: v for k, v in r.state_dict().items() if not k.startswith("item_bias")}
    save_file(old, str(tmp_path / "ranker.safetensors"), metadata={"features": ",".join(FEATURES)})
    loaded, why = load_ranker(tmp_path / "ranker.safetensors")
    assert why == "loaded" and float(loaded.weights[3]) == 2.0 and loaded.item_bias == {}


def test_a_checkpoint_from_before_a_feature_was_added_keeps_what_it_learned(tmp_path):
    """A worker upgraded to a coldstart with one more feature restarts from its checkpoint: every learned
    weight and item bias kept under its feature's name, the new feature starting as a fresh ranker's."""
    from safetensors.torch import save_file

    from coldstart.model.ranker import load_ranker

    added = "click_query_memory"
    old_features = [f for f in FEATURES if f != added]
    r = LinearRanker()
    r.weights = torch.arange(len(FEATURES), dtype=torch.float32) + 1.0
    r.item_bias, r.item_bias_sq = {"sku1": 0.7}, {"sku1": 3.0}
    state = r.state_dict()
    keep = torch.tensor([FEATURES.index(f) for f in old_features])
    state["weights"], state["grad_sq"] = state["weights"][keep], state["grad_sq"][keep] * 2.0
    save_file(state, str(tmp_path / "ranker.safetensors"), metadata={"features": ",".join(old_features)})
    loaded, why = load_ranker(tmp_path / "ranker.safetensors")
    assert loaded is not None and why.endswith(f"features added since it was saved: {added}"), why
    for name in old_features:
        assert float(loaded.weights[FEATURES.index(name)]) == float(r.weights[FEATURES.index(name)]), name
        assert float(loaded.grad_sq[FEATURES.index(name)]) == 2.0
    assert float(loaded.weights[FEATURES.index(added)]) == 0.0 and float(loaded.grad_sq[FEATURES.index(added)]) == 1.0
    assert loaded.item_bias == {"sku1": pytest.approx(0.7)}
    # a checkpoint that reads a feature this code no longer computes is not used
    gone = old_features[:-1] + ["a_signal_removed_since"]
    save_file(state, str(tmp_path / "ranker.safetensors"), metadata={"features": ",".join(gone)})
    assert load_ranker(tmp_path / "ranker.safetensors") == (None, "learned over another list of features")


def test_no_item_biases_when_turned_off():
    r = LinearRanker(bias_lr=0.0)
    feats = torch.rand(5, len(FEATURES), generator=torch.Generator().manual_seed(4))
    r.learn_one(feats, 2, item_ids=list("abcde"))
    assert r.item_bias == {} and r.bias_changed == []


def test_the_metric_learns_which_dimensions_of_the_text_predict_clicks(tmp_path):
    # Each user's click matches their profile on the first 4 dimensions; the other 12 are the same
    # noise for every candidate's cosine: plain cosine ranks the clicked item by chance, the metric
    # learns to read the 4 dimensions that carry taste.
    from coldstart.model.ranker import load_ranker, save_ranker

    g = torch.Generator().manual_seed(5)
    n, d = 40, 16
    ranker, hits_after, hits_cos = LinearRanker(metric_lr=0.5), 0, 0
    for step in range(600):
        items = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
        target = int(torch.randint(n, (1,), generator=g))
        profile = torch.randn(d, generator=g)
        profile[:4] = items[target, :4] * 4  # taste: the first 4 dimensions point at the clicked item
        profile = torch.nn.functional.normalize(profile, dim=0)
        feats = feature_matrix({"profile_cos": items @ profile}, n_events=3, pop_weight=0.0)
        q = ranker.metric_query(profile)
        offsets = items @ q if q is not None else torch.zeros(n)
        if step >= 500:
            hits_after += target in ranker.score(feats, offsets).topk(3).indices.tolist()
            hits_cos += target in ranker.score(feats).topk(3).indices.tolist()
        ranker.learn_one(feats, target, offsets=offsets, metric_inputs=(items, profile))
    assert ranker.metric[:4].mean() > 2 * ranker.metric[4:].abs().mean(), ranker.metric  # 8.7 vs 2.6
    assert hits_after > hits_cos + 15, (hits_after, hits_cos)
    save_ranker(ranker, tmp_path / "ranker.safetensors")
    loaded, why = load_ranker(tmp_path / "ranker.safetensors", metric_lr=0.5)
    assert why == "loaded" and torch.equal(loaded.metric, ranker.metric)
    assert torch.equal(loaded.metric_sq, ranker.metric_sq)


def test_no_metric_when_turned_off():
    r = LinearRanker()
    items = torch.rand(5, 4, generator=torch.Generator().manual_seed(6))
    r.learn_one(torch.rand(5, len(FEATURES)), 2, metric_inputs=(items, items[2]))
    assert r.metric is None and r.metric_query(items[0]) is None


def test_text_gain_keeps_the_ranking_when_a_new_version_squeezes_the_cosines():
    # A fine-tuned version that keeps the order of the cosines but squeezes them (measured: one round
    # halved their spread) ranks as the old one did once the text weights are rescaled by text_gain,
    # and falls back to popularity without it.
    from coldstart.model.ranker import TEXT_FEATURES, text_gain

    g = torch.Generator().manual_seed(7)
    n, d, lam = 60, 8, 0.4
    old = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    # cos_new = lam * cos_old + (1 - lam), exactly: an extra dimension every vector shares
    new = torch.cat([old * lam ** 0.5, torch.full((n, 1), (1 - lam) ** 0.5)], dim=1)
    old = torch.cat([old, torch.zeros(n, 1)], dim=1)
    assert text_gain(old, new) == pytest.approx(1 / lam, rel=1e-4) and text_gain(old, old) == pytest.approx(1.0)
    learned = LinearRanker()
    learned.weights[FEATURES.index("max_cos")] = 4.0  # a ranker that has learned to read the text
    learned.weights[FEATURES.index("popularity")] = 1.0
    pop = torch.rand(n, generator=g)
    rescaled = LinearRanker.from_state(learned.state_dict())
    rescaled.rescale_text(text_gain(old, new))
    for user in range(10):
        events = torch.randint(n, (3,), generator=g)

        def feats(vecs):
            cos = vecs @ vecs[events].T
            return feature_matrix({"profile_cos": cos.mean(dim=1), "max_cos": cos.max(dim=1).values,
                                   "last_cos": cos[:, -1], "popularity": pop}, n_events=3, pop_weight=0.25)

        before = learned.score(feats(old)).topk(10).indices
        assert torch.equal(rescaled.score(feats(new)).topk(10).indices, before)
    assert not torch.equal(learned.score(feats(new)).topk(10).indices, before)  # unscaled: popularity wins
    untouched = [i for i, name in enumerate(FEATURES) if name not in TEXT_FEATURES]
    assert torch.equal(rescaled.weights[untouched], learned.weights[untouched])
    with pytest.raises(ValueError, match="positive"):
        rescaled.rescale_text(0.0)
