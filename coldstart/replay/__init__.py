"""Turning interaction logs into event streams.

The data flows: a source (a real log, a generic replay file, or the built-in site simulator) yields
:class:`ReplayEvent` records in time order; :func:`coldstart.replay.producer.produce` writes them to
Kafka. Only the producer knows about Kafka.

    adapters.py   bestbuy(), amazon_office(), generic(), open_dataset()  -> Iterator[ReplayEvent]
    simulator.py  SiteSimulator(seed).events(n)                          -> Iterator[ReplayEvent]
    producer.py   produce(events, bootstrap, rate=..., speedup=...)      -> ReplaySummary

``ReplayEvent.value`` is exactly the JSON body of the design's event contract:

- search: ``{"event_id", "user_id", "ts", "query", "session_id"?}``
- click:  ``{"event_id", "user_id", "ts", "item_id", "query"?, "position"?}``
- item:   ``{"item_id", "title", "category"?, "ts"?}``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

EventType = Literal["search", "click", "item"]

_TOPICS: dict[str, str] = {
    "search": "events.search",
    "click": "events.click",
    "item": "catalog.items",
}


@dataclass(frozen=True, slots=True)
class ReplayEvent:
    """One record to replay: its topic type, Kafka key, JSON value and log time (epoch seconds).

    ``key`` is the user id for searches and clicks (so one worker owns a user) and the item id for
    catalog items.
    """

    type: EventType
    key: str
    value: dict = field(hash=False)
    ts: float


def topic_for(type: str) -> str:  # noqa: A002 - mirrors ReplayEvent.type
    """The Kafka topic an event type is written to.

    >>> topic_for("search"), topic_for("click"), topic_for("item")
    ('events.search', 'events.click', 'catalog.items')
    """
    try:
        return _TOPICS[type]
    except KeyError:
        raise ValueError(f"unknown event type {type!r}; expected one of {sorted(_TOPICS)}") from None


from coldstart.replay.adapters import (  # noqa: E402 - adapters import ReplayEvent from here
    AdapterStats,
    amazon_office,
    bestbuy,
    generic,
    open_dataset,
)
from coldstart.replay.simulator import SiteSimulator  # noqa: E402

__all__ = [
    "AdapterStats",
    "EventType",
    "ReplayEvent",
    "SiteSimulator",
    "amazon_office",
    "bestbuy",
    "generic",
    "open_dataset",
    "topic_for",
]
