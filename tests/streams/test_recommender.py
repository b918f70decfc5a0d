"""The read path on its own: the ranker's signals for one user, computed from the real MiniLM vectors and
the stream statistics, and what the ranker learns from them. No broker."""

from __future__ import annotations

import itertools

import pytest
import torch

from coldstart.contract import ClickEvent, SearchEvent
from coldstart.model.ranker import FEATURES
from coldstart.model.serving import ServingModel
from coldstart.settings import Settings
from coldstart.streams.processor import BatchProcessor
from coldstart.streams.recommender import Recommender

pytestmark = pytest.mark.model

TS = 1_700_000_000.0
_ids = itertools.count()
TITLES = {
    "hp": "Wireless noise cancelling headphones", "ear": "Bluetooth in-ear earbuds",
    "kb": "Mechanical gaming keyboard", "mouse": "Wireless gaming mouse",
    "st": "Heavy duty office stapler", "clip": "Box of metal paper clips",
    "pan": "Non-stick frying pan", "pot": "Stainless steel cooking pot",
}


@pytest.fixture(scope="module")
def model() -> ServingModel:
    m = ServingModel.load(device="cpu")
    for item_id, title in TITLES.items():
        m.items.upsert(item_id, title)
    m.items.refresh(m.encoder, m.cache)
    return m


def click(user: str, item_id: str, ts: float) -> ClickEvent:
    return ClickEvent(f"c{next(_ids)}", user, ts, item_id, None)


def apply(processor: BatchProcessor, recommender: Recommender, profiles: dict, events: list) -> None:
    """What the worker does with a batch: the ranker learns each click first, then the profiles change."""
    recommender.learn_clicks(events, profiles)
    outcome = processor.process(events, {u: profiles[u] for u in {e.user_id for e in events} if u in profiles})
    profiles.update(outcome.profiles)


def column(sig, name: str) -> torch.Tensor:
    return sig.features[:, FEATURES.index(name)]


def test_max_cos_keeps_each_interest_where_the_mean_blurs_them(model) -> None:
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    apply(processor, recommender, profiles, [click("u1", "hp", TS), click("u1", "pan", TS + 1)])
    sig = recommender.signals(profiles["u1"])
    row = model.items.row
    # Each clicked item is an exact match of one of the user's events; the mean matches neither fully.
    assert float(column(sig, "max_cos")[row["hp"]]) == pytest.approx(1.0, abs=1e-4)
    assert float(column(sig, "max_cos")[row["pan"]]) == pytest.approx(1.0, abs=1e-4)
    profile_cos = sig.features[:, FEATURES.index("profile_cos_blend")]
    assert float(profile_cos[row["hp"]]) < float(column(sig, "max_cos")[row["hp"]])


def test_transition_cos_carries_what_followed_the_last_item_to_items_that_read_alike(model) -> None:
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    # Other users went from the stapler to the paper clips; nobody ever went from the stapler to anything else.
    for u in range(5):
        apply(processor, recommender, profiles, [click(f"o{u}", "st", TS + u), click(f"o{u}", "clip", TS + u + 0.5)])
    apply(processor, recommender, profiles, [click("u2", "st", TS + 10)])
    sig = recommender.signals(profiles["u2"])
    tc = column(sig, "transition_cos")
    row = model.items.row
    assert float(tc[row["clip"]]) == pytest.approx(1.0, abs=1e-4)
    # Items never clicked after the stapler still get a graded score by how much they read like the clips.
    others = [float(tc[row[i]]) for i in TITLES if i not in ("clip",)]
    assert all(v < 0.99 for v in others) and len(set(round(v, 3) for v in others)) > 3
    assert float(column(sig, "seen")[row["st"]]) == 1.0 and float(column(sig, "seen")[row["clip"]]) == 0.0


def rank_of_first_click(model, users_come_back: bool) -> tuple[int, float]:
    """60 users click three items each, the third either going back to their first or to a new one;
    then a new user who clicked the keyboard and then the pan: where does the keyboard rank for them?"""
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    items = list(TITLES)
    for u in range(60):
        first, second = items[u % len(items)], items[(u * 3 + 1) % len(items)]
        third = first if users_come_back else items[(u * 5 + 2) % len(items)]
        for j, item in enumerate((first, second, third)):
            apply(processor, recommender, profiles, [click(f"r{u}", item, TS + 100 * u + j)])
    apply(processor, recommender, profiles, [click("probe", "kb", TS + 10_000), click("probe", "pan", TS + 10_001)])
    ranked = [r.item_id for r in recommender.recommend(profiles["probe"], k=len(TITLES), exclude_clicked=False)]
    return ranked.index("kb"), float(recommender.ranker.weights[FEATURES.index("seen")])


def test_the_ranker_learns_whether_users_come_back_to_what_they_clicked(model) -> None:
    # Same items, same first and second clicks; only whether the third click goes back differs.
    (rank_back, seen_back), (rank_never, seen_never) = rank_of_first_click(model, True), rank_of_first_click(model, False)
    assert seen_back > seen_never + 0.5, (seen_back, seen_never)
    assert rank_never - rank_back >= 3, (rank_back, rank_never)  # 8 items: kb falls well down the list
