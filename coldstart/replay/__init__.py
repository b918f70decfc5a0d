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

from coldstart.replay.events import EventType, ReplayEvent, topic_for
from coldstart.replay.adapters import (
    AdapterStats,
    amazon_office,
    bestbuy,
    generic,
    open_dataset,
)
from coldstart.replay.simulator import SiteSimulator

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
