"""The capacity table of ``coldstart bench scale`` (the pure part: no broker needed)."""

from __future__ import annotations

import math

import pytest

from coldstart.bench.scale import capacity_table


def test_a_higher_target_rate_needs_more_workers_and_partitions() -> None:
    rows = capacity_table(1_400.0)
    assert [r["target"] for r in rows] == [1_000, 10_000, 100_000]
    workers = [r["workers"] for r in rows]
    assert workers == sorted(workers) and workers[0] < workers[1] < workers[2]
    assert [r["partitions"] for r in rows] == sorted(r["partitions"] for r in rows)


@pytest.mark.parametrize("rate", [1.0, 37.5, 700.0, 980.0, 1_427.0, 12_345.0])
def test_partitions_are_a_power_of_two_at_least_twice_the_workers(rate: float) -> None:
    for r in capacity_table(rate):
        p, w = r["partitions"], r["workers"]
        assert p & (p - 1) == 0, p  # a power of two: a later doubling splits each partition in two
        assert p >= 2 * w
        assert p < 4 * w  # the smallest such power, not an arbitrary large one
        # Planned at the headroom: enough workers, and not one more than needed.
        assert w * rate * 0.7 >= r["target"]
        assert (w - 1) * rate * 0.7 < r["target"]


def test_less_headroom_means_more_workers() -> None:
    relaxed = capacity_table(1_000.0, targets=(10_000,), headroom=1.0)[0]
    careful = capacity_table(1_000.0, targets=(10_000,), headroom=0.5)[0]
    assert (relaxed["workers"], careful["workers"]) == (10, 20)


def test_a_low_target_still_gets_one_worker_and_two_partitions() -> None:
    assert capacity_table(1e6, targets=(1,))[0] == {
        "target": 1, "workers": 1, "partitions": 2, "per_worker_rate": 1e6, "headroom": 0.7}


@pytest.mark.parametrize("rate", [0, -5.0, math.nan, math.inf])
def test_a_rate_that_is_not_positive_is_refused_with_its_value(rate: float) -> None:
    with pytest.raises(ValueError, match="per_worker_rate must be a positive number"):
        capacity_table(rate)


@pytest.mark.parametrize("headroom", [0, 1.5, -0.1])
def test_a_headroom_outside_0_1_is_refused(headroom: float) -> None:
    with pytest.raises(ValueError, match="headroom"):
        capacity_table(1_000.0, headroom=headroom)


def test_the_cost_each_added_worker_adds_is_the_slope_of_cpu_per_event() -> None:
    from coldstart.bench.scale import cost_per_worker

    # Every worker follows every click for its item index: total CPU per event grows with k.
    fixed, per_worker = cost_per_worker({1: 0.6, 2: 0.7, 4: 0.9})
    assert (round(fixed, 6), round(per_worker, 6)) == (0.5, 0.1)
    assert cost_per_worker({1: 0.6, 2: 0.6, 4: 0.6})[1] == 0.0  # perfectly linear scaling
    assert math.isnan(cost_per_worker({1: 0.6})[1])  # one k: no slope to fit
