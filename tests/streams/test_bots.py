"""Issue 10: a bot's clicks are flagged back to its first one, on every worker of the group.

The guard flags a click flood at its 20th click; before this, the 19 clicks that built the evidence had
already been counted in the popularity every new visitor is shown (and in co-clicks and transitions).
Now those of the same batch go to the DLQ with the reason, and those of earlier batches are taken back
out of the stream statistics (``coldstart_bot_events_flagged_back_total``): each bot click is applied or
dead-lettered exactly once. Only the worker that owns the bot's partition sees all of its events; the
other workers' catalog readers count every click of the topic, so they read the DLQ and keep the bot's
dead-lettered clicks out of their statistics too (``coldstart_bot_clicks_kept_out_total``). What that
The events the owner had applied before it flagged the bot are in no DLQ record: the owner names
them in a ``FlaggedBack`` record on events.audit, and every worker takes them out as well. What that
leaves of popularity and co-clicks on the real logs is measured by ``coldstart bench bots``
(tests/bench/test_bots.py); the statistics' arithmetic by ``StreamStats.retract``'s doctest.
"""

from __future__ import annotations

import time

import pytest

from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

BOT_CLICKS = 25
FLAGGED_AT = 20  # the guard's impossible_rate: 20 clicks within 60 s of event time


@pytest.fixture(scope="module")
def group(kafka_bootstrap, tmp_path_factory):
    """Two workers of one app (one partition each): counts read here are this module's alone."""
    from coldstart.settings import Settings
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    app_id, root = unique("cs-bots"), tmp_path_factory.mktemp("bots")
    workers = [WorkerProcess(kafka_bootstrap, app_id, root / f"w{n}").start() for n in range(2)]
    yield workers
    for w in workers:
        w.stop()


def total(workers, name: str, **labels) -> float:
    return sum(w.metric(name, **labels) for w in workers)


def wait_quiet(workers, timeout: float = 180.0) -> None:
    """Until no worker has completed a batch for 3 s: a new group reads the topics from the start, so
    what earlier tests left there is through before this test counts anything."""
    deadline = time.monotonic() + timeout
    seen, still = -1.0, 0
    while still < 6:
        assert time.monotonic() < deadline, [w.log_tail() for w in workers]
        count = total(workers, "coldstart_batch_events_sum")
        still = still + 1 if count == seen else 0
        seen = count
        time.sleep(0.5)


def test_a_flagged_bots_clicks_are_dead_lettered_or_taken_back_out_once_on_every_worker(group, produce):
    deadline = time.monotonic() + 240
    while not all(w.get_status("/health")[0] == 200 for w in group):  # both own a partition
        assert time.monotonic() < deadline, [w.log_tail() for w in group]
        time.sleep(0.5)
    wait_quiet(group)
    dlq0 = [w.metric("coldstart_dlq_total", reason="impossible_rate") for w in group]
    back0 = total(group, "coldstart_bot_events_flagged_back_total")
    kept0 = [w.metric("coldstart_bot_clicks_kept_out_total") for w in group]
    bot, pushed_item, now = unique("bot"), unique("pushed"), time.time()
    for i in range(BOT_CLICKS):  # one click a second of event time: a script pushing one product
        produce("events.click", bot, {"event_id": unique("b"), "user_id": bot, "ts": now - 50 + i,
                                      "item_id": pushed_item, "query": "halo reach"})

    def dead() -> list[float]:
        return [w.metric("coldstart_dlq_total", reason="impossible_rate") - d0 for w, d0 in zip(group, dlq0)]

    def kept() -> list[float]:
        return [w.metric("coldstart_bot_clicks_kept_out_total") - k0 for w, k0 in zip(group, kept0)]

    while sum(dead()) < BOT_CLICKS - FLAGGED_AT + 1 or min(kept()) < sum(dead()):  # the 20th on, at least
        assert time.monotonic() < deadline, (dead(), kept(), [w.log_tail() for w in group])
        time.sleep(0.3)
    time.sleep(1.0)
    owner = max(range(2), key=lambda n: dead()[n])
    assert dead()[1 - owner] == 0  # one worker owns the bot's partition and flags it
    # The 19 clicks that passed while the evidence built up were flagged back ...
    assert total(group, "coldstart_bot_events_flagged_back_total") - back0 == FLAGGED_AT - 1
    # ... and every bot click was either applied to the bot's own profile (an earlier batch) or
    # dead-lettered with the reason (this batch on): once, none lost, none both.
    applied = group[owner].recommendations(bot)["n_events"]
    assert applied + sum(dead()) == BOT_CLICKS, (applied, dead())
    # The other worker, which never saw the bot's events in its stream, keeps every dead-lettered one
    # out of its statistics (its catalog reader had counted them from events.click).
    assert kept()[1 - owner] == sum(dead()), (kept(), dead())
    # The item the bot pushed was known only by the bot's query (no title): its learned text went
    # with the clicks on both workers (the flagged-back ones by the audit record), so it leaves the
    # item index, and a visitor who searches that query is not shown it, whichever worker owns them
    # (before, the retracted clicks were out of popularity but still made the item's vector).
    probe = unique("probe")
    produce("events.search", probe, {"event_id": unique("s"), "user_id": probe, "ts": now, "query": "halo reach"})
    group[0].wait_for_events(probe, 1)
    while pushed_item in [r["item_id"] for r in group[0].recommendations(probe, k=50)["items"]]:
        assert time.monotonic() < deadline, "the bot's item is still recommended"
        time.sleep(0.5)
