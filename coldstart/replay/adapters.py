"""Adapters from real logs and replay files to time-ordered :class:`ReplayEvent` streams.

Every adapter yields events in non-decreasing ``ts`` with stable, deterministic event ids (a sha1 of
the source row's identity, prefixed by the dataset), and raises :class:`DatasetMissing` naming the path
and what was expected when its input is absent or unreadable.

Rows an adapter cannot use are skipped, never fatal: pass an :class:`AdapterStats` as ``stats=`` to
learn how many were read, skipped (by reason) and emitted (by type). The counts are complete once the
iterator is exhausted.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from coldstart.errors import DatasetMissing
from coldstart.replay.events import ReplayEvent

BESTBUY_FILES = ("part1.csv", "part2.csv")
AMAZON_ITEMS = "Office_Products.item.json"
AMAZON_SPLITS = ("test", "valid")
# Amazon rows carry no times: replay starts here and advances one minute per click.
AMAZON_START_TS = datetime(2018, 1, 1, tzinfo=UTC).timestamp()
AMAZON_STEP_S = 60.0


@dataclass
class AdapterStats:
    """What an adapter did with its input: rows read, rows skipped by reason, events emitted by type."""

    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    repaired: Counter[str] = field(default_factory=Counter)  # replayed, but with a field filled in
    events: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def emitted(self, events: Iterable[ReplayEvent]) -> Iterator[ReplayEvent]:
        for event in events:
            self.events[event.type] += 1
            yield event


def event_id(dataset: str, *identity: object) -> str:
    """A stable id for a source row: the dataset name and a sha1 of the row's identity.

    >>> event_id("bestbuy", "u1", "2011-09-14 12:45:07.064", "s")
    'bestbuy-...'
    >>> event_id("x", 1, 2) == event_id("x", 1, 2) != event_id("x", 2, 1)
    True
    """
    digest = hashlib.sha1("\x1f".join(map(str, identity)).encode("utf-8")).hexdigest()
    return f"{dataset}-{digest[:20]}"


def parse_ts(raw: object) -> float:
    """Epoch seconds from a number, a numeric string or an ISO-8601 string (naive means UTC).

    >>> parse_ts("2011-09-14 12:45:07.064")
    1316004307.064
    >>> parse_ts("2011-09-14T12:45:07Z"), parse_ts(1316004307), parse_ts("1316004307.5")
    (1316004307.0, 1316004307.0, 1316004307.5)
    """
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"not a timestamp: {raw!r}")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, datetime):
        value = (raw if raw.tzinfo else raw.replace(tzinfo=UTC)).timestamp()
    else:
        text = str(raw).strip()
        try:
            value = float(text)
        except ValueError:
            moment = datetime.fromisoformat(text)
            value = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise ValueError(f"not a finite timestamp: {raw!r}")
    return value


def _require_files(folder: Path, names: Iterable[str], what: str) -> None:
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DatasetMissing(
            f"{folder}: expected {what} with files {', '.join(names)}; missing {', '.join(missing)}. "
            "Point the path (or COLDSTART data setting) at the folder that holds them."
        )


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            # Headers differ in case between the Best Buy parts ("user" vs "User").
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetMissing(f"{path}: cannot read the CSV file ({exc})") from exc


# --- Best Buy -------------------------------------------------------------------------------------


def bestbuy(
    path: Path, limit: int | None = None, *, stats: AdapterStats | None = None
) -> Iterator[ReplayEvent]:
    """Best Buy Xbox search→click log: each row is a search at ``query_time`` and a click at ``click_time``.

    ``path`` is the folder holding ``part1.csv`` and ``part2.csv``. The parts are concatenated and sorted
    by query time; ``limit`` keeps the first N usable rows of that order. Clicks can come after later
    rows' searches, so all events are merged into one global time order. The log has no product titles,
    so no item events are emitted. Rows with a missing user, sku or query, or an unparseable time, or a
    click before its search, are skipped (see ``stats``).
    """
    path = Path(path)
    _require_files(path, BESTBUY_FILES, "the Best Buy Xbox log (bestbuy-xbox)")
    return _bestbuy_events(path, limit, stats if stats is not None else AdapterStats())


def _bestbuy_events(path: Path, limit: int | None, stats: AdapterStats) -> Iterator[ReplayEvent]:
    rows: list[tuple[float, float, str, str, str, str, str]] = []
    for name in BESTBUY_FILES:
        for row in _read_csv(path / name):
            stats.rows += 1
            user = (row.get("user") or "").strip()
            sku = (row.get("sku") or "").strip()
            query = (row.get("query") or "").strip()
            if not user or not sku or not query:
                stats.skip("missing_field")
                continue
            try:
                query_ts, click_ts = parse_ts(row["query_time"]), parse_ts(row["click_time"])
            except (KeyError, ValueError, TypeError):
                stats.skip("bad_time")
                continue
            if click_ts < query_ts:
                stats.skip("click_before_search")
                continue
            rows.append((query_ts, click_ts, user, sku, query, row["query_time"], row["click_time"]))
    rows.sort(key=lambda r: r[0])  # stable: ties keep file order, so ids and order are deterministic
    if limit is not None:
        rows = rows[:limit]

    events: list[ReplayEvent] = []
    for query_ts, click_ts, user, sku, query, raw_query_time, raw_click_time in rows:
        identity = (user, sku, query, raw_query_time, raw_click_time)
        search_id = event_id("bestbuy", *identity, "search")
        events.append(
            ReplayEvent(
                "search",
                user,
                {"event_id": search_id, "user_id": user, "ts": query_ts, "query": query},
                query_ts,
            )
        )
        events.append(
            ReplayEvent(
                "click",
                user,
                {
                    "event_id": event_id("bestbuy", *identity, "click"),
                    "user_id": user,
                    "ts": click_ts,
                    "item_id": sku,
                    "query": query,
                },
                click_ts,
            )
        )
    # Stable sort on ts alone: a click never precedes its own search (click_ts >= query_ts and the
    # search was appended first).
    events.sort(key=lambda e: e.ts)
    yield from stats.emitted(events)


# --- Amazon Office Products -----------------------------------------------------------------------


def _amazon_catalog(path: Path) -> dict[str, dict]:
    items_path = path / AMAZON_ITEMS
    try:
        raw = json.loads(items_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetMissing(f"{items_path}: cannot read the Amazon item catalog ({exc})") from exc
    if not isinstance(raw, dict):
        raise DatasetMissing(f"{items_path}: expected a JSON object {{item_id: {{title, ...}}}}")
    return raw


def _last_category(categories: object) -> str | None:
    # The 5-core files store categories as a string (empty in practice); older dumps use nested lists.
    while isinstance(categories, list) and categories:
        categories = categories[-1]
    if isinstance(categories, str) and categories.strip():
        return categories.strip()
    return None


def _new_suffix(emitted: list[str], history: list[str]) -> list[str]:
    """The part of ``history`` not yet emitted for the user.

    ``history`` is the last (up to 10) items of the user's sequence, so it overlaps the end of what was
    emitted; the longest overlap wins.

    >>> _new_suffix(["a", "b", "c"], ["b", "c", "d"])
    ['d']
    >>> _new_suffix([], ["a", "a"]), _new_suffix(["a", "a"], ["a", "a"])
    (['a', 'a'], [])
    """
    for overlap in range(min(len(emitted), len(history)), 0, -1):
        if emitted[-overlap:] == history[:overlap]:
            return history[overlap:]
    return list(history)


def amazon_office(
    path: Path,
    split: str = "test",
    limit_users: int | None = None,
    *,
    stats: AdapterStats | None = None,
) -> Iterator[ReplayEvent]:
    """Amazon Reviews 2018 Office Products (5-core): a catalog, then each user's sequence as clicks.

    ``path`` is the folder with ``{split}_Office_Products.csv`` and ``Office_Products.item.json``. First
    one item event per catalog item (title; category = the last category when present), then, for each
    CSV row in file order, clicks for the history items not yet emitted for that user (each row's
    history is a sliding window over the user's sequence) and the row's target item. Timestamps are
    synthetic and monotone: items at 2018-01-01T00:00Z, clicks one minute apart after that. No queries.
    ``limit_users`` keeps only the first N users met in file order. Event ids hash
    ``(split, user, position in the user's sequence)``.
    """
    path = Path(path)
    if split not in AMAZON_SPLITS:
        raise ValueError(f"unknown Amazon split {split!r}; expected one of {AMAZON_SPLITS}")
    csv_name = f"{split}_Office_Products.csv"
    _require_files(path, (csv_name, AMAZON_ITEMS), "the Amazon Office Products data (amazon-office)")
    stats = stats if stats is not None else AdapterStats()
    catalog = _amazon_catalog(path)
    rows = _read_csv(path / csv_name)
    return stats.emitted(_amazon_events(catalog, rows, split, limit_users, stats))


def _amazon_events(
    catalog: dict[str, dict],
    rows: list[dict[str, str]],
    split: str,
    limit_users: int | None,
    stats: AdapterStats,
) -> Iterator[ReplayEvent]:
    for item_id in sorted(catalog, key=lambda k: (len(k), k)):  # numeric order for numeric ids
        info = catalog[item_id] if isinstance(catalog[item_id], dict) else {}
        title = str(info.get("title") or "").strip()
        if not title:
            stats.skip("item_without_title")
            continue
        value: dict = {"item_id": str(item_id), "title": title, "ts": AMAZON_START_TS}
        category = _last_category(info.get("categories"))
        if category is not None:
            value["category"] = category
        yield ReplayEvent("item", str(item_id), value, AMAZON_START_TS)

    sequences: dict[str, list[str]] = {}  # user -> items emitted so far (only the tail is compared)
    positions: dict[str, int] = {}
    clock = AMAZON_START_TS
    for row in rows:
        stats.rows += 1
        user = (row.get("user_id") or "").strip()
        try:
            history = [str(i) for i in ast.literal_eval(row.get("history_item_id") or "[]")]
            target = str(int(row["item_id"]))
        except (ValueError, SyntaxError, TypeError, KeyError, MemoryError, RecursionError):
            stats.skip("bad_row")
            continue
        if not user:
            stats.skip("missing_field")
            continue
        if user not in sequences:
            if limit_users is not None and len(sequences) >= limit_users:
                continue
            sequences[user], positions[user] = [], 0
        emitted = sequences[user]
        for item_id in [*_new_suffix(emitted, history), target]:
            clock += AMAZON_STEP_S
            position = positions[user]
            positions[user] = position + 1
            emitted.append(item_id)
            del emitted[:-16]  # histories hold at most 10 items; keep a bounded tail
            value = {
                "event_id": event_id("amazon", split, user, position),
                "user_id": user,
                "ts": clock,
                "item_id": item_id,
            }
            yield ReplayEvent("click", user, value, clock)


# --- Generic replay files -------------------------------------------------------------------------

_KNOWN_TYPES = ("search", "click", "item")


def _read_generic_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            # Missing columns come back as None: drop them so values hold only the fields a row had.
            return [
                {k: v for k, v in row.items() if v is not None}
                for row in pq.read_table(path).to_pylist()
            ]
        rows = []
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = {"_unparsed": line.rstrip("\n")}
                    rows.append(row if isinstance(row, dict) else {"_unparsed": row})
        return rows
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetMissing(f"{path}: cannot read the replay file ({exc})") from exc
    except Exception as exc:  # pyarrow raises its own ArrowInvalid and friends
        raise DatasetMissing(f"{path}: not a readable Parquet replay file ({exc})") from exc


def generic(path: Path, *, stats: AdapterStats | None = None) -> Iterator[ReplayEvent]:
    """A replay file (``.jsonl``/``.json`` lines, or ``.parquet``) whose rows are contract records plus ``type``.

    Events come sorted by ``ts`` (epoch seconds or ISO-8601; items without ``ts`` first); ties keep
    file order. Each value is the row as written minus ``type``: replay does not validate the contract,
    it passes rows with recognised types through as-is, so a malformed one reaches the worker and lands
    in ``events.dlq`` with a reason instead of being lost. Rows that cannot be routed at all (unknown
    or missing ``type``, or a line that is not a JSON object) are skipped and counted in ``stats``. A
    search or click whose ``ts`` cannot be parsed keeps the time of the row before it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetMissing(
            f"{path}: expected a replay file (JSON lines or Parquet with a 'type' column "
            "search|click|item and the event contract fields); no such file"
        )
    rows = _read_generic_rows(path)
    return _generic_events(rows, stats if stats is not None else AdapterStats())


def _generic_events(rows: list[dict], stats: AdapterStats) -> Iterator[ReplayEvent]:
    keyed: list[tuple[float, int, ReplayEvent]] = []
    last_ts = -math.inf
    for index, row in enumerate(rows):
        stats.rows += 1
        kind = row.get("type")
        if kind not in _KNOWN_TYPES:
            stats.skip("unknown_type" if "_unparsed" not in row else "not_json_object")
            continue
        value = {k: v for k, v in row.items() if k != "type"}
        try:
            ts = parse_ts(value["ts"])
        except (KeyError, ValueError, TypeError):
            if kind == "item":
                ts = -math.inf
            else:
                stats.repaired["ts_from_previous_row"] += 1
                ts = last_ts
        else:
            if kind != "item":
                last_ts = ts
        key = value.get("item_id" if kind == "item" else "user_id")
        keyed.append((ts, index, ReplayEvent(kind, "" if key is None else str(key), value, ts)))
    keyed.sort(key=lambda entry: (entry[0], entry[1]))
    first_ts = next((ts for ts, _, _ in keyed if math.isfinite(ts)), 0.0)
    events = (
        e if math.isfinite(ts) else ReplayEvent(e.type, e.key, e.value, first_ts) for ts, _, e in keyed
    )
    yield from stats.emitted(events)


# --- Resolving a dataset spec ---------------------------------------------------------------------

NAMED = {"bestbuy": "bestbuy-xbox", "amazon": "amazon-office"}


def open_dataset(
    spec: str | Path, shared_data: Path, *, stats: AdapterStats | None = None
) -> Iterator[ReplayEvent]:
    """Events from a dataset named ``bestbuy``, ``amazon`` or ``amazon:valid`` (under ``shared_data``),
    a replay file, or a folder recognised by its files (Best Buy parts, or the Amazon catalog).

    Raises :class:`DatasetMissing` when nothing usable is there.
    """
    text = str(spec)
    name, _, option = text.partition(":")
    if isinstance(spec, str) and name in NAMED:
        folder = Path(shared_data) / NAMED[name]
        if name == "bestbuy":
            return bestbuy(folder, limit=int(option) if option else None, stats=stats)
        return amazon_office(folder, split=option or "test", stats=stats)

    path = Path(spec)
    if path.is_file():
        return generic(path, stats=stats)
    if path.is_dir():
        if all((path / f).is_file() for f in BESTBUY_FILES):
            return bestbuy(path, stats=stats)
        if (path / AMAZON_ITEMS).is_file():
            return amazon_office(path, stats=stats)
        raise DatasetMissing(
            f"{path}: a folder, but not a known dataset: expected {' + '.join(BESTBUY_FILES)} "
            f"(Best Buy) or {AMAZON_ITEMS} with {{test,valid}}_Office_Products.csv (Amazon)"
        )
    raise DatasetMissing(
        f"{path}: no such file or folder. Expected a dataset name ({', '.join(NAMED)}, amazon:valid) "
        f"resolved under {shared_data}, a JSONL/Parquet replay file, or a dataset folder"
    )
