"""The replay record: one event to write to Kafka, with its topic type, key, JSON value and log time."""

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
