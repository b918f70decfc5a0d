"""Stream statistics: idempotent by event id, bounded, and a click can be taken out while it is learned."""

from __future__ import annotations

import pytest

import math

from coldstart.model.stats import StreamStats


def _feed(stats: StreamStats, clicks) -> None:
    for eid, user, item, ts, query in clicks:
        stats.observe(eid, user, item, ts, query=query)


def test_redelivered_clicks_change_nothing():
    once, twice = StreamStats(), StreamStats()
    clicks = [("e1", "u1", "a", 0.0, "halo"), ("e2", "u1", "b", 10.0, None), ("e3", "u2", "a", 20.0, "halo")]
    _feed(once, clicks)
    _feed(twice, clicks + clicks[::-1])
    assert once.transitions == twice.transitions and once.coclicks == twice.coclicks
    assert once.query_clicks == twice.query_clicks and once.pop == twice.pop
    assert once.clicks == twice.clicks == 3


def test_transitions_and_coclicks_follow_each_user():
    s = StreamStats()
    _feed(s, [("e1", "u1", "a", 0.0, None), ("e2", "u2", "x", 1.0, None), ("e3", "u1", "b", 2.0, None),
              ("e4", "u1", "c", 3.0, None)])
    assert s.transitions == {"a": {"b": 1.0}, "b": {"c": 1.0}}  # u2's click does not break u1's chain
    assert s.coclicks["a"] == {"b": 1.0, "c": 1.0} and "x" not in s.coclicks


def test_excluding_a_click_restores_every_count_exactly():
    s = StreamStats(popularity_half_life_s=10.0)
    _feed(s, [("e1", "u1", "a", 0.0, "q"), ("e2", "u1", "b", 5.0, "q"), ("e3", "u2", "a", 40.0, "q")])
    before = (dict(s.pop), {k: dict(v) for k, v in s.transitions.items()}, dict(s.query_clicks["q"]))
    pop_b = s.popularity("b", now=40.0)
    with s.excluding("e2"):
        assert s.neighbours(s.transitions, "a") == {}
        assert s.query_items("q") == {"a": 2.0}
        assert s.popularity("b", now=40.0) == 0.0
    assert (dict(s.pop), {k: dict(v) for k, v in s.transitions.items()}, dict(s.query_clicks["q"])) == before
    assert math.isclose(pop_b, 0.5 ** 3.5)


def test_popularity_decays_in_event_time_and_survives_rebasing():
    s = StreamStats(popularity_half_life_s=1.0)
    s.observe("e1", "u", "a", 0.0)
    s.observe("e2", "v", "b", 600.0)  # 600 half-lives later: the origin moves, values stay right
    assert s.pop_origin == 600.0
    assert math.isclose(s.popularity("b", now=601.0), 0.5)
    assert s.popularity("a", now=600.0) < 1e-100


def test_everything_is_bounded():
    s = StreamStats(max_users=3, max_neighbours=2, max_queries=2, seen_clicks=5)
    for i in range(50):
        s.observe(f"e{i}", f"u{i % 7}", f"i{i % 11}", float(i), query=f"q{i % 5}")
    assert len(s.user_recent) <= 3 and len(s.query_clicks) <= 2 and len(s._undo) <= 5
    assert all(len(row) <= 2 for row in (*s.transitions.values(), *s.coclicks.values()))


def test_a_jump_of_years_in_event_time_neither_fails_nor_keeps_stale_popularity():
    """A worker that replayed a 2011 log and then sees today's traffic (the overload benchmark found
    every later click dead-lettered with OverflowError: 2 ** (15 years / 3 days))."""
    s = StreamStats()
    old, now = 1_313_035_217.0, 1_795_448_290.0
    _feed(s, [("e1", "u1", "a", old, None), ("e2", "u2", "a", old + 60, None)])
    _feed(s, [("e3", "u3", "b", now, None), ("e4", "u4", "b", now + 1, None), ("e5", "u5", "a", old, None)])
    assert s.popularity("b", now + 1) > 1.9  # today's two clicks, barely decayed
    assert s.popularity("a", now + 1) < 1e-9  # 2011's clicks have decayed away, the late old one too
    assert math.isfinite(s.popularity("b", old))  # a read at an old time stays finite


class _Index:
    """The three things RowStats reads of an item index (model/items.py): ids by row, row by id, evictions."""

    def __init__(self, ids):
        import torch

        self.ids, self.row = list(ids), {i: r for r, i in enumerate(ids)}
        self.evictions, self.device = {}, torch.device("cpu")

    def reuse(self, row: int, item: str) -> None:
        self.evictions["untitled"] = self.evictions.get("untitled", 0) + 1
        del self.row[self.ids[row]]
        self.ids[row] = item
        self.row[item] = row


def _by_dicts(stats: StreamStats, index: _Index, now: float) -> tuple[list, list]:
    pop = [stats.popularity(i, now) for i in index.ids]
    new = [0.5 ** (max(now - stats.first_seen[i], 0.0) / stats.half_life_s) if i in stats.first_seen else 0.0
           for i in index.ids]
    return pop, new


