"""``coldstart bench train`` on a small slice of the real Best Buy log, with the real model."""

from __future__ import annotations

import pytest

from coldstart.bench.train import bench_train
from coldstart.settings import Settings

pytestmark = pytest.mark.model


def test_each_precision_is_measured_beside_float32_on_the_same_batches() -> None:
    result = bench_train(Settings(device="cpu"), steps=2, batch_size=8, datasets=("bestbuy",), max_train=64,
                         max_test=32, log=lambda *_: None)
    per = result["bestbuy"]
    assert {"float32", "bfloat16", "base"} <= set(per)
    assert all(per[p]["samples_per_s"] > 0 and 0.0 <= per[p]["recall@10"] <= 1.0 for p in ("float32", "bfloat16"))
    # Same seed, same batches: only the arithmetic differs, so the two runs end close but not equal.
    assert per["bfloat16"]["last_loss"] == pytest.approx(per["float32"]["last_loss"], rel=0.05)
    assert per["bfloat16"]["last_loss"] != per["float32"]["last_loss"]
    [speed, recall] = result["rows"]
    assert speed[0].startswith("bestbuy: trainer samples/s, bfloat16") and float(speed[3]) > 0
    assert recall[2].endswith(f"base {per['base']['recall@10']:.4f}")
