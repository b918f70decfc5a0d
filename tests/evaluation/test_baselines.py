"""Baselines on tiny hand-made streams, and one check suite shared by every baseline (river-style)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from coldstart.evaluation.baselines import (
    DecayedPopularity, ItemKNN, QueryMemory, TextVectors, Transitions, ZeroShotProfile, default_baselines,
)
from coldstart.replay import ReplayEvent


def click(user, item, ts=0.0, query=None):
    value = {"event_id": f"c-{user}-{item}-{ts}", "user_id": user, "ts": ts, "item_id": item}
    if query:
        value["query"] = query
    return ReplayEvent("click", user, value, ts)


def search(user, query, ts=0.0):
    return ReplayEvent("search", user, {"event_id": f"s-{user}-{ts}", "user_id": user, "ts": ts, "query": query}, ts)


def item(item_id, title):
    return ReplayEvent("item", item_id, {"item_id": item_id, "title": title}, 0.0)


class FakeEncoder:
    """Bag-of-words vectors over a fixed vocabulary: deterministic, no model download."""

    VOCAB = ("halo", "fifa", "forza", "lamp", "stapler", "desk", "ink", "game")
    dim = len(VOCAB)

    def encode(self, texts):
        import torch

        rows = []
        for text in texts:
            v = np.array([float(w in text.lower().split()) for w in self.VOCAB], dtype=np.float32)
            v = v / max(np.linalg.norm(v), 1e-12)
            rows.append(v)
        return torch.tensor(np.stack(rows))


@pytest.fixture
def vectors():
    return TextVectors(FakeEncoder())


def test_transitions_predict_the_item_after_a_seen_pair():
    tr = Transitions()
    for e in [click("u1", "a", 1), click("u1", "b", 2), click("u2", "c", 3)]:
        tr.learn_one(e)
    tr.learn_one(click("u3", "a", 4))
    assert tr.rank("u3", None, 1) == ["b"]
    # a user without a known last item gets popularity
    assert set(tr.rank("nobody", None, 3)) == {"a", "b", "c"}


def test_item_knn_uses_co_occurrence():
    knn = ItemKNN()
    for e in [click("u1", "x", 1), click("u1", "y", 2), click("u2", "z", 3), click("u2", "z2", 4),
              click("u3", "x", 5)]:
        knn.learn_one(e)
    assert knn.rank("u3", None, 1) == ["y"]


def test_query_memory_returns_the_item_clicked_after_the_same_query(vectors):
    zs = ZeroShotProfile(vectors, blend=True)
    memory = QueryMemory(zs, learn_backoff=True)
    for e in [search("u1", "Halo 3", 1), click("u1", "h3", 2, query="Halo 3"),
              search("u2", "fifa", 3), click("u2", "f1", 4, query="fifa")]:
        memory.learn_one(e)
    memory.learn_one(search("u9", "halo  3!", 5))
    assert memory.rank("u9", "halo  3!", 2)[0] == "h3"
    # unknown query: backs off to the zero-shot profile (the user searched "fifa game")
    memory.learn_one(search("u8", "fifa game", 6))
    assert memory.rank("u8", "fifa game", 1) == ["f1"]


def test_popularity_decays_in_event_time():
    pop = DecayedPopularity(half_life_s=1.0)
    for e in [click("u1", "old", 0), click("u2", "old", 0), click("u3", "old", 0), click("u4", "new", 5)]:
        pop.learn_one(e)
    assert pop.rank("x", None, 2) == ["new", "old"]
    norm = pop.normalized()
    assert norm["new"] == pytest.approx(1.0) and 0 < norm["old"] < 0.3


def test_zero_shot_profile_follows_titles_and_queries(vectors):
    zs = ZeroShotProfile(vectors)
    for e in [item("i1", "desk lamp"), item("i2", "stapler"), item("i3", "ink")]:
        zs.learn_one(e)
    zs.learn_one(search("u", "lamp for my desk", 1))
    assert zs.rank("u", None, 1) == ["i1"]
    # an item without a title learns its text from the queries of past clicks
    zs.learn_one(click("v", "sku9", 2, query="forza game"))
    zs.learn_one(search("w", "forza", 3))
    assert zs.rank("w", None, 1) == ["sku9"]


def stream():
    return [item("i1", "desk lamp"), item("i2", "ink"),
            search("u1", "halo", 1), click("u1", "a", 2, query="halo"),
            search("u2", "fifa", 3), click("u2", "b", 4, query="fifa"),
            click("u1", "b", 5), search("u3", "halo", 6), click("u3", "a", 7, query="halo"),
            click("u2", "a", 8)]


@pytest.mark.parametrize("make", [
    lambda v: DecayedPopularity(), lambda v: ItemKNN(), lambda v: Transitions(),
    lambda v: ZeroShotProfile(v), lambda v: ZeroShotProfile(v, blend=True),
    lambda v: QueryMemory(DecayedPopularity()),
], ids=["popularity", "item_knn", "transitions", "zeroshot", "zeroshot_pop", "query_memory"])
def test_every_baseline_is_online_deterministic_and_leak_free(make, vectors):
    events = stream()
    a, b = make(vectors), make(vectors)
    ranks_a, ranks_b = [], []
    for e in events:
        before = copy.deepcopy(e.value)
        if e.type == "click":
            # rank before learn_one: the clicked item of a brand new item id cannot be known yet
            ranks_a.append(a.rank(e.key, None, 3))
            ranks_b.append(b.rank(e.key, None, 3))
        a.learn_one(e)
        b.learn_one(e)
        assert e.value == before, "learn_one must not mutate its input"
    assert ranks_a == ranks_b
    assert "a" not in ranks_a[0]  # the first click on "a" is ranked before anything taught "a"
    # ranking twice without learning changes nothing (rank has no side effects)
    assert a.rank("u1", "halo", 3) == a.rank("u1", "halo", 3)


def test_no_future_leak_the_first_click_on_an_item_is_never_predicted():
    pop = DecayedPopularity()
    pop.learn_one(click("u1", "a", 1))
    assert "fresh" not in pop.rank("u2", None, 10)
    pop.learn_one(click("u2", "fresh", 2))
    assert "fresh" in pop.rank("u3", None, 10)


def test_default_baselines_names(vectors):
    names = [b.name for b in default_baselines(vectors, with_queries=True)]
    assert names == ["popularity", "item_knn", "transitions", "zeroshot", "zeroshot_pop", "query_memory"]
    assert "query_memory" not in [b.name for b in default_baselines(None, with_queries=False)]
