"""Validation of incoming events: every malformed input gets a stable reason code."""

from __future__ import annotations

import json

import pytest

from coldstart.errors import BadEvent
from coldstart.contract import DeadLetter, parse_click, parse_item, parse_search, parse_ts
from coldstart.streams.state import ProfileState, RecentEvent


def raw(**body) -> bytes:
    return json.dumps(body).encode()


def test_search_parses_and_normalises():
    ev = parse_search(raw(event_id="e", user_id="u", ts=1_700_000_000, query="  Halo   3 ", extra="ignored"), b"u")
    assert (ev.event_id, ev.user_id, ev.ts, ev.query) == ("e", "u", 1_700_000_000.0, "halo 3")


def test_click_optional_fields():
    ev = parse_click(raw(event_id="e", user_id="u", ts="2011-08-01 10:00:00", item_id=123, position=2), b"u")
    assert ev.item_id == "123" and ev.position == 2 and ev.query is None
    assert ev.ts == 1312192800.0  # naive ISO times are UTC


@pytest.mark.parametrize("value,reason", [
    (b"\xff\xfe", "not_json"),
    (b"[1,2]", "not_object"),
    (raw(user_id="u", ts=1.7e9, query="q"), "missing_field"),
    (raw(event_id="e", user_id="u", ts=1.7e9, query=""), "empty_text"),
    (raw(event_id="e", user_id="u", ts=1.7e9, query=5), "bad_field"),
    (raw(event_id="e", user_id="u", ts="soon", query="q"), "bad_timestamp"),
    (raw(event_id="e", user_id="u", ts=12, query="q"), "bad_timestamp"),
    (raw(event_id="e", user_id="u", ts=True, query="q"), "bad_timestamp"),
    (raw(event_id="e", user_id=["u"], ts=1.7e9, query="q"), "bad_field"),
    (b"{" + b" " * 70_000 + b"}", "too_large"),
])
def test_search_rejections(value, reason):
    with pytest.raises(BadEvent) as info:
        parse_search(value, b"u")
    assert info.value.reason == reason


def test_future_timestamp_rejected_and_milliseconds_accepted():
    with pytest.raises(BadEvent, match="future"):
        parse_ts(2e9, now=1.7e9)
    assert parse_ts(1_700_000_000_000) == 1_700_000_000.0


def test_negative_position_rejected():
    with pytest.raises(BadEvent) as info:
        parse_click(raw(event_id="e", user_id="u", ts=1.7e9, item_id="i", position=-1), b"u")
    assert info.value.reason == "bad_field"


def test_item_needs_title_and_matching_key():
    assert parse_item(raw(item_id="i", title="Stapler"), b"i").title == "Stapler"
    with pytest.raises(BadEvent) as info:
        parse_item(raw(item_id="i", title="Stapler"), b"j")
    assert info.value.reason == "key_mismatch"


def test_dead_letter_keeps_original_bytes():
    exc = BadEvent("not_json", "boom")
    dl = DeadLetter.of(exc, "events.search", 1, 42, b"u", b"\x00\xffraw", 1.0)
    assert dl.original() == b"\x00\xffraw" and dl.reason == "not_json" and dl.offset == 42
    assert DeadLetter.loads(dl.dumps()).original() == b"\x00\xffraw"


def test_profile_state_is_bounded_and_round_trips():
    import numpy as np

    state = ProfileState("u")
    for i in range(30):
        state.add(RecentEvent(f"e{i}", "search", float(i), text=f"q{i}"), max_events=5, max_seen=8)
    assert len(state.events) == 5 and len(state.seen) == 8 and state.n_events == 30
    assert [e.event_id for e in state.events] == [f"e{i}" for i in range(25, 30)]
    state.vector = np.arange(4, dtype=np.float32)
    state.version = "v1"
    back = ProfileState.loads(state.dumps())
    assert back.events == state.events and back.version == "v1"
    assert np.array_equal(back.vector, state.vector)


def test_out_of_order_events_kept_in_time_order():
    state = ProfileState("u")
    for eid, ts in [("a", 3.0), ("b", 1.0), ("c", 2.0)]:
        state.add(RecentEvent(eid, "search", ts, text=eid), max_events=10, max_seen=10)
    assert [e.event_id for e in state.events] == ["b", "c", "a"]


def test_history_is_refused_by_live_bounds_and_accepted_when_replaying_it():
    from coldstart.settings import Settings

    old = raw(event_id="e", user_id="u", ts="1997-09-20T10:00:00Z", item_id="i")
    with pytest.raises(BadEvent, match="COLDSTART_MIN_EVENT_TS") as info:
        parse_click(old, b"u", now=1.7e9)
    assert info.value.reason == "bad_timestamp"
    s = Settings.from_env({"COLDSTART_MIN_EVENT_TS": "0", "COLDSTART_MAX_FUTURE_SKEW_S": "60"})
    ev = parse_click(old, b"u", now=1.7e9, min_ts=s.min_event_ts, max_future_s=s.max_future_skew_s)
    assert ev.ts == 874_749_600.0
    with pytest.raises(BadEvent, match="60 s in the future"):
        parse_ts(1.7e9 + 120, now=1.7e9, max_future_s=s.max_future_skew_s)
