"""The wire contract: every topic name and every record that crosses a topic, defined once.

The worker, the trainer, replay, evaluation and the benchmarks all import this module (and nothing
here imports Faust or a Kafka client). Incoming topics carry raw bytes, parsed here into frozen
dataclasses or rejected with a :class:`~coldstart.errors.BadEvent` whose ``reason`` is a short stable
code (the DLQ metric label). Outgoing records are frozen dataclasses with ``dumps() -> bytes`` and a
strict ``loads(bytes)``; the training sample also has its Arrow schema (the trainer's Parquet buffer).

>>> parse_search(b'{"event_id":"e1","user_id":"u1","ts":"2011-08-01T10:00:00Z","query":" Halo 3 "}', key=b"u1")
SearchEvent(event_id='e1', user_id='u1', ts=1312192800.0, query='halo 3', session_id=None)
>>> parse_click(b'{"event_id":"e2","user_id":"u1","ts":1400000000,"item_id":"sku9"}', key=b"u2")
Traceback (most recent call last):
...
coldstart.errors.BadEvent: key_mismatch: message key 'u2' != user_id 'u1' (the event would be owned by the wrong worker)
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from coldstart.errors import BadEvent

# ------------------------------------------------------------------------------------------ topics
SEARCH = "events.search"  # key = user_id
CLICK = "events.click"  # key = user_id (co-partitioned with SEARCH: one worker owns a user)
CATALOG = "catalog.items"  # key = item_id, compacted
DLQ = "events.dlq"
# Events applied before their user was flagged as a bot, then taken back out of the shared statistics by
# the worker that owns the user: one FlaggedBack record per flagged user, read by every worker.
AUDIT = "events.audit"
SAMPLES = "training.samples"  # key = user_id
MODEL_VERSIONS = "model.versions"  # compacted; key ANNOUNCE_KEY
USER_TOPICS = (SEARCH, CLICK)
ANNOUNCE_KEY = b"current"  # model.versions is compacted: the latest announcement is the one to serve

MAX_EVENT_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 512
# Live-traffic defaults (Settings.min_event_ts / max_future_skew_s): events dated before 2000 or more
# than a day ahead are clock bugs, not history. A replay of an older log passes its own bounds.
MIN_TS = 946_684_800.0
MAX_FUTURE_S = 86_400.0
MAX_JSON_DEPTH = 32  # events are flat objects; deeper nesting is refused before json.loads recurses


# --------------------------------------------------------------------------------- incoming events
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


def parse_search(raw: bytes, key: bytes | None = None, now: float | None = None, *,
                 min_ts: float = MIN_TS, max_future_s: float = MAX_FUTURE_S) -> SearchEvent:
    body = _load(raw)
    user_id = _id(body, "user_id")
    _check_key(key, user_id)
    return SearchEvent(
        event_id=_id(body, "event_id"),
        user_id=user_id,
        ts=parse_ts(body.get("ts"), now=now, min_ts=min_ts, max_future_s=max_future_s),
        query=_text(body, "query"),
        session_id=_optional_str(body, "session_id"),
    )


def parse_click(raw: bytes, key: bytes | None = None, now: float | None = None, *,
                min_ts: float = MIN_TS, max_future_s: float = MAX_FUTURE_S) -> ClickEvent:
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
        ts=parse_ts(body.get("ts"), now=now, min_ts=min_ts, max_future_s=max_future_s),
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


PARSERS = {SEARCH: parse_search, CLICK: parse_click}


def parse_ts(value: Any, now: float | None = None, *, min_ts: float = MIN_TS,
             max_future_s: float = MAX_FUTURE_S) -> float:
    """Epoch seconds (int/float, or milliseconds when obviously so) or an ISO-8601 string, as UTC.

    Times before ``min_ts`` or more than ``max_future_s`` after ``now`` are refused as clock bugs
    (live defaults); a replay of history passes ``min_ts=0``.

    >>> parse_ts(10**400)
    Traceback (most recent call last):
    ...
    coldstart.errors.BadEvent: bad_timestamp: ts is an integer of 401 digits, not a time
    >>> parse_ts("1997-09-20T10:00:00Z", min_ts=0)
    874749600.0
    """
    if value is None:
        raise BadEvent("missing_field", "ts is required")
    if isinstance(value, bool):
        raise BadEvent("bad_timestamp", f"ts must be epoch seconds or ISO-8601, got {value!r}")
    if isinstance(value, int) and abs(value) > 10**15:  # float() of a huge int raises OverflowError
        raise BadEvent("bad_timestamp", f"ts is an integer of {len(str(abs(value)))} digits, not a time")
    if isinstance(value, (int, float)):
        ts = float(value)
        if ts > 1e11:  # milliseconds since the epoch
            ts /= 1000.0
    elif isinstance(value, str):
        try:
            text = value[:64].strip().replace("Z", "+00:00")
            parsed = datetime.fromisoformat(text)
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            ts = parsed.timestamp()
        except (ValueError, OverflowError):  # OverflowError: year 1 with a negative offset, ...
            raise BadEvent("bad_timestamp", f"ts {value[:64]!r} is not ISO-8601 or epoch seconds") from None
    else:
        raise BadEvent("bad_timestamp", f"ts must be epoch seconds or ISO-8601, got {type(value).__name__}")
    if not math.isfinite(ts):
        raise BadEvent("bad_timestamp", f"ts {value!r} is not a finite time")
    if ts < min_ts:
        raise BadEvent("bad_timestamp", f"ts {value!r} is before {_iso(min_ts)} (COLDSTART_MIN_EVENT_TS; "
                                        "replaying history: lower it or rebase the log's times)")
    if now is not None and ts > now + max_future_s:
        raise BadEvent("bad_timestamp", f"ts {value!r} is more than {max_future_s:g} s in the future "
                                        "(COLDSTART_MAX_FUTURE_SKEW_S)")
    return ts


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")
    except (ValueError, OverflowError, OSError):
        return repr(ts)


def _load(raw: bytes) -> dict[str, Any]:
    if raw is None:
        raise BadEvent("empty", "message has no value")
    if len(raw) > MAX_EVENT_BYTES:
        raise BadEvent("too_large", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    body = _json_object(raw)
    if body is None:
        raise BadEvent("not_object", "expected a JSON object")
    return body


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """``json.loads`` with every way it fails turned into ``BadEvent`` (None: valid JSON, not an object).

    Besides syntax: ``ValueError`` for an integer beyond Python's digit limit, ``RecursionError`` for
    deep nesting (refused up front by counting brackets, so no stack is spent on it).

    >>> _json_object(b'{"a":' + b"1" * 5000 + b'}')
    Traceback (most recent call last):
    ...
    coldstart.errors.BadEvent: not_json: Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit
    >>> _json_object(b"[" * 100 + b"]" * 100)
    Traceback (most recent call last):
    ...
    coldstart.errors.BadEvent: too_deep: JSON nested deeper than 32 levels
    """
    if _nesting_depth(raw) > MAX_JSON_DEPTH:
        raise BadEvent("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BadEvent("not_json", str(exc)[:200]) from None
    return body if isinstance(body, dict) else None


def _nesting_depth(raw: bytes) -> int:
    """Maximum bracket depth outside strings (an upper bound is enough to refuse early)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def event_id_of(body: dict[str, Any]) -> str:
    """The event id of a decoded event body as the parsers normalise it (an integer id is its string).

    >>> event_id_of({"event_id": 7})
    '7'
    """
    return _id(body, "event_id")


