"""bench/augment.py end to end on a tiny synthetic titled log (real MiniLM, a few steps, no real data)."""

from __future__ import annotations

import pytest

import coldstart.bench.importance as importance
from coldstart.bench.augment import bench_augment
from coldstart.bench.importance import Click
from coldstart.settings import Settings

TITLES = {f"i{k}": f"Brand{k % 3} {thing} Deluxe, Model {k}" for k, thing in enumerate(
    ["Stapler", "Kettle", "Router", "Headset", "Desk Lamp", "Camping Tent", "Drill", "Blender"])}


def synthetic_log() -> tuple[list[Click], dict[str, str]]:
    """6 users clicking the first 5 items often and the last 3 rarely or never (cold)."""
    clicks = []
    for t in range(60):
        item = f"i{t % 5}" if t % 10 else f"i{5 + (t // 10) % 2}"  # i5, i6 clicked a few times, i7 never
        clicks.append(Click(user=f"u{t % 6}", ts=float(t), item=item, prior=t // 6))
    return clicks, dict(TITLES)


@pytest.mark.model
@pytest.mark.parametrize("full_encoder", [False, True])
def test_every_arm_is_scored_on_cold_warm_and_all_clicks(monkeypatch: pytest.MonkeyPatch, full_encoder: bool) -> None:
    monkeypatch.setattr(importance, "load_clicks", lambda settings, name: synthetic_log())
    res = bench_augment(Settings.from_env({}, device="cpu"), steps=2, seeds=(0, 1), datasets=("synthetic",),
                        modes=("off", "pseudo", "neighbours"), max_train=100, full_encoder=full_encoder,
                        log=lambda *_: None)
    log = res["synthetic"]
    assert log["stats"]["test_cold"] + log["stats"]["test_warm"] == log["stats"]["test_n"] > 0
    assert log["arms"]["off"]["rows_added"] == 0
    assert log["arms"]["pseudo"]["kinds"] == {"pseudo": log["arms"]["pseudo"]["rows_added"]} != {}
    for arm in log["arms"].values():
        assert set(arm["all"]) == {"mean", "sd", "ratio"} and len(arm["runs"]) == 2
    assert log["arms"]["off"]["all"]["ratio"] == pytest.approx(1.0)
    assert set(res["verdict"]) == {"pseudo", "neighbours"} and res["rows"]
