"""The built-in site simulator: deterministic, causal, interest-driven, mostly cold-start users."""

from __future__ import annotations

from collections import Counter

import pytest

from coldstart.replay import SiteSimulator

N_EVENTS = 3000


@pytest.fixture(scope="module")
def run():
    sim = SiteSimulator(seed=7)
    return sim, list(sim.events(N_EVENTS))


def test_same_seed_same_stream_other_seed_differs(run):
    _, events = run
    assert events == list(SiteSimulator(seed=7).events(N_EVENTS))
    assert events != list(SiteSimulator(seed=8).events(N_EVENTS))


def test_counts_ids_and_time_order(run):
    _, events = run
    activity = [e for e in events if e.type != "item"]
    assert len(activity) == N_EVENTS
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    assert len({e.value["event_id"] for e in activity}) == N_EVENTS
    assert all(e.key == e.value["user_id"] for e in activity)


def test_items_are_announced_before_any_click(run):
    sim, events = run
    announced: set[str] = set()
    for e in events:
        if e.type == "item":
            assert e.value["title"] and e.value["category"]
            announced.add(e.key)
        elif e.type == "click":
            assert e.value["item_id"] in announced
    assert len(announced) > sim.n_items  # new items appeared during the run
    assert [i.item_id for i in sim.catalog(N_EVENTS)] == sorted(announced)


def test_users_mostly_click_their_interests(run):
    sim, events = run
    category = {item.item_id: item.category for item in sim.catalog(N_EVENTS)}
    interests = sim.interests()
    clicks = [e for e in events if e.type == "click"]
    on_interest = sum(category[e.value["item_id"]] in interests[e.key] for e in clicks)
    assert on_interest / len(clicks) > 0.7


def test_queries_use_words_of_the_clicked_category(run):
    sim, events = run
    category = {item.item_id: item.category for item in sim.catalog(N_EVENTS)}
    titles = {}
    for item in sim.catalog(N_EVENTS):
        titles.setdefault(item.category, set()).update(item.title.lower().split())
    clicks = [e for e in events if e.type == "click" and "query" in e.value]
    assert clicks
    assert all(set(e.value["query"].split()) <= titles[category[e.value["item_id"]]] for e in clicks)


def test_most_users_are_cold(run):
    _, events = run
    per_user = Counter(e.key for e in events if e.type != "item")
    assert sum(n <= 3 for n in per_user.values()) / len(per_user) > 0.7
    assert max(per_user.values()) > 3  # yet some users come back