def _id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None or value == "":
        raise BadEvent("missing_field", f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadEvent("bad_field", f"{name} must be a string, got {type(value).__name__}")
    value = str(value)
    if len(value) > MAX_ID_CHARS:
        raise BadEvent("bad_field", f"{name} longer than {MAX_ID_CHARS} characters")
    return _utf8(value, name)


def _text(body: dict[str, Any], name: str, lower: bool = True) -> str:
    value = body.get(name)
    if value is None:
        raise BadEvent("missing_field", f"{name} is required")
    if not isinstance(value, str):
        raise BadEvent("bad_field", f"{name} must be a string, got {type(value).__name__}")
    value = " ".join(value.split())[:MAX_TEXT_CHARS]
    if not value:
        raise BadEvent("empty_text", f"{name} is empty")
    return _utf8(value.lower() if lower else value, name)


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadEvent("bad_field", f"{name} must be a string")
    return _utf8(str(value)[:MAX_ID_CHARS], name)


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
MAX_DLQ_VALUE_BYTES = 128 * 1024  # a DLQ record must fit Kafka's default 1 MB message limit


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _record_body(cls, raw: bytes | None) -> dict[str, Any]:
    """Decode a record's JSON object and check its fields are all there (``BadEvent`` otherwise)."""
    if raw is None:
        raise BadEvent("empty", f"{cls.__name__} record has no value")
    try:
        body = _json_object(raw)
    except BadEvent as exc:
        raise BadEvent(exc.reason, f"{cls.__name__}: {exc.detail}") from None
    if body is None:
        raise BadEvent("not_object", f"{cls.__name__} must be a JSON object")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in body and f.default is dataclasses.MISSING]
    if missing:
        raise BadEvent("missing_field", f"{cls.__name__} lacks {missing}")
    return body


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A rejected input message: the original bytes (base64), why, and where it came from.

    An original larger than ``MAX_DLQ_VALUE_BYTES`` is kept as its first bytes plus its full size and
    sha256 (``truncated``), so the record still fits a Kafka message and the original can be found.
    """

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: str | None
    value_b64: str
    received_ts: float
    value_size: int = 0
    value_sha256: str = ""
    truncated: bool = False

    @classmethod
    def of(cls, exc: BadEvent, topic: str, partition: int, offset: int, key: bytes | None,
           value: bytes | None, received_ts: float) -> "DeadLetter":
        value = value or b""
        kept = value[:MAX_DLQ_VALUE_BYTES]
        return cls(
            # backslashreplace: an error about a lone surrogate may quote it, and must still encode.
            reason=exc.reason.encode("utf-8", "backslashreplace").decode(),
            detail=exc.detail[:500].encode("utf-8", "backslashreplace").decode(),
            topic=topic,
            partition=partition,
            offset=offset,
            key=key[:MAX_ID_CHARS * 4].decode("utf-8", "replace") if key is not None else None,
            value_b64=base64.b64encode(kept).decode("ascii"),
            received_ts=received_ts,
            value_size=len(value),
            value_sha256=hashlib.sha256(value).hexdigest(),
            truncated=len(kept) < len(value),
        )

    def original(self) -> bytes:
        return base64.b64decode(self.value_b64)

    def dumps(self) -> bytes:
        return _json_bytes(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes) -> "DeadLetter":
        body = _record_body(cls, raw)
        return cls(**{f.name: body[f.name] for f in dataclasses.fields(cls) if f.name in body})


@dataclasses.dataclass(frozen=True)
class FlaggedBack:
    """A user flagged as a bot after some of their events were applied (the evidence builds over 20 or
    200 events): the owner took those events back out of its stream statistics and item index, and
    tells every other worker to do the same (their catalog readers had counted the clicks from
    events.click, and no DLQ record names them: they were applied, not rejected).

    >>> raw = FlaggedBack("impossible_rate", "bot", ("c1", "c2"), 1700000000.0).dumps()
    >>> FlaggedBack.loads(raw).event_ids
    ('c1', 'c2')
    """

    reason: str
    user_id: str
    event_ids: tuple[str, ...]
    flagged_ts: float

    def dumps(self) -> bytes:
        return _json_bytes(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes | None) -> "FlaggedBack":
        body = _record_body(cls, raw)
        ids = body["event_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadEvent("bad_field", "FlaggedBack.event_ids must be a list of strings")
        if not isinstance(body["reason"], str) or not isinstance(body["user_id"], str):
            raise BadEvent("bad_field", "FlaggedBack reason and user_id must be strings")
        ts = body["flagged_ts"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)):
            raise BadEvent("bad_field", "FlaggedBack.flagged_ts must be a number")
        return cls(body["reason"], body["user_id"], tuple(ids), float(ts))


@dataclasses.dataclass(frozen=True)
class TrainingSample:
    """One importance-scored training pair: context text -> clicked item (the trainer's input).

    >>> s = TrainingSample("e1", "u1", "halo", "sku1", "halo 3", 1.5, 2.0, 0, "base-x", 1.3e9)
    >>> TrainingSample.loads(s.dumps()) == s
    True
    >>> TrainingSample.loads(s.dumps().replace(b'"weight":1.5', b'"weight":1e999'))
    Traceback (most recent call last):
    ...
    coldstart.errors.BadEvent: bad_field: TrainingSample.weight must be a finite number
    """

    sample_id: str  # the click's event id: the trainer drops duplicates by it
    user_id: str
    context: str  # the query typed before the click, else the user's recent history
    item_id: str
    item_text: str
    weight: float  # importance, bounded (coldstart.model.importance)
    loss: float  # the scoring model's catalog cross-entropy on this sample
    prior_events: int
    model_version: str
    ts: float

    def dumps(self) -> bytes:
        return _json_bytes(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes | None) -> "TrainingSample":
        """Strict decoding: every field present, typed, UTF-8-encodable and finite, or ``BadEvent``."""
        body = _record_body(cls, raw)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = body[f.name]
            where = f"{cls.__name__}.{f.name}"
            if f.type == "str":
                if not isinstance(v, str):
                    raise BadEvent("bad_field", f"{where} must be a string")
                _utf8(v, where)
            elif f.type == "int":
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31:
                    raise BadEvent("bad_field", f"{where} must be an integer in [0, 2**31)")
            else:
                # abs(v) bound first: math.isfinite of a huge int raises OverflowError.
                if (isinstance(v, bool) or not isinstance(v, (int, float)) or abs(v) > 1e300
                        or not math.isfinite(v)):
                    raise BadEvent("bad_field", f"{where} must be a finite number")
                v = float(v)
            values[f.name] = v
        if not values["sample_id"]:
            raise BadEvent("missing_field", "TrainingSample.sample_id is empty")
        return cls(**values)


# The trainer's Parquet buffer holds one row per TrainingSample plus when it arrived.
SAMPLE_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("user_id", pa.string()),
    ("context", pa.string()),
    ("item_id", pa.string()),
    ("item_text", pa.string()),
    ("weight", pa.float32()),
    ("loss", pa.float32()),
    ("prior_events", pa.int32()),
    ("model_version", pa.string()),
    ("ts", pa.float64()),
    ("received_ts", pa.float64()),  # wall clock when the trainer took the sample in
])
assert SAMPLE_SCHEMA.names[:-1] == [f.name for f in dataclasses.fields(TrainingSample)]


# The key a deployment without COLDSTART_ANNOUNCE_SECRET signs and verifies with. It is public, so it
# authenticates nothing: it only keeps a local demo and the tests working. Workers and the trainer warn
# loudly when they run with it; every deploy file sets a real secret.
DEV_ANNOUNCE_SECRET = "coldstart-dev-only-not-a-secret"


def announce_key(secret: str) -> bytes:
    """The HMAC key for ``model.versions``: the configured secret, or the public development key."""
    return (secret or DEV_ANNOUNCE_SECRET).encode()


@dataclasses.dataclass(frozen=True)
class ModelAnnouncement:
    """A model version ready to serve (publish or rollback), on the compacted ``model.versions`` topic.

    Anyone who can produce to ``model.versions`` could otherwise point every worker at any retained
    version, so an announcement carries an HMAC-SHA256 over its canonical fields under a secret shared
    by the trainer and the workers (an authenticated control plane); workers act only on one that verifies.

    >>> a = ModelAnnouncement("v0002", "s3://bucket/registry/versions/v0002", "publish", 1.5e9).signed(b"k")
    >>> ModelAnnouncement.loads(a.dumps()).verify(b"k")
    >>> forged = dataclasses.replace(a, version="v0001")
    >>> forged.verify(b"k")
    Traceback (most recent call last):
    ...
    coldstart.errors.BadEvent: bad_signature: announcement of v0001 does not verify under this worker's COLDSTART_ANNOUNCE_SECRET (forged, or signed with another secret)
    >>> dataclasses.replace(a, signature="").verify(b"k")
    Traceback (most recent call last):
    ...
    coldstart.errors.BadEvent: unsigned: announcement of v0002 carries no signature; publish with coldstart trainer or coldstart models rollback
    """

    version: str
    uri: str  # where the version lives, credentials redacted (see redact_uri)
    action: str  # publish | rollback
    announced_ts: float
    signature: str = ""  # hex HMAC-SHA256 of canonical_bytes()

    def canonical_bytes(self) -> bytes:
        """What is signed: every field but the signature, as sorted compact JSON, with a domain tag."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "signature"}
        return b"coldstart.model.versions.v1\n" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: bytes) -> "ModelAnnouncement":
        return dataclasses.replace(self, signature=hmac.new(key, self.canonical_bytes(), hashlib.sha256).hexdigest())

    def verify(self, key: bytes) -> None:
        """Return if the signature is this record's under ``key``; ``BadEvent`` (unsigned|bad_signature) else."""
        if not self.signature:
            raise BadEvent("unsigned", f"announcement of {self.version} carries no signature; publish with "
                                       "coldstart trainer or coldstart models rollback")
        expected = hmac.new(key, self.canonical_bytes(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, self.signature):
            raise BadEvent("bad_signature", f"announcement of {self.version} does not verify under this worker's "
                                            "COLDSTART_ANNOUNCE_SECRET (forged, or signed with another secret)")

    def dumps(self) -> bytes:
        return _json_bytes(dataclasses.asdict(self))

    @classmethod
    def loads(cls, raw: bytes | None) -> "ModelAnnouncement":
        body = _record_body(cls, raw)
        if not all(isinstance(body[k], str) for k in ("version", "uri", "action")):
            raise BadEvent("bad_field", "ModelAnnouncement version, uri and action must be strings")
        if body["action"] not in ("publish", "rollback"):
            raise BadEvent("bad_field", f"ModelAnnouncement.action {body['action']!r} is not publish|rollback")
        signature = body.get("signature", "")
        if not isinstance(signature, str):
            raise BadEvent("bad_field", "ModelAnnouncement.signature must be a hex string")
        ts = body["announced_ts"]
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not abs(ts) < 1e300:
            raise BadEvent("bad_field", "ModelAnnouncement.announced_ts must be a number")
        return cls(body["version"], body["uri"], body["action"], float(ts), signature)


_SECRET_PARAM = re.compile(r"key|secret|token|password|passwd|credential|signature|sig\b|session", re.I)


def redact_uri(uri: str) -> str:
    """``uri`` without credentials: user info and secret-looking query values become ``***``.

    A registry URI may carry credentials (pyarrow reads ``s3://KEY:SECRET@bucket/...`` and
    ``?access_key=...&secret_key=...``); they must never reach announcements, logs or metrics.

    >>> redact_uri("s3://AKIA123:wJalr/xyz@bucket/registry?region=eu-west-1&secret_key=abc&access_key=AKIA123")
    's3://***@bucket/registry?region=eu-west-1&secret_key=***&access_key=***'
    >>> redact_uri("/var/lib/coldstart/registry")
    '/var/lib/coldstart/registry'
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    head, q, query = rest.partition("?")
    if "@" in head:  # the last @ before the query: a secret may itself hold "/" or "@"
        head = "***@" + head.rpartition("@")[2]
    if q:
        query = "&".join(
            name + "=***" if eq and _SECRET_PARAM.search(name) else name + eq + value
            for name, eq, value in (part.partition("=") for part in query.split("&")))
    return f"{scheme}{sep}{head}{q}{query}"


def _utf8(value: str, where: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadEvent("bad_text", f"{where} is not valid Unicode (a lone surrogate)") from None
    return value
