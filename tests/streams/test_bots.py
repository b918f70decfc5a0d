"""Issue 10: a bot's clicks are flagged back to its first one.

The guard flags a click flood at its 20th click; before this, the 19 clicks that built the evidence had
already been counted in the popularity every new visitor is shown (and in co-clicks and transitions).
Now those of the same batch go to the DLQ with the reason, and those of earlier batches are taken back
out of the stream statistics (``coldstart_bot_events_flagged_back_total``): each bot click is
applied or dead-lettered exactly once. What that leaves of popularity and co-clicks on the real logs is measured by
``coldstart bench bots`` (tests/bench/test_bots.py); the statistics' arithmetic by ``StreamStats.retract``'s
doctest.
"""

from __future__ import annotations

import time

import pytest

from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

BOT_CLICKS = 25
FLAGGED_AT = 20  # the guard's impossible_rate: 20 clicks within 60 s of event time


@pytest.fixture(scope="module")
def own_worker(kafka_bootstrap, tmp_path_factory):
    """A worker of its own: popularity is what this test reads, and other modules' clicks would move it."""
    from coldstart.settings import Settings
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    w = WorkerProcess(kafka_bootstrap, unique("cs-bots"), tmp_path_factory.mktemp("bots") / "data").start()
    yield w
    w.stop()


def test_a_flagged_bots_earlier_clicks_are_dead_lettered_or_taken_back_out_once(own_worker, produce):
    worker = own_worker
    genuine_item, pushed_item = unique("game"), unique("pushed")
    # A new group reads the topics from the start: let it through what earlier tests left there first,
    # so the counts below are this test's alone.
    deadline = time.monotonic() + 180
    seen, still = -1.0, 0
    while still < 6:
        assert time.monotonic() < deadline, worker.log_tail()
        count = worker.metric("coldstart_batch_events_sum")
        still = still + 1 if count == seen else 0
        seen = count
        time.sleep(0.5)
    learned0 = worker.get("/health").get("clicks_learned", 0)
    now = time.time()
    for n in range(3):  # three shoppers click the genuinely popular item once each
        user = unique("shopper")
        produce("events.click", user, {"event_id": unique("c"), "user_id": user, "ts": now - 100 + n,
                                       "item_id": genuine_item, "query": "halo reach"})
    deadline = time.monotonic() + 90
    while worker.get("/health").get("clicks_learned", 0) < learned0 + 3:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.3)

    dlq0 = worker.metric("coldstart_dlq_total", reason="impossible_rate")
    back0 = worker.metric("coldstart_bot_events_flagged_back_total")
    bot = unique("bot")
    for i in range(BOT_CLICKS):  # one click a second of event time: a script pushing one product
        produce("events.click", bot, {"event_id": unique("b"), "user_id": bot, "ts": now - 50 + i,
                                      "item_id": pushed_item, "query": "halo reach"})

    def dead() -> float:
        return worker.metric("coldstart_dlq_total", reason="impossible_rate") - dlq0

    while dead() < BOT_CLICKS - FLAGGED_AT + 1:  # the 20th to the 25th at least
        assert time.monotonic() < deadline + 60, (dead(), worker.log_tail())
        time.sleep(0.3)
    time.sleep(1.0)
    # The 19 clicks that passed while the evidence built up were flagged back ...
    assert worker.metric("coldstart_bot_events_flagged_back_total") - back0 == FLAGGED_AT - 1
    # ... and every bot click was either applied to the bot's own profile (an earlier batch) or
    # dead-lettered with the reason (this batch on): once, none lost, none both.
    applied = worker.recommendations(bot)["n_events"]
    assert applied + dead() == BOT_CLICKS, (applied, dead(), worker.log_path)
