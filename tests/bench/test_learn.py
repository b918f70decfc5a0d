"""``coldstart bench learn`` on the start of the real Best Buy log, with the real model."""

from __future__ import annotations

import pytest
import torch

from coldstart.bench.learn import bench_learn, count_torch_calls
from coldstart.settings import Settings

pytestmark = pytest.mark.model


def test_both_arms_time_the_same_stretch_of_the_stream_and_the_steps_are_counted() -> None:
    result = bench_learn(Settings(device="cpu"), warm=200, batches=6, batch_size=20)
    assert result["batches"] == 6
    assert result["steps"] > 0  # the ranker steps on every click of a fresh shop: there is something to time
    assert result["alone_mean_s"] > 0 and result["beside_mean_s"] > 0
    assert result["alone_p99_s"] >= result["alone_mean_s"] * 0.5
    assert result["torch_calls_per_step"] > 10  # a step is a softmax over features: many small calls
    alone, beside, calls = result["rows"]
    assert float(beside[3]) == pytest.approx(result["beside_mean_s"] / result["alone_mean_s"], abs=0.01)
    assert float(calls[1]) == pytest.approx(result["torch_calls_per_step"], abs=0.05)


def test_a_log_too_short_for_the_sizes_asked_is_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="fewer than"):
        bench_learn(Settings(device="cpu"), warm=10**7)


def test_the_counter_counts_calls_not_attribute_reads_and_stops_at_the_block() -> None:
    x = torch.ones(3)
    with count_torch_calls() as c:
        _ = x.device, x.dtype, x.shape
    assert c.calls == 0
    with count_torch_calls() as c:
        y = (x * 2).to(torch.float64)
    after = torch.ones(2) + 1  # outside: not counted
    assert c.calls == 2 and y.dtype == torch.float64 and after.sum() == 4
