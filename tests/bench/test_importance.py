"""Protocol helpers of bench/importance.py on a tiny synthetic stream (no model, no real data)."""

from __future__ import annotations

from coldstart.replay import ReplayEvent

from coldstart.bench.importance import (
    Click,
    clicks_with_prior,
    history_contexts,
    inject_noise,
    learned_item_texts,
    prepare,
    split_by_time,
)


def search_click(user: str, ts: float, item: str, query: str) -> list[ReplayEvent]:
    return [ReplayEvent("search", user, {"user_id": user, "ts": ts, "query": query}, ts),
            ReplayEvent("click", user, {"user_id": user, "ts": ts + 1, "item_id": item, "query": query}, ts + 1)]


def stream() -> list[ReplayEvent]:
    """20 search->click pairs; queries of the last 20% of clicks are marked 'late'."""
    events = [ReplayEvent("item", "x", {"item_id": "x", "title": "t"}, 0.0)]
    for k in range(20):
        user = f"u{k % 4}"
        item = f"i{k % 5}"
        query = f"late q{k}" if k >= 16 else f"early q{k % 5}"
        events += search_click(user, 10.0 * k, item, query)
    return events


def test_prior_events_count_searches_and_clicks_of_the_same_user():
    clicks = clicks_with_prior(stream())
    assert len(clicks) == 20
    # user u0 clicks at k = 0, 4, 8, ...: each pair adds a search and a click before the next one.
    u0 = [c.prior for c in clicks if c.user == "u0"]
    assert u0 == [1, 3, 5, 7, 9]
    events = [ReplayEvent("click", "a", {"user_id": "a", "ts": t, "item_id": "i"}, t) for t in (1.0, 2.0, 3.0)]
    events.insert(1, ReplayEvent("click", "b", {"user_id": "b", "ts": 1.5, "item_id": "i"}, 1.5))
    assert [(c.user, c.prior) for c in clicks_with_prior(events)] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]


def test_split_by_time_and_item_texts_do_not_leak_test_queries():
    clicks = clicks_with_prior(stream())
    train, test = split_by_time(list(reversed(clicks)))
    assert len(train) == 16 and len(test) == 4
    assert max(c.ts for c in train) < min(c.ts for c in test)
    texts = learned_item_texts(train)
    assert all("late" not in t for t in texts.values())
    prep = prepare("synthetic", clicks, None, noise=0.0, max_train=100, max_test=100, max_prior=100)
    assert prep.test and all("late" not in prep.catalog[c.item] for c, _ in prep.test)
    assert all(c.ts < min(t.ts for t, _ in prep.test) for c, _ in prep.train)


def test_item_text_is_top_queries_by_count():
    clicks = [Click("u", float(t), "a", 0, q) for t, q in enumerate(["x", "y", "y", "z", "z", "z", "w"])]
    assert learned_item_texts(clicks, top=3) == {"a": "z ; y ; x"}


def test_noise_replaces_exactly_the_share_with_other_items():
    clicks = [Click(f"u{k}", float(k), f"i{k % 7}", 0, "q") for k in range(200)]
    catalog = [f"i{k}" for k in range(7)]
    noisy = inject_noise(clicks, 0.2, catalog, seed=3)
    changed = [(a, b) for a, b in zip(clicks, noisy) if b.noisy]
    assert len(changed) == 40
    assert all(a.item != b.item and b.item in catalog for a, b in changed)
    assert all(a == b for a, b in zip(clicks, noisy) if not b.noisy)
    assert [(c.user, c.ts, c.query) for c in noisy] == [(c.user, c.ts, c.query) for c in clicks]
    assert inject_noise(clicks, 0.0, catalog) == clicks
    assert noisy == inject_noise(clicks, 0.2, catalog, seed=3)  # deterministic


def test_prepare_with_noise_touches_only_training_clicks():
    clicks = clicks_with_prior(stream())
    prep = prepare("synthetic", clicks, None, noise=0.25, max_train=100, max_test=100, max_prior=100)
    assert prep.stats["train_clicks"] == 16
    assert sum(c.noisy for c, _ in prep.train) == 4
    assert not any(c.noisy for c, _ in prep.test)


def test_history_contexts_use_only_previous_items_most_recent_first():
    titles = {"a": "A", "b": "B", "c": "C", "d": "D"}
    clicks = [Click("u", 1.0, "a", 0), Click("v", 2.0, "d", 0), Click("u", 3.0, "b", 1),
              Click("u", 4.0, "c", 2), Click("u", 5.0, "d", 3), Click("u", 6.0, "a", 4)]
    assert history_contexts(clicks, titles, n=3) == ["", "", "A", "B ; A", "C ; B ; A", "D ; C ; B"]


