"""Bot traffic injected into the real logs: flagged (>= 95% of its events), genuine users not (<= 1%)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from coldstart.model.anomaly import ActivityGuard, AnomalyRules
from coldstart.replay import open_dataset
from coldstart.settings import Settings


def bots(items: list[str], start: float, seed: int = 0) -> list[tuple[str, float, str | None]]:
    """(user, ts, item) of three kinds of bot, a few thousand clicks each."""
    rng = random.Random(seed)
    out = []
    t = start  # a scraper: random items, one every 1-3 s
    for _ in range(3000):
        t += rng.uniform(1.0, 3.0)
        out.append(("bot-scraper", t, rng.choice(items)))
    t = start  # a booster: the same item over and over, one every 30-90 s
    for _ in range(2000):
        t += rng.uniform(30.0, 90.0)
        out.append(("bot-booster", t, items[0]))
    t = start  # a slow crawler: random items, one every 1-4 minutes, for days
    for _ in range(1500):
        t += rng.uniform(60.0, 240.0)
        out.append(("bot-crawler", t, rng.choice(items)))
    t = start  # a search flood: searches only, one every 0.5 s
    for _ in range(1000):
        t += 0.5
        out.append(("bot-searcher", t, None))
    return out


def genuine(dataset: str) -> list[tuple[str, float, str | None]]:
    events = open_dataset(dataset, Settings().shared_data)
    return [(str(e.value["user_id"]), float(e.value["ts"]), e.value.get("item_id") if e.type == "click" else None)
            for e in events if e.type in ("search", "click")]


@pytest.mark.parametrize("dataset", ["bestbuy", "amazon"])
def test_injected_bots_are_flagged_and_genuine_users_are_not(dataset: str) -> None:
    real = genuine(dataset)
    items = sorted({i for _, _, i in real if i})
    injected = bots(items, start=real[len(real) // 2][1])
    stream = sorted(real + injected, key=lambda e: e[1])
    guard = ActivityGuard()
    flagged: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for user, ts, item in stream:
        kind = "bot" if user.startswith("bot-") else "genuine"
        total[kind] += 1
        flagged[kind] += guard.observe(user, ts, item) is not None
    bot_share = flagged["bot"] / total["bot"]
    genuine_share = flagged["genuine"] / total["genuine"]
    print(f"{dataset}: bot events flagged {bot_share:.4f} of {total['bot']}, genuine {genuine_share:.5f} "
          f"of {total['genuine']}, by reason {guard.flagged_events}")
    assert bot_share >= 0.95
    assert genuine_share <= 0.01
    assert all(guard.is_flagged(u) for u in ("bot-scraper", "bot-booster", "bot-crawler", "bot-searcher"))


def test_every_rule_has_its_reason_and_flags_stick() -> None:
    rules = AnomalyRules(burst_events=5, burst_window_s=10.0, flood_events=8, flood_window_s=1000.0,
                         same_item_clicks=4)
    guard = ActivityGuard(rules)
    assert [guard.observe("fast", t * 1.0) for t in range(6)][-1] == "impossible_rate"
    assert [guard.observe("flood", t * 50.0) for t in range(8)][-1] == "click_flood"
    assert [guard.observe("same", t * 500.0, "i") for t in range(4)][-1] == "same_item_repeated"
    assert guard.observe("fast", 10_000.0) == "impossible_rate"  # a slower bot is still flagged
    assert guard.observe("human", 0.0, "i") is None
    assert guard.flagged_events == {"impossible_rate": 3, "click_flood": 1, "same_item_repeated": 1}


def test_a_redelivered_event_is_counted_once() -> None:
    guard = ActivityGuard(AnomalyRules(burst_events=3, burst_window_s=10.0))
    for _ in range(5):
        assert guard.observe("u", 1.0, "i", event_id="e1") is None
    assert guard.observe("u", 2.0, "i", event_id="e2") is None
    assert guard.observe("u", 3.0, "i", event_id="e3") == "impossible_rate"


def test_counters_are_bounded() -> None:
    guard = ActivityGuard(AnomalyRules(max_items_tracked=3), max_users=2)
    for k in range(10):
        guard.observe("u", float(k * 1000), f"i{k}")
        guard.observe(f"other{k}", 0.0)
    assert guard.n_users == 2
    guard = ActivityGuard(AnomalyRules(max_items_tracked=3))
    for k in range(10):
        guard.observe("u", float(k * 1000), f"i{k}")
    assert len(guard.activity("u").item_clicks) == 3
    assert len(guard.activity("u").times) <= 200
    with pytest.raises(ValueError):
        AnomalyRules(burst_events=1)


def test_counters_of_many_users_leave_nothing_for_the_garbage_collector_to_scan() -> None:
    # issue 11: every full collection scans every tracked object while holding the GIL; a worker's
    # guard holds counters for up to 200k users, so they must not be tracked containers.
    import gc

    guard = ActivityGuard()
    gc.collect()
    before = len(gc.get_objects())
    for u in range(2_000):
        for k in range(3):
            guard.observe(f"u{u}", float(k), f"i{k}", event_id=f"e{u}-{k}")
    gc.collect()
    gc.collect()  # a tuple is untracked when a collection finds its items untracked: inner ones first
    assert guard.n_users == 2_000
    assert len(gc.get_objects()) - before < 20
    assert guard.activity("u7").seen == ("e7-0", "e7-1", "e7-2")
