"""``coldstart bench catalog``'s coarse-index figures on a small synthetic catalogue: the same users ranked
over every item and over the coarse index's candidates, with the real encoder's read path."""

from __future__ import annotations

import pytest
import torch

from coldstart.bench.catalog import coarse_request_times, importance_batch_times

pytestmark = pytest.mark.model


def test_coarse_request_times_reports_both_paths_on_the_same_users() -> None:
    out = coarse_request_times(20_000, requests=8, dev=torch.device("cpu"), clicks=5_000)
    for kind in ("clustered", "random"):
        got = out[kind]
        assert got["lists"] == 128 and 0 < got["candidates"] < 20_000  # a fraction of the catalogue read
        assert 0.0 <= got["overlap"] <= 1.0 and got["p99_s"] >= got["p50_s"] > 0
        assert got["learn_click_p50_s"] > 0 and got["exact_learn_click_p50_s"] > 0
    assert out["clustered"]["overlap"] >= 0.7, out  # near neighbours found where there is structure


def test_importance_batch_times_reports_both_paths_and_the_sampled_error() -> None:
    out = importance_batch_times(20_000, torch.device("cpu"), batches=2, events=16, clicks=1_000)
    assert out["events"] == 16 and out["p50_s"] > 0 and out["exact_p50_s"] > 0
    assert out["max_s"] >= out["p50_s"] and out["exact_max_s"] >= out["exact_p50_s"]
    for stages in (out["stage_p50_s"], out["exact_stage_p50_s"]):  # the whole batch, the ranker's steps included
        assert {"learn", "importance", "profile"} <= stages.keys()
    assert out["batch_p50_s"] >= out["stage_p50_s"]["importance"] > 0
    # the sampled estimates are estimates, but of the same quantities: a rank percentile is in [0, 1]
    assert 0.0 <= out["rank_err_max"] <= 0.1 and 0.0 <= out["loss_err_mean"] < 1.0, out
