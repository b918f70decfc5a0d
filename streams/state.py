"""A user's profile as stored in the ``user_to_profile`` table: bounded and idempotent by event id.

Stored as compact JSON bytes (raw table values): the profile vector travels as base64 float32 with the
model version that made it, so a reader can tell whether it belongs to the vector space in service.

>>> p = ProfileState(user_id="u1")
>>> p.add(RecentEvent("e1", "search", 10.0, text="halo"), max_events=2, max_seen=4)
True
>>> p.add(RecentEvent("e1", "search", 10.0, text="halo"), max_events=2, max_seen=4)  # redelivered
False
>>> ProfileState.loads(p.dumps()).n_events
1
"""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np


@dataclasses.dataclass(slots=True)
class RecentEvent:
    event_id: str
    kind: str  # search | click
    ts: float
    text: str | None = None  # the query (search, or the query before a click)
    item_id: str | None = None  # the clicked item
    weight: float = 1.0  # its weight in the profile, fixed when scored (streams.processor.profile_weight)

    def to_json(self) -> list:
        return [self.event_id, self.kind, self.ts, self.text, self.item_id, round(self.weight, 4)]

    @classmethod
    def from_json(cls, row: list) -> "RecentEvent":
        return cls(*row)


@dataclasses.dataclass(slots=True)
class ProfileState:
    user_id: str
    events: list[RecentEvent] = dataclasses.field(default_factory=list)  # oldest first, bounded
    seen: list[str] = dataclasses.field(default_factory=list)  # recent event ids, bounded
    n_events: int = 0  # all events ever applied (the cold-start measure)
    n_clicks: int = 0
    vector: np.ndarray | None = None
    version: str | None = None
    updated_ts: float = 0.0

    def add(self, event: RecentEvent, max_events: int, max_seen: int) -> bool:
        """Apply one event; False (and no change) when its id was already applied."""
        if event.event_id in self.seen:
            return False
        self.seen.append(event.event_id)
        if len(self.seen) > max_seen:
            del self.seen[: len(self.seen) - max_seen]
        self.events.append(event)
        # Out-of-order arrivals are kept in time order; the newest max_events survive.
        if len(self.events) > 1 and self.events[-2].ts > event.ts:
            self.events.sort(key=lambda e: e.ts)
        if len(self.events) > max_events:
            del self.events[: len(self.events) - max_events]
        self.n_events += 1
        self.n_clicks += event.kind == "click"
        return True

    def clicked_items(self) -> list[str]:
        return [e.item_id for e in self.events if e.kind == "click" and e.item_id]

    def dumps(self) -> bytes:
        body = {
            "u": self.user_id,
            "e": [e.to_json() for e in self.events],
            "s": self.seen,
            "n": self.n_events,
            "c": self.n_clicks,
            "v": base64.b64encode(self.vector.astype(np.float32).tobytes()).decode() if self.vector is not None else None,
            "m": self.version,
            "t": self.updated_ts,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> "ProfileState":
        body = json.loads(raw)
        vector = body.get("v")
        return cls(
            user_id=body["u"],
            events=[RecentEvent.from_json(r) for r in body["e"]],
            seen=list(body["s"]),
            n_events=body["n"],
            n_clicks=body.get("c", 0),
            vector=np.frombuffer(base64.b64decode(vector), dtype=np.float32).copy() if vector else None,
            version=body.get("m"),
            updated_ts=body.get("t", 0.0),
        )
