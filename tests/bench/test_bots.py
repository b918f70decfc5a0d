"""``coldstart bench bots`` on a real log: what the guard leaves behind for other users."""

from __future__ import annotations

from coldstart.bench.bots import bench_bots
from coldstart.settings import Settings


def test_bots_injected_into_a_real_log_leave_popularity_and_co_clicks_as_the_clean_log_has_them():
    figures = bench_bots(Settings(), datasets=("amazon",))["datasets"]["amazon"]
    assert figures["bot_flagged"] >= 0.95 and figures["genuine_flagged"] <= 0.01, figures
    # Without the guard the bots move both (the benchmark would show nothing otherwise) ...
    assert figures["top10_same_guard_off"] < 1.0 and figures["neighbours_same_guard_off"] < 0.5, figures
    # ... with it, nothing a new visitor or a "people also clicked" list shows is moved, and that takes
    # taking a flagged user's earlier clicks back out: flagging from the 20th or 200th click leaves some.
    assert figures["top10_same_guard_on"] == 1.0, figures
    assert figures["neighbours_same_guard_on"] >= 0.99 > figures["neighbours_same_without_retraction"], figures
