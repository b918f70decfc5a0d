"""Adapters against small slices of the real logs in ../shared/data, and generic files written here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coldstart.errors import DatasetMissing
from coldstart.replay import AdapterStats, amazon_office, bestbuy, generic, open_dataset

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"real logs not found at {SHARED_DATA} (a fresh clone has no ../shared/data)",
)


def ids(events) -> list[str]:
    return [e.value["event_id"] for e in events]


@needs_data
def test_bestbuy_slice_is_search_then_click_in_time_order():
    stats = AdapterStats()
    events = list(bestbuy(SHARED_DATA / "bestbuy-xbox", limit=200, stats=stats))
    assert len(events) == 400
    assert stats.events == Counter(search=200, click=200)
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    assert {e.type for e in events} == {"search", "click"}  # no item events: no titles in this log

    searched: set[tuple[str, str]] = set()
    for e in events:
        assert e.key == e.value["user_id"] and e.value["ts"] == e.ts
        if e.type == "search":
            searched.add((e.key, e.value["query"]))
        else:
            assert (e.key, e.value["query"]) in searched, "a click came before its search"
            assert "position" not in e.value and e.value["item_id"].isdigit()


@needs_data
def test_bestbuy_ids_are_stable_and_unique():
    first = ids(bestbuy(SHARED_DATA / "bestbuy-xbox", limit=200))
    assert first == ids(bestbuy(SHARED_DATA / "bestbuy-xbox", limit=200))
    assert len(set(first)) == len(first)
    assert all(i.startswith("bestbuy-") for i in first)


@needs_data
def test_amazon_items_first_then_each_users_sequence_once():
    folder = SHARED_DATA / "amazon-office"
    events = list(amazon_office(folder, split="test", limit_users=50))
    types = [e.type for e in events]
    n_items = types.count("item")
    assert n_items == 3459 and set(types[:n_items]) == {"item"} and set(types[n_items:]) == {"click"}
    assert all(e.value["title"] for e in events[:n_items])
    assert all(a.ts < b.ts for a, b in zip(events[n_items:], events[n_items + 1 :]))
    assert events[n_items - 1].ts < events[n_items].ts

    # Rebuild each user's sequence from the CSV: history of their last row + its target.
    import ast
    import csv

    with (folder / "test_Office_Products.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    clicks_by_user: dict[str, list[str]] = {}
    for e in events[n_items:]:
        clicks_by_user.setdefault(e.key, []).append(e.value["item_id"])
    assert len(clicks_by_user) == 50
    for user, clicked in clicks_by_user.items():
        user_rows = [r for r in rows if r["user_id"] == user]
        for row in user_rows:  # every row's history + target is a window of the emitted sequence
            window = [str(i) for i in ast.literal_eval(row["history_item_id"])] + [row["item_id"]]
            assert any(clicked[k : k + len(window)] == window for k in range(len(clicked)))
        assert clicked[-1] == user_rows[-1]["item_id"]
        first_history = ast.literal_eval(user_rows[0]["history_item_id"])
        assert len(clicked) == len(first_history) + len(user_rows), "an item was emitted twice"
    assert len(set(ids(events[n_items:]))) == len(events) - n_items  # (user, position) once each


@needs_data
def test_open_dataset_resolves_names_and_folders():
    assert next(iter(open_dataset("amazon:valid", SHARED_DATA))).type == "item"
    assert next(iter(open_dataset(SHARED_DATA / "bestbuy-xbox", SHARED_DATA))).type == "search"


def test_generic_jsonl_sorts_by_iso_or_epoch_ts(tmp_path):
    rows = [
        {"type": "click", "event_id": "c1", "user_id": "u1", "ts": "2024-01-01T00:00:10Z", "item_id": "i1"},
        {"type": "search", "event_id": "s1", "user_id": "u1", "ts": 1704067205, "query": "lamp"},
        {"type": "item", "item_id": "i1", "title": "Desk lamp"},
        {"type": "purchase", "user_id": "u1", "ts": 1704067206},
    ]
    path = tmp_path / "replay.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    stats = AdapterStats()
    events = list(generic(path, stats=stats))
    assert [e.type for e in events] == ["item", "search", "click"]
    assert [e.ts for e in events[1:]] == [1704067205.0, 1704067210.0]
    assert events[0].key == "i1" and events[2].key == "u1"
    assert events[2].value == {k: v for k, v in rows[0].items() if k != "type"}  # passed through as-is
    assert stats.skipped == Counter(unknown_type=1, not_json_object=1)


def test_generic_parquet_round_trip(tmp_path):
    rows = [
        {"type": "search", "event_id": "s1", "user_id": "u1", "ts": "2024-01-01 00:00:05", "query": "mug"},
        {"type": "click", "event_id": "c1", "user_id": "u1", "ts": "2024-01-01 00:00:09", "item_id": "i9"},
        {"type": "item", "item_id": "i9", "title": "Blue mug", "ts": "2024-01-01 00:00:00"},
    ]
    path = tmp_path / "replay.parquet"
    columns = dict.fromkeys(k for row in rows for k in row)  # from_pylist would take row 0's keys only
    pq.write_table(pa.table({c: [row.get(c) for row in rows] for c in columns}), path)
    events = list(open_dataset(path, tmp_path))
    assert [e.type for e in events] == ["item", "search", "click"]
    assert events[1].value == {k: v for k, v in rows[0].items() if k != "type"}  # no null columns
    assert events[2].value["item_id"] == "i9" and events[2].ts - events[1].ts == 4.0


@pytest.mark.parametrize(
    "open_missing",
    [
        lambda p: bestbuy(p),
        lambda p: amazon_office(p),
        lambda p: generic(p / "replay.jsonl"),
        lambda p: open_dataset(p / "nothing", p),
        lambda p: open_dataset("bestbuy", p),
    ],
)
def test_missing_input_names_the_path(tmp_path, open_missing):
    with pytest.raises(DatasetMissing, match=str(tmp_path)):
        open_missing(tmp_path)  # raised on the call, before iterating
