"""The benchmarks' events: the Best Buy log, and the same events under other users (a new peak of
traffic with the log's texts and items)."""

from __future__ import annotations

import itertools
import time

from coldstart.settings import Settings


def bestbuy_events(settings: Settings, limit: int | None = None):
    from coldstart.replay import open_dataset

    events = open_dataset("bestbuy", settings.shared_data)
    return list(itertools.islice(events, limit) if limit else events)


def renamed(event, suffix: str):
    """The same event under another user and event id (same texts and items)."""
    from coldstart.replay import ReplayEvent

    value = {**event.value, "user_id": event.value["user_id"] + suffix, "event_id": event.value["event_id"] + suffix,
             "ts": time.time()}
    return ReplayEvent(event.type, event.key + suffix, value, value["ts"])
