"""Pacing and encoding without a broker; the stream, evaluation and benchmark tests replay through a real Kafka."""

from __future__ import annotations

import json

import pytest

from coldstart.errors import KafkaUnavailable
from coldstart.replay import ReplayEvent, topic_for
from coldstart.replay.producer import Pacer, encode, produce


def test_rate_schedule_has_no_drift():
    pacer = Pacer(rate=100.0)
    # Sending late by a few ms each time does not push the schedule back.
    now = 0.0
    for index in range(1000):
        now += pacer.wait(index, 0.0, now) + 0.004
    assert pacer.due(1000, 0.0, now) == pytest.approx(10.0)


def test_rate_backlog_is_capped_at_one_second():
    pacer = Pacer(rate=10.0)
    assert pacer.wait(0, 0.0, now=0.0) == 0.0
    # Stalled for 5 s: at most one second (10 events) goes out at once, then the pace resumes.
    sent_now = [i for i in range(1, 40) if pacer.wait(i, 0.0, now=5.0) == 0.0]
    assert len(sent_now) <= 11
    assert pacer.wait(sent_now[-1] + 1, 0.0, now=5.0) == pytest.approx(0.1)


def test_speedup_follows_log_time_and_none_is_immediate():
    pacer = Pacer(speedup=10.0)
    assert [pacer.wait(i, ts, now=0.0) for i, ts in enumerate([100.0, 100.0, 150.0])] == [0.0, 0.0, 5.0]
    assert Pacer().wait(123, 1e9, now=0.0) == 0.0
    with pytest.raises(ValueError):
        Pacer(rate=1.0, speedup=1.0)


def test_encode_is_raw_key_and_compact_json():
    event = ReplayEvent("click", "ü1", {"event_id": "e", "user_id": "ü1", "ts": 1.5, "item_id": "i"}, 1.5)
    key, value = encode(event)
    assert key == "ü1".encode() and json.loads(value) == event.value and b" " not in value
    assert topic_for(event.type) == "events.click"


async def test_unreachable_broker_is_kafka_unavailable():
    event = ReplayEvent("item", "i", {"item_id": "i", "title": "t"}, 0.0)
    with pytest.raises(KafkaUnavailable, match="127.0.0.1:1"):
        await produce([event], "127.0.0.1:1", progress=False)