def test_row_stats_follow_clicks_exclusions_evictions_and_rebases():
    import pytest
    import torch

    from coldstart.model.stats import RowStats

    s = StreamStats(popularity_half_life_s=10.0)
    index = _Index(["a", "b", "c"])
    offsets = {"b": 0.5}  # the learned ranker's item biases, by item id
    rows = RowStats(s, torch.device("cpu"), offsets=offsets)

    def check(now: float) -> None:
        pop, new, off, top = rows.read(index, len(index.ids), now)
        want_pop, want_new = _by_dicts(s, index, now)
        assert pop.tolist() == pytest.approx(want_pop, rel=1e-6) and new.tolist() == pytest.approx(want_new, rel=1e-6)
        assert off.tolist() == [offsets.get(i, 0.0) for i in index.ids]
        assert top == pytest.approx(max(want_pop), rel=1e-6)
        # a coarse index's candidates only (issue 11): the same values at those rows, the catalogue's top
        at = torch.tensor([2, 0])
        pop_at, new_at, off_at, top_at = rows.read(index, len(index.ids), now, at)
        assert pop_at.tolist() == pytest.approx([want_pop[2], want_pop[0]], rel=1e-6) and top_at == top
        assert new_at.tolist() == pytest.approx([want_new[2], want_new[0]], rel=1e-6)
        assert off_at.tolist() == [off[2].item(), off[0].item()]

    _feed(s, [("e1", "u1", "a", 0.0, None), ("e2", "u2", "a", 5.0, None), ("e3", "u1", "b", 6.0, None)])
    check(6.0)
    _feed(s, [("e4", "u3", "c", 7.0, None)])
    s.note_item("b", -20.0)
    check(7.0)
    with s.excluding("e2"):  # the learned ranker reads a click's own count taken out
        check(7.0)
    check(7.0)
    offsets["c"] = -1.0; offsets["b"] = 0.25; s.mark_changed(["c", "b"])  # biases changed elsewhere (a retraction)
    check(7.0)
    offsets["c"] = 0.5; offsets["b"] = -0.25; rows.write_offsets(index, ["c", "b"])  # a ranker step's, into their rows
    assert not s.changed  # written, nothing left for the next read to refill
    check(7.0)
    offsets["a"] = 2.0; rows.write_offsets(index, ["a"])
    index.ids.append("d"); index.row["d"] = 3  # a new row, then a row given to another item
    offsets["d"] = 0.75; rows.write_offsets(index, ["d"])  # a row not filled yet: left to the next read
    index.reuse(0, "z")  # "z" must not inherit "a"'s bias
    offsets["z"] = -0.5; rows.write_offsets(index, ["z"])  # row 0 still filled for "a": not written there
    check(8.0)
    _feed(s, [("e5", "u4", "z", 8.0, None)])
    check(8.0)
    _feed(s, [("e6", "u4", "d", 10.0 * 600, None)])  # far in event time: the counts are rebased
    assert s.rebases == 1
    check(10.0 * 600)
    assert rows.read(index, 2, 8.0)[0].shape == (2,)  # a request's view of fewer rows reads only those


def test_row_stats_notice_a_row_given_away_while_they_read():
    """The writer gives a row away in two steps (row dict, then ids): a read in between is corrected at
    the next read instead of keeping the old item's counts."""
    import torch

    from coldstart.model.stats import RowStats

    s = StreamStats(popularity_half_life_s=10.0)
    _feed(s, [("e1", "u1", "a", 0.0, None)])
    index = _Index(["a", "b"])
    rows = RowStats(s, torch.device("cpu"))
    assert rows.read(index, 2, 0.0)[0].tolist() == [1.0, 0.0]
    index.evictions["untitled"] = 1
    del index.row["a"]  # half-way through giving row 0 to "n"
    rows.read(index, 2, 0.0)
    index.ids[0] = "n"; index.row["n"] = 0
    assert rows.read(index, 2, 0.0)[0].tolist() == [0.0, 0.0]


def test_remembered_clicks_leave_nothing_for_the_garbage_collector_to_scan() -> None:
    """Every full collection walks every tracked container with the GIL held (issue 11). A click's undo
    record was a list of (row, key, delta) tuples and each user's recent items a list: 43,000 tracked
    objects for 5,000 clicks here; then one flat tuple per click holding its row dicts, which the
    collector tracks for ever (5,006). Now the records name their rows by table and key: tuples of
    strings and numbers, which leave the collector's lists once it has seen them."""
    import gc

    gc.collect()
    before = len(gc.get_objects())
    s = StreamStats()
    for i in range(5_000):
        s.observe(f"e{i}", f"u{i % 500}", f"i{i % 300}", float(i), query=f"q{i % 40}")
    gc.collect()
    gc.collect()  # a tuple is untracked when a collection finds its items untracked: inner ones first
    assert len(gc.get_objects()) - before < 1_000  # the rows of 300 items and 40 queries, not the clicks
    full = s.popularity("i199", 4999.0)  # e4999 clicked i199
    with s.excluding("e4999"):  # the records still undo exactly
        assert s.popularity("i199", 4999.0) == pytest.approx(full - 1.0)
    assert s.popularity("i199", 4999.0) == pytest.approx(full)
    assert s.retract(["e4999"]) == 1 and s.items_of(["e4998"]) == {"i198"}
