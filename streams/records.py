"""Typed records at every boundary: parsing of incoming events, records on the outgoing topics.

Incoming topics carry raw bytes (so a bad event can go to ``events.dlq`` exactly as it arrived); they
are parsed here into frozen dataclasses or rejected with a :class:`BadEvent` whose ``reason`` is a
short stable code, used as the DLQ metric label.

>>> parse_search(b'{"event_id":"e1","user_id":"u1","ts":"2011-08-01T10:00:00Z","query":" Halo 3 "}', key=b"u1")
SearchEvent(event_id='e1', user_id='u1', ts=1312192800.0, query='halo 3', session_id=None)
>>> parse_click(b'{"event_id":"e2","user_id":"u1","ts":1,"item_id":"sku9"}', key=b"u2")
Traceback (most recent call last):
...
coldstart.errors.BadEvent: key_mismatch: message key 'u2' != user_id 'u1' (the event would be owned by the wrong worker)
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from datetime import datetime, timezone
from typing import Any

import faust

from coldstart.errors import BadEvent

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 512
# Events dated before 2000 or more than a day ahead are clock bugs, not history.
MIN_TS = 946_684_800.0
MAX_FUTURE_S = 86_400.0


@dataclasses.dataclass(frozen=True, slots=True)
class SearchEvent:
    event_id: str
    user_id: str
    ts: float
    query: str
    session_id: str | None = None

    kind = "search"


@dataclasses.dataclass(frozen=True, slots=True)
class ClickEvent:
    event_id: str
    user_id: str
    ts: float
    item_id: str
    query: str | None = None
    position: int | None = None

    kind = "click"


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    title: str
    category: str | None = None
    ts: float | None = None


UserEvent = SearchEvent | ClickEvent


# ---------------------------------------------------------------------------------------- parsing


def parse_search(raw: bytes, key: bytes | None = None, now: float | None = None) -> SearchEvent:
    body = _load(raw)
    user_id = _id(body, "user_id")
    _check_key(key, user_id)
    return SearchEvent(
        event_id=_id(body, "event_id"),
        user_id=user_id,
        ts=parse_ts(body.get("ts"), now=now),
        query=_text(body, "query"),
        session_id=_optional_str(body, "session_id"),
    )


def parse_click(raw: bytes, key: bytes | None = None, now: float | None = None) -> ClickEvent:
    body = _load(raw)
    user_id = _id(body, "user_id")
    _check_key(key, user_id)
    query = body.get("query")
    position = body.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int) or position < 0):
        raise BadEvent("bad_field", f"position must be a non-negative integer, got {position!r}")
    return ClickEvent(
        event_id=_id(body, "event_id"),
        user_id=user_id,
        ts=parse_ts(body.get("ts"), now=now),
        item_id=_id(body, "item_id"),
        query=_text(body, "query") if query not in (None, "") else None,
        position=position,
    )


def parse_item(raw: bytes, key: bytes | None = None) -> CatalogItem:
    body = _load(raw)
    item_id = _id(body, "item_id")
    if key is not None and key.decode("utf-8", "replace") != item_id:
        raise BadEvent("key_mismatch", f"message key {key!r} != item_id {item_id!r}")
    ts = body.get("ts")
    return CatalogItem(
        item_id=item_id,
        title=_text(body, "title", lower=False),
        category=_optional_str(body, "category"),
        ts=parse_ts(ts) if ts is not None else None,
    )


PARSERS = {"events.search": parse_search, "events.click": parse_click}


def parse_ts(value: Any, now: float | None = None) -> float:
    """Epoch seconds (int/float, or milliseconds when obviously so) or an ISO-8601 string, as UTC."""
    if value is None:
        raise BadEvent("missing_field", "ts is required")
    if isinstance(value, bool):
        raise BadEvent("bad_timestamp", f"ts must be epoch seconds or ISO-8601, got {value!r}")
    if isinstance(value, (int, float)):
        ts = float(value)
        if ts > 1e11:  # milliseconds since the epoch
            ts /= 1000.0
    elif isinstance(value, str):
        try:
            text = value.strip().replace("Z", "+00:00")
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise BadEvent("bad_timestamp", f"ts {value!r} is not ISO-8601 or epoch seconds") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ts = parsed.timestamp()
    else:
        raise BadEvent("bad_timestamp", f"ts must be epoch seconds or ISO-8601, got {type(value).__name__}")
    if not math.isfinite(ts) or ts < MIN_TS:
        raise BadEvent("bad_timestamp", f"ts {value!r} is before 2000-01-01")
    if now is not None and ts > now + MAX_FUTURE_S:
        raise BadEvent("bad_timestamp", f"ts {value!r} is more than a day in the future")
    return ts


def _load(raw: bytes) -> dict[str, Any]:
    if raw is None:
        raise BadEvent("empty", "message has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise BadEvent("too_large", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEvent("not_json", str(exc)[:200]) from None
    if not isinstance(body, dict):
        raise BadEvent("not_object", f"expected a JSON object, got {type(body).__name__}")
    return body


def _id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise BadEvent("missing_field", f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadEvent("bad_field", f"{name} must be a string, got {type(value).__name__}")
    value = str(value)
    if len(value) > MAX_ID_CHARS:
        raise BadEvent("bad_field", f"{name} longer than {MAX_ID_CHARS} characters")
    return value


def _text(body: dict[str, Any], name: str, lower: bool = True) -> str:
    value = body.get(name)
    if value is None:
        raise BadEvent("missing_field", f"{name} is required")
    if not isinstance(value, str):
        raise BadEvent("bad_field", f"{name} must be a string, got {type(value).__name__}")
    value = " ".join(value.split())[:MAX_TEXT_CHARS]
    if not value:
        raise BadEvent("empty_text", f"{name} is empty")
    return value.lower() if lower else value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadEvent("bad_field", f"{name} must be a string")
    return str(value)[:MAX_ID_CHARS]


def _check_key(key: bytes | None, user_id: str) -> None:
    # A key other than the user id puts the event on a partition that another worker owns: its profile
    # update would land in the wrong table shard and the recommendations router would never find it.
    if key is not None and key != user_id.encode():
        raise BadEvent(
            "key_mismatch",
            f"message key {key.decode('utf-8', 'replace')!r} != user_id {user_id!r} "
            "(the event would be owned by the wrong worker)",
        )


# ------------------------------------------------------------------------------- outgoing records


class DeadLetter(faust.Record, serializer="json"):
    """A rejected input message, kept whole: the original bytes (base64), why, and where it came from."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value_b64: str
    received_ts: float

    @classmethod
    def of(cls, exc: BadEvent, topic: str, partition: int, offset: int, key: bytes | None,
           value: bytes | None, received_ts: float) -> "DeadLetter":
        return cls(
            reason=exc.reason,
            detail=exc.detail[:500],
            topic=topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if key is not None else None,
            value_b64=base64.b64encode(value or b"").decode("ascii"),
            received_ts=received_ts,
        )

    def original(self) -> bytes:
        return base64.b64decode(self.value_b64)


class TrainingSample(faust.Record, serializer="json"):
    """One importance-scored training pair: context text -> clicked item (the trainer's input)."""

    sample_id: str  # the click's event id: the trainer drops duplicates by it
    user_id: str
    context: str  # the query typed before the click, else the user's recent history
    item_id: str
    item_text: str
    weight: float  # importance, bounded (model/importance.py)
    loss: float  # the scoring model's catalog cross-entropy on this sample
    prior_events: int
    model_version: str
    ts: float


class ModelAnnouncement(faust.Record, serializer="json"):
    """A model version ready to serve (publish or rollback), on the compacted ``model.versions`` topic."""

    version: str
    uri: str
    action: str  # publish | rollback
    announced_ts: float
