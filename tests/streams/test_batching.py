"""The batch window (issue 11): counted from the oldest waiting event, filled while a batch runs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from coldstart.streams.batching import BatchWindow


def replay(arrivals: list[float], durations: list[float], max_size: int, within: float):
    """Drive a window as ``take_batches`` does, on a simulated clock: events join the window as they
    arrive, also while a batch is processed. Returns (start time of each event's batch, batches)."""
    window: BatchWindow[int] = BatchWindow(max_size, within)
    started: dict[int, float] = {}
    batches: list[list[int]] = []
    pending = list(enumerate(arrivals))
    now = 0.0

    def admit_until(t: float) -> None:
        while pending and pending[0][1] <= t:
            i, at = pending.pop(0)
            window.add(i, now=at)

    while pending or len(window):
        admit_until(now)
        wait = window.wait_s(now)
        if wait is None:
            now = pending[0][1]
            continue
        if wait > 0:
            now = min(now + wait, pending[0][1]) if pending else now + wait
            continue
        batch = window.take()
        batches.append(batch)
        for i in batch:
            started[i] = now
        now += durations[(len(batches) - 1) % len(durations)]
    return started, batches


def test_an_event_that_arrives_during_a_batch_does_not_wait_a_whole_window_after_it():
    # A 40 ms batch starts at 20 ms (a 20 ms window after the first event); an event arrives 10 ms
    # into it and has waited 30 ms when the batch ends, so it goes at once, at 60 ms (Faust's
    # take_events starts a new window when a batch ends: 80 ms).
    started, batches = replay([0.0, 0.030], [0.040], max_size=100, within=0.020)
    assert batches == [[0], [1]]
    assert started[0] == pytest.approx(0.020) and started[1] == pytest.approx(0.060)


def test_a_quiet_event_waits_the_window_for_company_and_no_longer():
    started, batches = replay([0.0, 0.010, 0.030, 1.0], [0.005], max_size=100, within=0.050)
    assert batches == [[0, 1, 2], [3]]
    assert started[0] == pytest.approx(0.050) and started[3] == pytest.approx(1.050)


@settings(max_examples=300, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=200),
       durations=st.lists(st.floats(0.0, 0.3), min_size=1, max_size=20),
       max_size=st.integers(1, 64), within=st.floats(0.0, 0.1))
def test_every_event_once_in_order_within_bounds(gaps, durations, max_size, within):
    arrivals = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    started, batches = replay(arrivals, durations, max_size, within)
    assert [i for batch in batches for i in batch] == list(range(len(arrivals)))
    assert all(1 <= len(batch) <= max_size for batch in batches)
    # A batch that leaves before the oldest event's window ran out is a full one.
    for batch in batches:
        if len(batch) < max_size:
            assert started[batch[0]] >= arrivals[batch[0]] + within - 1e-9
    # The bound that matters: an event's batch starts by the end of its window, or, when a batch is
    # running then, as soon as that batch ends (when fewer than max_size events are ahead of it).
    ends = sorted((started[b[0]], started[b[0]] + durations[k % len(durations)]) for k, b in enumerate(batches))
    for i, at in enumerate(arrivals):
        due = at + within
        busy_until = next((end for start, end in ends if start <= due < end), due)
        ahead = sum(1 for j, a in enumerate(arrivals) if j < i and started[j] >= busy_until - 1e-12)
        if ahead < max_size:
            assert started[i] <= max(due, busy_until) + 1e-9, (i, at, started[i], due, busy_until)


def test_refuses_a_window_that_cannot_batch():
    with pytest.raises(ValueError, match="max_size >= 1"):
        BatchWindow(0, 0.05)
