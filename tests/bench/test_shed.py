"""``coldstart bench shed`` on the start of the real Best Buy log, with the real model."""

from __future__ import annotations

import pytest

from coldstart.bench.shed import backlog_recall, bench_shed
from coldstart.settings import Settings

pytestmark = pytest.mark.model


def test_a_cap_sheds_past_the_dense_steps_and_no_cap_sheds_nothing() -> None:
    # Small batches and few dense steps so that a short stretch of the log reaches the cap.
    settings = Settings(device="cpu", ranker_dense_steps=20)
    capped = backlog_recall(settings, "bestbuy", cap=1, limit=6_000, batch_size=200)
    free = backlog_recall(settings, "bestbuy", cap=0, limit=6_000, batch_size=200)
    assert free.shed == 0 and capped.shed > 0
    # Every step the uncapped run took past the dense ones and the capped run did not was shed (the
    # shed count also holds teaching clicks whose item had no vector yet, which step in neither run).
    assert capped.steps < free.steps and capped.shed >= free.steps - capped.steps
    assert capped.clicks_any == free.clicks_any > 0 and capped.clicks_1_5 == free.clicks_1_5
    assert 0.0 <= capped.recall_any <= 1.0 and 0.0 <= free.recall_any <= 1.0


def test_the_rows_compare_each_cap_with_no_cap_on_the_same_events() -> None:
    result = bench_shed(Settings(device="cpu", ranker_dense_steps=20), caps=(1,), limits={"bestbuy": 3_000})
    caps = [r["cap"] for r in result["runs"]]
    assert caps == [0, 1]
    (row,) = result["rows"]
    assert "at most 1 a batch" in row[0] and row[2].startswith("no cap")
