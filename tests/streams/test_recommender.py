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


def click(user: str, item_id: str, ts: float, query: str | None = None) -> ClickEvent:
    return ClickEvent(f"c{next(_ids)}", user, ts, item_id, query)


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


def test_transition_prev_carries_what_followed_the_item_before_the_last(model) -> None:
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    for u in range(5):  # others went from the stapler to the paper clips
        apply(processor, recommender, profiles, [click(f"o{u}", "st", TS + u), click(f"o{u}", "clip", TS + u + 0.5)])
    # the probe clicked the stapler, then a pan: what followed the pan says nothing, what followed the stapler does
    apply(processor, recommender, profiles, [click("u3", "st", TS + 10), click("u3", "pan", TS + 11)])
    sig = recommender.signals(profiles["u3"])
    row = model.items.row
    assert sig.prev_item == "st" and sig.last_item == "pan"
    assert float(column(sig, "transition_prev")[row["clip"]]) == pytest.approx(1.0)
    assert float(column(sig, "transition")[row["clip"]]) == 0.0
    # what followed the stapler, the probe's own step to the pan included, and nothing else
    ids = model.items.ids
    assert {ids[r] for r in column(sig, "transition_prev").nonzero().flatten().tolist()} == {"clip", "pan"}
    # the same item clicked twice in a row: the item before the last is the last, nothing new to read
    apply(processor, recommender, profiles, [click("u4", "st", TS + 20), click("u4", "st", TS + 21)])
    sig = recommender.signals(profiles["u4"])
    assert sig.prev_item is None and float(column(sig, "transition_prev").abs().sum()) == 0.0