def test_prepare_test_set_keeps_users_with_one_to_five_prior_events():
    titles = {f"i{k}": f"title {k}" for k in range(5)}
    clicks = [Click(f"u{k % 3}", float(k), f"i{k % 5}", k // 3) for k in range(60)]
    prep = prepare("synthetic", clicks, titles, noise=0.0, max_train=100, max_test=100)
    assert prep.stats["test_clicks"] == 12
    assert prep.test == []  # the last 20% of this stream has priors 16..19 only
    late = [Click(f"u{k % 3}", 100.0 + k, "i1", k % 7) for k in range(60)]
    prep = prepare("synthetic", clicks + late, titles, max_train=1000, max_test=1000)
    assert prep.test and {c.prior for c, _ in prep.test} == {1, 2, 3, 4, 5}
    assert prep.stats["test_eligible"] == len(prep.test)


def test_estimators_bench_runs_every_arm_and_damps_injected_noise_on_a_tiny_problem() -> None:
    """Clustered synthetic embeddings, 20% of targets replaced: curves for every (estimator, sampling)
    arm, summary rows, and the rank-based noise line weighs the replaced clicks below the genuine ones."""
    import torch
    import torch.nn.functional as F

    from coldstart.bench.estimators import COLUMNS, arms, run_estimators, summarise

    g = torch.Generator().manual_seed(0)
    items = F.normalize(torch.randn(40, 16, generator=g), dim=1)

    def condition(noise: float) -> dict:
        target = torch.randint(40, (600,), generator=g)
        ctx = F.normalize(items[target] + 0.3 * torch.randn(600, 16, generator=g), dim=1)
        noisy = torch.rand(600, generator=g) < noise
        target = torch.where(noisy, torch.randint(40, (600,), generator=g), target)
        test_target = torch.randint(40, (100,), generator=g)
        test_ctx = F.normalize(items[test_target] + 0.3 * torch.randn(100, 16, generator=g), dim=1)
        return {"items": items, "ctx": ctx, "target": target, "test_ctx": test_ctx,
                "test_target": test_target, "noisy": noisy, "prior": torch.ones(600)}

    per = {f"noise_{s:g}": run_estimators(condition(s), steps=20, seeds=(0, 1), eval_every=10, log=lambda *_: None)
           for s in (0.0, 0.2)}
    rows = summarise(per, "synthetic", eval_every=10)
    assert len(rows) == len(arms()) and all(len(r) == len(COLUMNS) for r in rows)
    dirty = per["noise_0.2"]
    assert all(len(dirty[key]["curves"]) == 2 and len(dirty[key]["curves"][0]) == 2 for key in dirty["arms"])
    assert {dirty[k]["sampling"] for k in dirty["arms"]} == {"uniform", "importance", "weighted_loss"}
    w = dirty["rank_lfdr (weighted_loss)"]["weights"]
    assert w["noisy"]["mean"] < 0.5 * w["genuine"]["mean"], w
    o = dirty["oracle (importance)"]["weights"]  # the ceiling: replaced clicks at the floor
    assert o["noisy"]["p90"] <= 0.1 * 1.5 + 1e-6 < o["genuine"]["p10"], o


def test_bench_weights_are_the_workers_click_weights() -> None:
    """The benchmark scores with the function the worker applies (one definition of every weight):
    loss_logn is importance_weight, unnormalised, with the cold factor."""
    import math

    import torch
    import torch.nn.functional as F

    from coldstart.bench.estimators import SCORING_BATCH, estimator_weights
    from coldstart.model.importance import NoiseLines, catalog_loss, click_weights, importance_weight

    g = torch.Generator().manual_seed(3)
    items = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    ctx = F.normalize(torch.randn(700, 8, generator=g), dim=1)
    target = torch.randint(30, (700,), generator=g)
    prior = torch.randint(0, 6, (700,), generator=g).float()
    loss = catalog_loss(ctx, items, target)
    got = estimator_weights("loss_logn", ctx, items, target, prior)
    assert torch.allclose(got.float(), importance_weight(loss, 30, prior))
    lines = NoiseLines()
    expected = torch.cat([click_weights("rank_lfdr", loss[p], prior[p], 30, context=ctx[p], item_vecs=items,
                                        target=target[p], lines=lines)
                          for p in (slice(0, SCORING_BATCH), slice(SCORING_BATCH, None))])
    assert torch.allclose(estimator_weights("rank_lfdr", ctx, items, target, prior).float(), expected)
    assert not math.isclose(float(got.mean()), 1.0, abs_tol=1e-3)  # not batch-normalised
