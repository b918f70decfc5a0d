"""The replay record: one event to write to Kafka, with its topic type, key, JSON value and log time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from coldstart.contract import CATALOG, CLICK, SEARCH

EventType = Literal["search", "click", "item"]

_TOPICS: dict[str, str] = {"search": SEARCH, "click": CLICK, "item": CATALOG}  # names from the wire contract


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


class Rebase:
    """Shift a log's times so its first event lands at ``start_ts`` (gaps kept), for replaying history
    into workers that refuse old times (``COLDSTART_MIN_EVENT_TS``, issue 8). ``shift_s`` says by how
    much, for the replay summary; ``first_ts`` is the log's own first time (also without shifting).

    >>> r = Rebase(start_ts=1_700_000_000.0)
    >>> [(e.ts, e.value["ts"]) for e in r([ReplayEvent("click", "u", {"ts": 874_749_600.0}, 874_749_600.0),
    ...                                     ReplayEvent("click", "u", {"ts": 874_749_660.0}, 874_749_660.0)])]
    [(1700000000.0, 1700000000.0), (1700000060.0, 1700000060.0)]
    >>> r.shift_s, r.first_ts
    (825250400.0, 874749600.0)
    """

    def __init__(self, start_ts: float | None) -> None:
        self.start_ts = start_ts  # None: count only, keep the log's times
        self.shift_s = 0.0
        self.first_ts: float | None = None

    def __call__(self, events):
        for event in events:
            if self.first_ts is None:
                self.first_ts = event.ts
                if self.start_ts is not None:
                    self.shift_s = self.start_ts - event.ts
            if not self.shift_s:
                yield event
                continue
            value = dict(event.value)
            if isinstance(value.get("ts"), (int, float)) and not isinstance(value.get("ts"), bool):
                value["ts"] = value["ts"] + self.shift_s
            elif "ts" in value:
                value["ts"] = event.ts + self.shift_s  # an ISO string: the event's own time, shifted
            yield ReplayEvent(event.type, event.key, value, event.ts + self.shift_s)