def test_the_ranker_learns_the_item_two_clicks_back_when_the_last_click_was_a_detour(model) -> None:
    """80 users click an item and then the one that always follows it, half of them with a detour
    between the two; a new user who clicked the keyboard, then a detour: what follows the keyboard comes
    first, read from the item before the last."""
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    items = list(TITLES)
    follows = {items[i]: items[(i + 4) % len(items)] for i in range(len(items))}
    for u in range(80):
        first = items[u % len(items)]
        detours = [i for i in items if i not in (first, follows[first])]
        path = (first, follows[first]) if (u // len(items)) % 2 else (first, detours[u % len(detours)], follows[first])
        for j, item in enumerate(path):  # a batch each: a step reads the user's state before its batch
            apply(processor, recommender, profiles, [click(f"d{u}", item, TS + 100 * u + j)])
    detour = next(i for i in items if i not in ("kb", follows["kb"]))
    apply(processor, recommender, profiles, [click("probe", "kb", TS + 10_000), click("probe", detour, TS + 10_001)])
    recs = recommender.recommend(profiles["probe"], k=len(TITLES), exclude_clicked=True)
    ranked = [r.item_id for r in recs]
    assert ranked[0] == follows["kb"], (ranked, follows["kb"])
    assert float(recommender.ranker.weights[FEATURES.index("transition_prev")]) > 0.5
    # Whatever signal explains it, the item named is the keyboard the detour followed, not the detour.
    named = recs[0].because[0]
    assert named["kind"] in ("transition", "coclick") and named["item_id"] == "kb", named


def test_click_query_memory_carries_what_others_clicked_after_the_query_of_the_newest_click(model) -> None:
    """A visitor who clicked the stapler from a search for "office supplies" and has not typed since:
    what others clicked after that query is a signal, named by the query in the explanation; once the
    visitor searches again the pending query speaks for itself and the column says nothing new."""
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    for u in range(4):  # others answered "office supplies" with the clips (three) and the stapler (one)
        apply(processor, recommender, profiles, [click(f"o{u}", "st" if u == 0 else "clip", TS + u, "office supplies")])
    apply(processor, recommender, profiles, [click("u5", "st", TS + 10, "office supplies"), click("u5", "pan", TS + 11)])
    state = profiles["u5"]
    sig = recommender.signals(state)
    row, ids = model.items.row, model.items.ids
    cqm = column(sig, "click_query_memory")
    # the newest click that carried a query, not the newest click: the pan answered none
    assert sig.click_query is not None and sig.click_query.text == "office supplies"
    assert {ids[r] for r in cqm.nonzero().flatten().tolist()} == {"clip", "st"}
    assert float(cqm[row["clip"]]) == pytest.approx(1.0) and 0.0 < float(cqm[row["st"]]) < 1.0
    assert float(column(sig, "query_memory").abs().sum()) == 0.0  # nothing typed since
    # a ranker that reads only this column: the clips first, because of the query the stapler answered
    recommender.ranker.weights.zero_()
    recommender.ranker.weights[FEATURES.index("click_query_memory")] = 5.0
    recommender.ranker.item_bias.clear()
    top = recommender.recommend(state, k=3, exclude_clicked=True)[0]
    assert top.item_id == "clip", top
    assert top.because[0]["reason"] == "people who searched 'office supplies' clicked this", top.because
    assert top.because[0]["event_id"] == state.events[0].event_id and top.because[0]["kind"] == "search"
    # the same query typed again: query_memory holds it, click_query_memory stays empty
    apply(processor, recommender, profiles, [SearchEvent(f"q{next(_ids)}", "u5", TS + 12, "office supplies", None)])
    sig = recommender.signals(profiles["u5"])
    assert float(column(sig, "query_memory")[row["clip"]]) == pytest.approx(1.0)
    assert float(column(sig, "click_query_memory").abs().sum()) == 0.0 and sig.click_query is None


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


def reference_features(recommender: Recommender, state) -> torch.Tensor:
    """The read path as it was before issue 11 (one product per query vector, popularity and first-seen
    looked up item by item in the statistics' dicts): what the faster path must equal."""
    import torch.nn.functional as F

    from coldstart.model.profile import popularity_blend, profile_vectors
    from coldstart.model.ranker import feature_matrix, log_gap
    from coldstart.model.retrieval import popularity_scores
    from coldstart.model.stats import growth, log_norm
    from coldstart.streams.processor import event_vectors

    model, stats = recommender.model, recommender.stats
    vecs_all, valid = model.items.matrix()
    n, row = vecs_all.shape[0], model.items.row

    def dense(values):
        out = torch.zeros(n)
        for k, v in values.items():
            if k in row and row[k] < n:
                out[row[k]] = v
        return out

    sig, events = {}, state.events
    vecs, weights, owner, _ = event_vectors(model, [state], recommender.settings.half_life_s)
    same_space = state.vector is not None and state.version == model.version
    profile = torch.from_numpy(state.vector)[None] if same_space else profile_vectors(vecs, weights, owner, 1)
    sig["profile_cos"] = (profile @ vecs_all.T)[0]
    sig["max_cos"] = (vecs[-5:] @ vecs_all.T).max(dim=0).values
    last = events[-1]
    last_vec = vecs_all[row[last.item_id]] if last.item_id else model.cache.encode(model.encoder, [last.text])[0]
    sig["last_cos"] = vecs_all @ last_vec
    if last.kind == "search":
        sig["query_cos"] = vecs_all @ model.cache.encode(model.encoder, [last.text])[0]
        sig["query_memory"] = dense(log_norm(stats.query_items(last.text)))
    asked = [e.text for e in events if e.kind == "click" and e.text]
    if asked and not (last.kind == "search" and last.text == asked[-1]):
        sig["click_query_memory"] = dense(log_norm(stats.query_items(asked[-1])))
    clicked = state.clicked_items()
    if clicked:
        following = log_norm(stats.neighbours(stats.transitions, clicked[-1]))
        sig["transition"] = dense(following)
        if following:
            centroid = sum(v * vecs_all[row[k]] for k, v in following.items())
            sig["transition_cos"] = vecs_all @ F.normalize(centroid, dim=0)
        sig["seen"] = dense(dict.fromkeys(clicked, 1.0))
        if len(clicked) >= 2 and clicked[-2] != clicked[-1]:
            sig["transition_prev"] = dense(log_norm(stats.neighbours(stats.transitions, clicked[-2])))
        co = {}
        for item in clicked[-stats.coclick_window:]:
            for k, v in log_norm(stats.neighbours(stats.coclicks, item)).items():
                co[k] = co.get(k, 0.0) + v
        sig["coclick"] = dense(co) / min(len(clicked), stats.coclick_window)
    now = max(e.ts for e in events)
    scale = growth((stats.pop_origin - now) / stats.half_life_s)
    sig["popularity"] = popularity_scores(dense({k: max(v * scale, 0.0) for k, v in stats.pop.items()}))
    half_life = stats.half_life_s
    sig["newness"] = dense({k: 0.5 ** (max(now - t, 0.0) / half_life) for k, t in stats.first_seen.items()})
    a = float(popularity_blend(torch.tensor([float(state.n_events)]))[0])
    return feature_matrix(sig, state.n_events, a, log_gap(stats.newest_ts - now))


def test_the_read_path_equals_the_item_by_item_reference(model) -> None:
    """Issue 11's faster read path (row-indexed statistics, one product for every query vector) ranks
    exactly as the reference, through clicks, searches, a redelivery and clicks being learned."""
    settings = Settings(device="cpu")
    from coldstart.streams.recommender import PROFILE_SIGNALS

    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    items, kinds = list(TITLES), set()
    for u in range(12):
        # some clicks carry the query they answered (click_query_memory)
        events = [click(f"s{u}", items[(u + j * 3) % len(items)], TS + 50 * u + j,
                        query="office supplies" if (u + j) % 4 == 1 else None) for j in range(3)]
        if u % 3 == 0:
            events.append(SearchEvent(f"q{next(_ids)}", f"s{u}", TS + 50 * u + 5, "gaming keyboard", None))
        apply(processor, recommender, profiles, events + events[:1])
        recommender.stats.note_item(items[u % len(items)], TS - 86_400.0 * u)
        state = profiles[f"s{u}"]
        expected = reference_features(recommender, state)
        got = recommender.signals(state).features
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max(dim=0)
        # the learned item biases by item id, looked up one by one (the read path takes them by row)
        scores = recommender.ranker.score(expected, recommender.ranker.offsets_of(model.items.ids[:len(expected)]))
        recs = recommender.recommend(state, k=10, exclude_clicked=False)
        assert [r.item_id for r in recs] == [model.items.ids[i] for i in scores.argsort(descending=True).tolist()]
        for r in recs:  # explanations, made for all ten rows at once, as the item-by-item reference says
            assert r.because == reference_because(recommender, state, expected, model.items.row[r.item_id]), r
            kinds.update(b["signal"] for b in r.because)
    assert kinds & PROFILE_SIGNALS, kinds  # the events behind an item were explained
    assert any(abs(b) > 1e-3 for b in recommender.ranker.item_bias.values())  # biases learned, and ranked with


def reference_because(recommender: Recommender, state, features: torch.Tensor, row: int) -> list[dict]:
    """The explanation of one item as it was made item by item (the strongest positive signal; for a
    profile signal, the two events that pull the item up most)."""
    from coldstart.model.profile import top_contributors
    from coldstart.streams.processor import event_vectors
    from coldstart.streams.recommender import PROFILE_SIGNALS

    positive = recommender.ranker.contributions(features[row][None])[0].clamp_min(0.0)
    total = float(positive.sum())
    if total <= 0.0:
        return [{"event_id": None, "kind": "popular", "signal": "popular", "reason": "popular now", "text": None,
                 "item_id": None, "share": 1.0}]
    name, share = FEATURES[int(positive.argmax())], round(float(positive.max()) / total, 3)
    sig = recommender.signals(state)
    sig.coclick_source = recommender.coclick_sources(state)
    if name in PROFILE_SIGNALS:
        vecs, weights, _, slots = event_vectors(recommender.model, [state], recommender.settings.half_life_s)
        out = []
        for j, part in top_contributors(vecs, weights, recommender.model.items.matrix()[0][row], k=2):
            ev = state.events[slots[j][1]]
            what = f"you searched {ev.text!r}" if ev.kind == "search" else f"you clicked {ev.item_id}"
            out.append({"event_id": ev.event_id, "kind": ev.kind, "signal": name, "reason": f"because {what}",
                        "text": ev.text, "item_id": ev.item_id, "share": round(share * part, 3)})
        if out:
            return out
    # the other signals' wording is the recommender's own; here only which signal and its share
    return [{**entry, "share": share} for entry in recommender._because(state, sig, recommender.model.items.ids[row], name,
                                                                         share, 1.0, [])]


def test_after_its_dense_steps_the_ranker_learns_from_one_click_in_n_and_the_statistics_from_all(model) -> None:
    # Issue 11: a ranker step reads every signal of every item; past the first steps only the clicks
    # whose id hashes to 0 mod n take one, while popularity, co-clicks and transitions count every click.
    import zlib

    settings = Settings(device="cpu", ranker_learn_every=3, ranker_dense_steps=2, ranker_max_steps=0)
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    items = list(TITLES)
    clicks = [click(f"u{i % 7}", items[i % len(items)], TS + i) for i in range(40)]
    apply(processor, recommender, profiles, clicks)
    by_hash = [c for c in clicks[2:] if zlib.crc32(c.event_id.encode()) % 3 == 0]
    assert 0 < len(by_hash) < len(clicks) - 2
    assert recommender.ranker.steps == 2 + len(by_hash)
    assert recommender.stats.clicks == len(clicks) == recommender.clicks_learned
    # Every click is counted in popularity, taught or not.
    assert sum(recommender.stats.pop.values()) > 0 and set(recommender.stats.pop) == set(items)


def test_a_full_batch_sheds_ranker_steps_past_its_cap_but_counts_every_click(model) -> None:
    # Issue 11: under a backlog a batch fills up; past the dense steps it takes at most ranker_max_steps
    # steps, spread over its teaching clicks, and the rest are counted as shed, while the statistics
    # still count every click. The dense phase is never capped, and a batch within the cap loses nothing.
    import zlib

    settings = Settings(device="cpu", ranker_learn_every=2, ranker_dense_steps=40, ranker_max_steps=3)
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    items = list(TITLES)
    clicks = [click(f"u{i % 7}", items[i % len(items)], TS + i) for i in range(80)]
    apply(processor, recommender, profiles, clicks[:40])  # a fresh ranker: dense, every click teaches
    assert recommender.ranker.steps == 40 and recommender.steps_shed == 0
    full = clicks[40:]
    teaching = [c for c in full if zlib.crc32(c.event_id.encode()) % 2 == 0]
    assert len(teaching) > 3
    apply(processor, recommender, profiles, full)
    assert recommender.ranker.steps == 43 and recommender.steps_shed == len(teaching) - 3
    assert recommender.stats.clicks == len(clicks) == recommender.clicks_learned
    small = [click(f"v{i}", items[i % len(items)], TS + 100 + i) for i in range(40)]
    small = [c for c in small if zlib.crc32(c.event_id.encode()) % 2 == 0][:3]
    apply(processor, recommender, profiles, small)  # within the cap: every teaching click steps
    assert recommender.ranker.steps == 46 and recommender.steps_shed == len(teaching) - 3


def test_a_retracted_bot_takes_its_pull_on_the_item_biases_back(model) -> None:
    """A user hammering one item moves that item's learned bias for everyone; once the user is flagged
    and their clicks retracted, the bias is back near where a ranker that never saw the bot has it,
    with genuine clicks before and after the bot."""
    settings = Settings(device="cpu")

    def genuine(u: int, ts: float) -> list:
        items = list(TITLES)
        return [click(f"g{u}", items[u % 8], ts), click(f"g{u}", items[(u * 3 + 1) % 8], ts + 0.5)]

    def stream(with_bot: bool) -> tuple[Recommender, list]:
        processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
        bot = []
        for u in range(30):
            apply(processor, recommender, profiles, genuine(u, TS + u))
            if with_bot and 10 <= u < 25:
                bot.append(click("bot", "pan", TS + u + 0.7))
                apply(processor, recommender, profiles, bot[-1:])
        return recommender, bot

    clean, _ = stream(with_bot=False)
    botted, bot = stream(with_bot=True)
    never = clean.ranker.item_bias.get("pan", 0.0)
    pushed = botted.ranker.item_bias["pan"]
    # the bot's counts pull everyone's steps: they push the offset the other way, to compensate
    assert abs(pushed - never) > 0.1
    assert botted.retract([ev.event_id for ev in bot]) == len(bot)
    after = botted.ranker.item_bias.get("pan", 0.0)
    assert abs(after - never) < abs(pushed - never) / 4, (never, pushed, after)
    sig = botted.signals(None)
    assert float(sig.offsets[model.items.row["pan"]]) == pytest.approx(after, abs=1e-6)  # as requests read it


COLOURS = ["red", "black", "white", "blue", "green"]
MATERIALS = ["steel", "leather", "plastic", "wooden", "glass", "cotton", "rubber", "ceramic", "bamboo", "paper"]
PRODUCTS = ["stapler", "headphones", "frying pan", "keyboard", "notebook", "water bottle", "desk lamp",
            "backpack", "mouse pad", "coffee mug"]


@pytest.fixture(scope="module")
def catalogue() -> ServingModel:
    """500 titled items (colour x material x product), real MiniLM vectors, a coarse index over them."""
    m = ServingModel.load(device="cpu")
    for c, (colour, material, product) in enumerate(itertools.product(COLOURS, MATERIALS, PRODUCTS)):
        m.items.upsert(f"p{c}", f"{colour} {material} {product}")
    m.items.refresh(m.encoder, m.cache)
    while m.items.maintain_coarse(100, budget=200):
        pass
    assert m.items.coarse is not None and m.items.coarse.complete(len(m.items))
    return m


def feed(settings: Settings, model: ServingModel, rounds: int = 8) -> tuple[Recommender, dict]:
    """The same clicks and searches, in the same order, for every call: users browsing a product type."""
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    ids = [f"p{c}" for c in range(len(model.items))]
    for u in range(rounds):
        events = [click(f"a{u}", ids[(37 * u + 10 * j) % len(ids)], TS + 100 * u + j) for j in range(3)]
        if u % 2:
            events.append(SearchEvent(f"q{next(_ids)}", f"a{u}", TS + 100 * u + 5, "leather backpack", None))
        apply(processor, recommender, profiles, events)
    return recommender, profiles


def test_the_coarse_index_probing_every_group_ranks_exactly_as_every_item(catalogue) -> None:
    """With every group probed the candidates of a user with events are every row: the same top 10,
    scores and explanations as the path over the whole catalogue, so what the coarse index changes is
    only which rows it reads. (A step then learns over the candidates, the softmax's negatives: for a
    user with no events those are the items best by popularity, newness and offset.)"""
    exact_settings = Settings(device="cpu", ann_min_items=0)
    recommender, profiles = feed(exact_settings, catalogue)
    approx_settings = Settings(device="cpu", ann_min_items=100, ann_probe=catalogue.items.coarse.lists)
    for user, state in profiles.items():
        recommender.settings = exact_settings
        want = recommender.recommend(state, k=10)
        assert recommender.signals(state).rows is None
        recommender.settings = approx_settings
        assert recommender.signals(state).rows.numel() == len(catalogue.items)
        got = recommender.recommend(state, k=10)
        assert [r.item_id for r in got] == [r.item_id for r in want]
        assert [r.because for r in got] == [r.because for r in want]
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
    # A user with no events: the items best by the prior are the candidates, and the top 10 is the same.
    recommender.settings = exact_settings
    want = [r.item_id for r in recommender.recommend(None, k=10)]
    recommender.settings = approx_settings
    assert [r.item_id for r in recommender.recommend(None, k=10)] == want
    assert recommender.signals(None).rows.numel() == 100


def test_a_narrow_probe_still_reads_every_item_a_statistic_names(catalogue) -> None:
    recommender, profiles = feed(Settings(device="cpu", ann_min_items=100, ann_probe=1), catalogue)
    # Another user went from a3's last item to an item of another product type: a transition.
    state = profiles["a3"]
    last = state.clicked_items()[-1]
    far = next(i for i in catalogue.items.ids if catalogue.items.text(catalogue.items.row[i]).endswith("coffee mug")
               and "coffee mug" not in catalogue.items.text(catalogue.items.row[last]))
    recommender.stats.observe("t1", "other", last, TS + 10_000)
    recommender.stats.observe("t2", "other", far, TS + 10_001)
    sig = recommender.signals(state)
    rows = set(sig.rows.tolist())
    assert len(rows) < len(catalogue.items)  # a fraction of the catalogue is read
    row = catalogue.items.row
    assert row[far] in rows and {row[i] for i in state.clicked_items()} <= rows
    (pos,) = sig.positions_of([row[far]])
    assert float(column(sig, "transition")[pos]) == pytest.approx(1.0)
    recs = recommender.recommend(state, k=10)
    assert len(recs) == 10 and not {r.item_id for r in recs} & set(state.clicked_items())


def test_a_swap_keeps_the_learned_text_metric(model) -> None:
    # The ranker carries over a swap: a new version serves with the metric learned so far (forgetting
    # it measured no better), and the metric keeps weighting queries of the same width.
    successor = ServingModel.load(device="cpu", version="v-next", items=model.items.copy_metadata())
    assert successor.version != model.version
    items = list(TITLES)
    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    for i in range(12):  # a batch each: a click teaches the metric only once its user has a profile
        apply(processor, recommender, profiles, [click(f"u{i % 3}", items[i % len(items)], TS + i)])
    learned = recommender.ranker.metric
    assert learned is not None and learned.abs().sum() > 0
    recommender.swap(successor)
    assert recommender.model is successor and recommender.ranker.metric is learned
    assert recommender.ranker.metric_query(torch.ones(learned.shape[0])) is not None


def word_catalogue_model() -> ServingModel:
    """The base model with 20 two-word items encoded."""
    base = ServingModel.load(device="cpu")
    words = itertools.product(["Wireless", "Steel", "Gaming", "Office", "Kitchen"], ["mouse", "stapler", "pan", "lamp"])
    for i, (a, b) in enumerate(words):
        base.items.upsert(f"i{i}", f"{a} {b}")
    base.items.refresh(base.encoder, base.cache)
    return base


def squeezed_successor(base: ServingModel, version: str, squeeze: float) -> ServingModel:
    """A version over ``base``'s items whose vectors are pulled towards their mean (``squeeze``), as one
    fine-tuning round squeezes the cosines."""
    m = ServingModel.load(device="cpu", version=version, items=base.items.copy_metadata())
    m.items.refresh(m.encoder, m.cache)
    vecs, _ = m.items.matrix()
    vecs.copy_(torch.nn.functional.normalize(vecs + squeeze * vecs.mean(dim=0), dim=1))
    return m


def test_a_swap_rescales_the_text_weights_to_the_new_versions_spread_of_cosines() -> None:
    # A fine-tuned version squeezes the cosines (one round: the spread halved, README); the ranker's
    # text weights follow the spread, the other weights stay, and the same space changes nothing.
    from coldstart.model.ranker import TEXT_FEATURES, text_gain

    base = word_catalogue_model()
    recommender = Recommender(Settings(device="cpu"), base)
    learned = recommender.ranker.weights.clone()
    recommender.swap(squeezed_successor(base, "v-same", 0.0))
    assert torch.allclose(recommender.ranker.weights, learned)
    squeezed = squeezed_successor(base, "v-squeezed", 2.0)
    gain = text_gain(recommender.model.items.matrix()[0], squeezed.items.matrix()[0])
    assert gain > 1.5
    recommender.swap(squeezed)
    assert recommender.text_gains[-1] == ("v-squeezed", pytest.approx(gain)) and recommender.model is squeezed
    text = [FEATURES.index(name) for name in TEXT_FEATURES]
    other = [i for i in range(len(FEATURES)) if i not in text]
    assert torch.allclose(recommender.ranker.weights[text], learned[text] * gain)
    assert torch.equal(recommender.ranker.weights[other], learned[other])


def test_a_restarted_worker_rescales_its_checkpointed_ranker_from_the_version_it_learned_in(tmp_path) -> None:
    # The checkpoint names the version its text weights were scaled to. A worker restarts on the base
    # model and is then swapped to the version in service: onto that same version nothing changes (the
    # old code rescaled base -> version a second time); onto a newer one the gain is measured from the
    # checkpoint's version (its item vectors, as the registry ships them), not from the base model.
    from coldstart.model.ranker import LinearRanker, load_ranker, save_ranker, text_gain

    base = word_catalogue_model()
    v1, v2 = squeezed_successor(base, "v0001", 2.0), squeezed_successor(base, "v0002", 4.0)
    trained = LinearRanker()
    trained.weights[0] = 7.0
    trained.text_version = "v0001"
    save_ranker(trained, tmp_path / "ranker.safetensors")

    def restarted() -> Recommender:
        ranker, _ = load_ranker(tmp_path / "ranker.safetensors")
        return Recommender(Settings(device="cpu"), base, ranker=ranker)

    onto_same = restarted()
    assert onto_same.ranker.text_version == "v0001"  # not the base model it was built with
    onto_same.swap(v1)
    assert torch.equal(onto_same.ranker.weights, trained.weights) and onto_same.text_gains == []

    onto_newer = restarted()
    vecs, _ = v1.items.matrix()
    onto_newer.swap(v2, reference=(list(v1.items.ids), vecs.clone()))
    gain = text_gain(v1.items.matrix()[0], v2.items.matrix()[0])
    assert gain != pytest.approx(text_gain(base.items.matrix()[0], v2.items.matrix()[0]), rel=0.05)
    assert onto_newer.text_gains == [("v0002", pytest.approx(gain))]
    assert onto_newer.ranker.text_version == "v0002"

    unknown = restarted()  # the checkpoint's version is gone from the registry: the scale is kept
    unknown.swap(v2)
    assert torch.equal(unknown.ranker.weights, trained.weights) and unknown.ranker.text_version == "v0002"


def test_the_gap_since_a_users_last_event_is_read_on_the_streams_clock(model) -> None:
    """The gap columns cross popularity, transitions, the last event and the items already clicked with
    log(1 + minutes) since the user's last event, measured to the newest click counted (the stream's clock, not the wall clock)."""
    from coldstart.model.ranker import log_gap

    settings = Settings(device="cpu")
    processor, recommender, profiles = BatchProcessor(settings, model), Recommender(settings, model), {}
    apply(processor, recommender, profiles, [click("back", "kb", TS), click("back", "mouse", TS + 30)])
    apply(processor, recommender, profiles, [click("other", "kb", TS + 7 * 86_400.0),
                                             click("other", "mouse", TS + 7 * 86_400.0 + 60)])
    week = recommender.signals(profiles["back"])
    gap = log_gap(7 * 86_400.0 + 60 - 30)
    assert gap > 9.0
    for name, base in (("popularity_x_gap", "popularity"), ("transition_x_gap", "transition"),
                       ("last_cos_x_gap", "last_cos"), ("seen_x_gap", "seen")):
        assert torch.allclose(column(week, name), column(week, base) * gap, atol=1e-5), name
    assert float(column(week, "last_cos_x_gap").abs().max()) > 1.0
    assert float(column(week, "seen_x_gap").max()) == pytest.approx(gap)  # "kb", "mouse": clicked a week before
    now = recommender.signals(profiles["other"])  # its last click is the newest: no gap
    assert float(column(now, "popularity_x_gap").abs().max()) == 0.0
    assert float(column(recommender.signals(None), "popularity_x_gap").abs().max()) == 0.0
