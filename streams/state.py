"""A user's profile as stored in the ``user_to_profile`` table: bounded and idempotent by event id.

The dedup window: a profile remembers the ids of its user's last ``seen_event_ids`` events
(``COLDSTART_SEEN_EVENT_IDS``, 256). A redelivered event whose id is still in that window changes
nothing (Kafka redelivers at most what followed the last committed offset, a few batches). An event
redelivered after 256 newer events of the same user would be applied a second time: its user's
``n_events`` counts it twice and it joins the recent events once more. Raise the setting when a
producer may resend older events; each id costs its length in the stored profile.

Stored as compact binary (raw table values), led by a format version byte so the format can change
without a migration: version 1 is a fixed header, the recent events' times and weights as packed
arrays, every string in one UTF-8 blob, and the profile vector as raw float32 with the
model version that made it (a reader can tell whether it belongs to the vector space in service).
Values written by older workers (JSON with a base64 vector, starting with ``{``) still load.

>>> p = ProfileState(user_id="u1")
>>> p.add(RecentEvent("e1", "search", 10.0, text="halo"), max_events=2, max_seen=4)
True
>>> p.add(RecentEvent("e1", "search", 10.0, text="halo"), max_events=2, max_seen=4)  # redelivered
False
>>> raw = p.dumps()
>>> raw[0], ProfileState.loads(raw).n_events
(1, 1)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import struct

import numpy as np


@dataclasses.dataclass(slots=True)
class RecentEvent:
    event_id: str
    kind: str  # search | click
    ts: float
    text: str | None = None  # the query (search, or the query before a click)
    item_id: str | None = None  # the clicked item
    weight: float = 1.0  # its weight in the profile, fixed when scored (coldstart.model.profile.profile_weights)

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
        """The current binary format (version 1, see the module doc)."""
        strings: list[str | None] = [self.user_id, self.version]
        for e in self.events:
            strings += (e.event_id, e.kind, e.text, e.item_id)
        strings += self.seen
        blob = _SEP.join(_NONE if x is None else x.encode() for x in strings)
        n = len(self.events)
        vec = b"" if self.vector is None else np.asarray(self.vector, dtype="<f4").tobytes()
        return b"".join((
            _HEADER.pack(FORMAT_VERSION, self.n_events, self.n_clicks, self.updated_ts, n, len(blob),
                         len(vec) // 4),
            struct.pack(f"<{2 * n}d", *(e.ts for e in self.events), *(e.weight for e in self.events)),
            blob,
            vec,
        ))

    @staticmethod
    def newest_event_ts(raw: bytes) -> float:
        """``updated_ts`` of a stored profile, read from the header alone (the expiry scan reads every
        profile of a partition; decoding each whole would cost far more).

        >>> ProfileState.newest_event_ts(ProfileState("u1", n_events=1, updated_ts=1.7e9).dumps())
        1700000000.0
        """
        if raw[:1] == b"{":  # written by an older worker
            return ProfileState.loads(raw).updated_ts
        return _HEADER.unpack_from(raw)[3]

    @classmethod
    def loads(cls, raw: bytes) -> "ProfileState":
        """Any format this code has ever written: binary version 1, or the JSON of earlier workers."""
        if raw[:1] == b"{":
            return cls._loads_json(raw)
        if not raw or raw[0] != FORMAT_VERSION:
            raise ValueError(f"unknown profile format version {raw[0] if raw else None!r}: written by a "
                             "newer coldstart? upgrade this worker")
        _, n_events, n_clicks, updated_ts, n, blob_len, dim = _HEADER.unpack_from(raw)
        numbers = struct.unpack_from(f"<{2 * n}d", raw, _HEADER.size)
        pos = _HEADER.size + 16 * n
        strings = [None if x == _NONE else x.decode() for x in raw[pos:pos + blob_len].split(_SEP)]
        pos += blob_len
        vector = np.frombuffer(raw, dtype="<f4", count=dim, offset=pos).astype(np.float32) if dim else None
        events = [RecentEvent(strings[2 + 4 * i], strings[3 + 4 * i], numbers[i], text=strings[4 + 4 * i],
                              item_id=strings[5 + 4 * i], weight=numbers[n + i]) for i in range(n)]
        return cls(user_id=strings[0], events=events, seen=strings[2 + 4 * n:], n_events=n_events,
                   n_clicks=n_clicks, vector=vector, version=strings[1], updated_ts=updated_ts)

    def dumps_json(self) -> bytes:
        """The format of workers before issue 11 (JSON, base64 vector): kept to test that it loads."""
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
    def _loads_json(cls, raw: bytes) -> "ProfileState":
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


FORMAT_VERSION = 1
# version, n_events, n_clicks, updated_ts, recent events, string blob bytes, vector dimension
_HEADER = struct.Struct("<BIIdHIH")
# Strings are UTF-8 joined by 0xFF, and None is the single byte 0xFE: neither byte occurs in UTF-8,
# so one split recovers every string.
_SEP, _NONE = b"\xff", b"\xfe"
