"""Properties of the wire contract's decoders (hypothesis): whatever bytes and key arrive, a parser
returns a typed record whose text fields all encode as UTF-8, or raises ``BadEvent`` — nothing else.
A worker or trainer that meets any other exception would stop its stream on one message."""

from __future__ import annotations

import dataclasses
import json
import math

from hypothesis import HealthCheck, given, settings, strategies as st

from coldstart.contract import (
    ModelAnnouncement,
    TrainingSample,
    parse_click,
    parse_item,
    parse_search,
)
from coldstart.errors import BadEvent

PARSERS = [parse_search, parse_click, parse_item]

# Text that includes lone surrogates (what a JSON "\ud800" escape decodes to) and control characters.
any_text = st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=40)
huge_ints = st.integers(min_value=-(10**500), max_value=10**500)
json_scalars = st.one_of(st.none(), st.booleans(), huge_ints, st.floats(allow_nan=True, allow_infinity=True),
                         any_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)), max_leaves=12)
FIELDS = ["event_id", "user_id", "ts", "query", "item_id", "title", "position", "session_id", "category"]


def _dumps(obj) -> bytes:
    # allow_nan: NaN/Infinity literals are what a careless producer sends; surrogates stay escaped.
    return json.dumps(obj, allow_nan=True).encode()


@st.composite
def event_like(draw) -> tuple[bytes, bytes | None]:
    """A JSON object with the contract's field names, each filled with any JSON value or a plausible
    one, and a key that is often the user id."""
    body = {}
    for name in FIELDS:
        choice = draw(st.integers(0, 3))
        if choice == 0:
            continue
        if choice == 1:
            body[name] = draw(json_values)
        elif name == "ts":
            body[name] = draw(st.one_of(st.floats(1e9, 2e9), st.just("2011-08-01T10:00:00Z"), any_text))
        else:
            body[name] = draw(st.one_of(any_text, st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True)))
    raw = _dumps(body)
    if draw(st.booleans()):
        depth = draw(st.integers(1, 5000))
        raw = b'{"nest": ' + b"[" * depth + b"]" * depth + (b", " + raw[1:] if raw != b"{}" else b"}")
    user = body.get("user_id")
    key = draw(st.one_of(st.none(), st.binary(max_size=10),
                         st.just(user.encode("utf-8", "surrogatepass") if isinstance(user, str) else b"")))
    return raw, key


def check_parsed(record) -> None:
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, str):
            value.encode("utf-8")  # raises on a lone surrogate
        if isinstance(value, float):
            assert math.isfinite(value), (f.name, value)


def parse_or_bad_event(parser, raw: bytes, key: bytes | None) -> None:
    try:
        record = parser(raw, key) if parser is parse_item else parser(raw, key, now=1.7e9)
    except BadEvent as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    check_parsed(record)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=300), key=st.one_of(st.none(), st.binary(max_size=20)))
def test_any_bytes_parse_or_raise_bad_event(raw, key):
    for parser in PARSERS:
        parse_or_bad_event(parser, raw, key)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_like())
def test_any_event_shaped_json_parses_to_utf8_fields_or_raises_bad_event(case):
    raw, key = case
    for parser in PARSERS:
        parse_or_bad_event(parser, raw, key)


SAMPLE = TrainingSample("e1", "u1", "halo", "sku1", "halo 3", 1.5, 2.0, 0, "base-x", 1.3e9)


@st.composite
def sample_like(draw) -> bytes:
    body = dataclasses.asdict(SAMPLE)
    for f in dataclasses.fields(TrainingSample):
        if draw(st.integers(0, 3)) == 0:
            if draw(st.booleans()):
                body[f.name] = draw(json_values)
            else:
                del body[f.name]
    return _dumps(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(sample_like(), st.binary(max_size=200)))
def test_training_sample_loads_or_raises_bad_event(raw):
    """The trainer's decoding: a sample either round-trips through its Arrow-bound types or is
    refused with BadEvent (a lone surrogate, Infinity, 1e30 in prior_events, a 500-digit weight)."""
    try:
        sample = TrainingSample.loads(raw)
    except BadEvent:
        return
    check_parsed(sample)
    assert 0 <= sample.prior_events < 2**31
    assert TrainingSample.loads(sample.dumps()) == sample


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.binary(max_size=200), json_values.map(_dumps)))
def test_model_announcement_loads_or_raises_bad_event(raw):
    try:
        ModelAnnouncement.loads(raw)
    except BadEvent:
        pass


def test_the_issues_poison_values_are_bad_events():
    user_surrogate = b'{"event_id":"e","user_id":"u\\ud800","ts":1.7e9,"query":"q"}'
    huge_ts = b'{"event_id":"e","user_id":"u","ts":' + b"9" * 400 + b',"query":"q"}'
    huge_extra = b'{"event_id":"e","user_id":"u","ts":1.7e9,"query":"q","x":' + b"7" * 5000 + b"}"
    deep = b'{"event_id":"e","user_id":"u","ts":1.7e9,"query":"q","x":' + b"[" * 20000 + b"]" * 20000 + b"}"
    reasons = []
    for raw in (user_surrogate, huge_ts, huge_extra, deep):
        try:
            parse_search(raw, b"u")
        except BadEvent as exc:
            reasons.append(exc.reason)
    assert reasons == ["bad_text", "bad_timestamp", "not_json", "too_deep"]
    for bad in (b'"prior_events":1e30', b'"weight":Infinity', b'"context":"\\udc00"', b'"loss":' + b"9" * 500):
        field = bad.split(b":")[0]
        raw = SAMPLE.dumps()
        start = raw.index(field)
        end = raw.index(b",", start)
        try:
            TrainingSample.loads(raw[:start] + bad + raw[end:])
        except BadEvent:
            continue
        raise AssertionError(f"{bad!r} accepted")
