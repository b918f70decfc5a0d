"""The table value format: binary version 1 round-trips exactly, values of older workers still load."""

import numpy as np
import pytest

from coldstart.streams.state import FORMAT_VERSION, ProfileState, RecentEvent


@pytest.fixture
def make_state():
    def make(n_events: int = 3, vector: bool = True) -> ProfileState:
        state = ProfileState("usér-1")
        for i in range(n_events):
            click = i % 2 == 1
            state.add(RecentEvent(f"e{i}", "click" if click else "search", 1.3e9 + i + 0.125,
                                  text=None if i == 2 else f"halo {i} – édition",
                                  item_id=f"sku{i}" if click else None, weight=0.7 + i / 3),
                      max_events=20, max_seen=256)
        if vector:
            state.vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
            state.version = "base-53aa51172d14"
        state.updated_ts = 1.3e9 + 0.5
        return state
    return make


def assert_same(a: ProfileState, b: ProfileState) -> None:
    assert (a.user_id, a.events, a.seen, a.n_events, a.n_clicks, a.version, a.updated_ts) == \
           (b.user_id, b.events, b.seen, b.n_events, b.n_clicks, b.version, b.updated_ts)
    if a.vector is None:
        assert b.vector is None
    else:
        assert b.vector.dtype == np.float32 and np.array_equal(a.vector, b.vector)


@pytest.mark.parametrize("n_events,vector", [(0, False), (1, True), (3, True), (3, False)])
def test_binary_round_trip_is_exact(make_state, n_events, vector):
    state = make_state(n_events, vector)
    raw = state.dumps()
    assert raw[0] == FORMAT_VERSION
    assert_same(state, ProfileState.loads(raw))


def test_binary_is_smaller_than_the_json_it_replaces(make_state):
    state = make_state(3)
    assert len(state.dumps()) < 0.8 * len(state.dumps_json())


def test_values_written_by_older_workers_still_load(make_state):
    state = make_state(3)
    back = ProfileState.loads(state.dumps_json())
    assert [e.event_id for e in back.events] == ["e0", "e1", "e2"]
    assert np.array_equal(back.vector, state.vector) and back.version == state.version


def test_a_value_from_a_newer_format_is_refused_with_a_reason(make_state):
    raw = bytes([FORMAT_VERSION + 1]) + make_state(1).dumps()[1:]
    with pytest.raises(ValueError, match="unknown profile format version 2"):
        ProfileState.loads(raw)
