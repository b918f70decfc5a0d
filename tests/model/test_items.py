"""The item index: titles and learned query text become vectors, clicks are idempotent, popularity
decays, the query->click memory mirrors the bounded per-item queries, and a swap catches up."""

from __future__ import annotations

import pytest
import torch

from coldstart.model.encoder import EmbeddingCache, TextEncoder
from coldstart.model.items import ClickEvidence, ItemIndex


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(device="cpu")


def index(encoder, **kw) -> ItemIndex:
    return ItemIndex(encoder.dim, encoder.device, capacity=2, **kw)


def test_titled_item_is_recommendable_after_refresh(encoder):
    items = index(encoder)
    items.upsert("a", "Wireless headphones")
    items.upsert("b", "Office stapler")
    items.upsert("c", "Garden hose")  # grows past the initial capacity
    assert items.refresh(encoder, EmbeddingCache(100)) == 3
    vecs, valid = items.matrix()
    assert valid.tolist() == [True, True, True]
    q = encoder.encode(["bluetooth headphones"])[0]
    assert int((vecs @ q).argmax()) == items.row["a"]


def test_clicks_are_idempotent_and_learn_text(encoder):
    items = index(encoder)
    clicks = [ClickEvidence("e1", "sku", "halo 3", 100.0), ClickEvidence("e2", "sku", "halo 3", 100.0)]
    assert items.observe_clicks(clicks) == 2
    assert items.observe_clicks(clicks) == 0  # redelivered
    assert items.queries[items.row["sku"]]["halo 3"] == 2
    assert float(items.pop[0]) == pytest.approx(2.0)
    items.refresh(encoder, EmbeddingCache(100))
    assert bool(items.valid[0]) and "halo 3" in items.text(0)


def test_popularity_decays_with_event_time(encoder):
    items = index(encoder, popularity_half_life_s=10.0)
    items.observe_clicks([ClickEvidence("e1", "old", None, 0.0 + 1e9)])
    items.observe_clicks([ClickEvidence("e2", "new", None, 10.0 + 1e9)])
    assert float(items.pop[items.row["old"]]) == pytest.approx(0.5)
    assert float(items.pop[items.row["new"]]) == pytest.approx(1.0)


def test_query_memory_mirrors_bounded_queries(encoder):
    items = index(encoder, max_queries=2)
    ev = [ClickEvidence(f"e{i}", item, q, 1.0) for i, (item, q) in enumerate(
        [("x", "q1"), ("x", "q1"), ("y", "q1"), ("x", "q2"), ("x", "q3")])]
    items.observe_clicks(ev)
    mem = items.query_memory("q1")
    assert mem is not None and float(mem[items.row["x"]]) == pytest.approx(1.0)
    assert 0 < float(mem[items.row["y"]]) < 1
    # x holds at most 2 queries: q3 replaced the rarest (q2), and the memory forgot x for q2.
    assert set(items.queries[items.row["x"]]) == {"q1", "q3"}
    assert items.query_memory("q2") is None
    assert items.query_memory("never typed") is None


def test_adopt_catches_up_rows_changed_after_snapshot(encoder):
    live = index(encoder)
    cache = EmbeddingCache(100)
    live.upsert("a", "Wireless headphones")
    live.refresh(encoder, cache)
    snapshot = live.copy_metadata()
    revision = snapshot.revision
    snapshot.reencode_all(encoder, EmbeddingCache(100))  # the new version's vectors, built aside
    live.upsert("b", "Office stapler")  # arrives while the new version is being built
    live.observe_clicks([ClickEvidence("e1", "a", "headset", 5.0)])
    stale = snapshot.adopt(live, revision)
    assert stale == 1  # only "b" (a titled item's queries do not change its vector)
    snapshot.refresh(encoder, EmbeddingCache(100))
    assert snapshot.ids == ["a", "b"] and snapshot.valid[:2].tolist() == [True, True]
    assert torch.allclose(snapshot.pop[:2], live.pop[:2])


def test_full_index_evicts_untitled_unseen_longest_and_never_raises(encoder):
    """At capacity: untitled ids seen least recently go first, their query memory and vector with
    them; a catalog item may replace a titled one only when no untitled is left; an untitled id that
    cannot get a row is refused, counted, and nothing raises."""
    cache = EmbeddingCache(100)
    items = index(encoder, max_items=3)
    items.upsert("hp", "Wireless headphones")
    items.observe_clicks([ClickEvidence("e1", "old", "garden hose", 1.0),
                          ClickEvidence("e2", "recent", "halo 3", 2.0)])
    items.refresh(encoder, cache)
    items.observe_clicks([ClickEvidence("e3", "new", "office stapler", 3.0)])
    assert set(items.row) == {"hp", "recent", "new"} and items.evictions == {"untitled": 1}
    assert items.query_memory("garden hose") is None  # the evicted item's clicks are forgotten
    reused = items.row["new"]
    assert not bool(items.valid[reused])  # no vector of "old" left on its row before the refresh
    items.refresh(encoder, cache)
    assert bool(items.valid[reused]) and items.text(reused) == "office stapler"

    items.upsert("kb", "Gaming keyboard")  # evicts "recent", the untitled unseen longest
    items.upsert("st", "Stapler")  # evicts "new"
    items.upsert("pan", "Frying pan")  # no untitled left: the titled item unseen longest ("hp") goes
    assert set(items.row) == {"kb", "st", "pan"}
    assert items.observe_clicks([ClickEvidence("e4", "unknown", "q", 4.0)]) == 1  # counted, not indexed
    assert "unknown" not in items.row
    assert items.evictions == {"untitled": 3, "titled": 1, "refused": 1}


def test_a_large_titled_catalogue_adds_few_objects_for_the_garbage_collector(encoder):
    """Issue 11: every full collection walks every tracked object with the GIL held, and a Counter of
    learned queries per item was a million of them at a million titled items (250 ms of a 381 ms
    collection). Items without a query share one read-only empty Counter; the first query gives an item
    its own, and no other item sees it."""
    import gc

    items = index(encoder)
    gc.collect()
    before = len(gc.get_objects())
    for i in range(20_000):
        items.upsert(f"t{i}", f"title {i}")
    gc.collect()
    assert len(gc.get_objects()) - before < 1_000  # not one per item
    items.observe_clicks([ClickEvidence("q1", "t7", "red stapler", 1.0)])
    assert dict(items.queries[items.row["t7"]]) == {"red stapler": 1}
    assert all(not items.queries[items.row[f"t{i}"]] for i in (0, 6, 8, 19_999))
    assert items.retract_clicks(["q1"]) == 1 and not items.queries[items.row["t7"]]
    copy = items.copy_metadata()
    copy.observe_clicks([ClickEvidence("q2", "t9", "blue pen", 2.0)])  # the copy's rows are its own too
    assert dict(copy.queries[copy.row["t9"]]) == {"blue pen": 1} and not items.queries[items.row["t9"]]
