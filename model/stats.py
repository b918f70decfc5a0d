"""Stream statistics every worker keeps about items, learned from the click stream (issue 9).

Fed with every click of every partition (the catalog reader reads them all from the start of
retention, so the statistics are rebuilt from the topic after a restart), idempotent by event id and
bounded in every dimension:

- ``transitions``: item A -> the item the same user clicked next (at most ``max_neighbours`` per item);
- ``coclicks``: items clicked by the same user within their last ``coclick_window`` clicks;
- ``query_clicks``: normalised query -> clicked items;
- decayed popularity (event time, half-life ``popularity_half_life_s``) and each item's first-seen time.

Each click's increments are remembered (bounded) so that :meth:`StreamStats.excluding` can take one
click out while the learned ranker looks at it: the all-partition reader may have counted a click
before the batch path learns from it, and a click must never be evidence for itself.

>>> s = StreamStats()
>>> for eid, user, item, ts in [("e1", "u1", "a", 1.0), ("e2", "u1", "b", 2.0), ("e3", "u2", "a", 3.0),
...                             ("e3", "u2", "a", 3.0)]:
...     _ = s.observe(eid, user, item, ts, query="halo")
>>> s.transitions["a"], s.query_clicks["halo"]
({'b': 1.0}, {'a': 2.0, 'b': 1.0})
>>> with s.excluding("e2"):
...     s.neighbours(s.transitions, "a")
{}
>>> s.transitions["a"]
{'b': 1.0}
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence

import torch

__all__ = ["RowStats", "StreamStats"]

# Which table an undo entry's delta went to (StreamStats._undo: by index and row key, not by the row
# dict itself, so that the garbage collector stops tracking the records).
UNDO_TRANSITIONS, UNDO_COCLICKS, UNDO_QUERIES, UNDO_POP = 0, 1, 2, 3

# Items whose popularity or first-seen time changed since a reader last looked (RowStats drains it);
# past this many unread changes the oldest are dropped and the next read refills every row instead.
CHANGE_LOG = 1_000_000


class StreamStats:
    def __init__(self, *, max_users: int = 200_000, max_items: int = 1_000_000, max_neighbours: int = 64,
                 max_queries: int = 200_000, coclick_window: int = 5, popularity_half_life_s: float = 3 * 86_400.0,
                 seen_clicks: int = 200_000) -> None:
        self.max_users = max_users
        self.max_items = max_items
        self.max_neighbours = max_neighbours
        self.max_queries = max_queries
        self.coclick_window = coclick_window
        self.half_life_s = popularity_half_life_s
        self.transitions: dict[str, dict[str, float]] = {}
        self.coclicks: dict[str, dict[str, float]] = {}
        self.query_clicks: OrderedDict[str, dict[str, float]] = OrderedDict()
        self.first_seen: dict[str, float] = {}
        # Popularity as sum of 2 ** ((ts - origin) / half_life): adding and removing one click are exact;
        # the origin moves forward when the exponents grow large (see _rebase).
        self.pop: dict[str, float] = {}
        self.pop_origin: float | None = None
        self.newest_ts = 0.0
        # user -> last clicked items. Tuples, and one flat tuple of (table, row key, key, delta) entries per
        # remembered click in ``_undo``: a list per user and a list of tuples per click were ~450,000
        # containers after 170k clicks, which every full garbage collection walks with the GIL held. A
        # tuple of strings and numbers leaves the collector's lists after its first visit; one holding a
        # row dict (the undo records' first form) never does: 76k of a worker's 96k tracked objects.
        self.user_recent: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._undo: OrderedDict[str, tuple] = OrderedDict()
        self._tables = (self.transitions, self.coclicks, self.query_clicks)  # by UNDO_* index
        self._seen_cap = seen_clicks
        self.clicks = 0
        # For row-indexed readers (RowStats): which items' pop / first_seen changed, appended by the one
        # writer after each change; popleft by the reader (both atomic on a deque).
        self.changed: deque[str] = deque(maxlen=CHANGE_LOG)
        self.changes_dropped = 0
        self.rebases = 0

    # ------------------------------------------------------------------------------ updates
    def observe(self, event_id: str, user_id: str, item_id: str, ts: float, query: str | None = None) -> bool:
        """Count one click; False (and no change) when its event id was already counted."""
        if event_id in self._undo:
            return False
        undo: list = []  # flat (table, row key, key, delta) entries, stored as one tuple
        self.clicks += 1
        self.newest_ts = max(self.newest_ts, ts)
        self.first_seen.setdefault(item_id, ts)
        recent = self.user_recent.pop(user_id, ())
        if recent:
            self._add(UNDO_TRANSITIONS, recent[-1], item_id, 1.0, undo)
            for other in recent[-self.coclick_window:]:
                if other != item_id:
                    self._add(UNDO_COCLICKS, other, item_id, 1.0, undo)
                    self._add(UNDO_COCLICKS, item_id, other, 1.0, undo)
        recent = (*recent[1 - self.coclick_window:], item_id) if self.coclick_window > 1 else (item_id,)
        self.user_recent[user_id] = recent
        if len(self.user_recent) > self.max_users:
            self.user_recent.popitem(last=False)
        if query:
            self.query_clicks[query] = self.query_clicks.pop(query, None) or {}  # most recent last
            if len(self.query_clicks) > self.max_queries:
                self.query_clicks.popitem(last=False)
            self._add(UNDO_QUERIES, query, item_id, 1.0, undo)
        # Rebase *before* adding: a click years after the origin (a replayed 2011 log, then live
        # traffic) would otherwise overflow 2 ** (years / half-life) and fail every later click.
        if self.pop_origin is None:
            self.pop_origin = self.newest_ts
        elif (self.newest_ts - self.pop_origin) / self.half_life_s > 500:
            self._rebase()
        self._add(UNDO_POP, "", item_id, growth((ts - self.pop_origin) / self.half_life_s), undo)
        self._mark(item_id)
        self._undo[event_id] = tuple(undo)
        while len(self._undo) > self._seen_cap:
            self._undo.popitem(last=False)
        return True

    def note_item(self, item_id: str, ts: float | None) -> None:
        """A catalog item's announcement time: newness counts from it when it precedes any click."""
        if ts is not None and (item_id not in self.first_seen or ts < self.first_seen[item_id]):
            self.first_seen[item_id] = ts
            self._mark(item_id)

    @contextlib.contextmanager
    def excluding(self, event_id: str) -> Iterator[None]:
        """Read the statistics as if the click ``event_id`` had not been counted yet."""
        undo = self._undo.get(event_id, ())
        self._apply(undo, -1.0)
        try:
            yield
        finally:
            self._apply(undo, 1.0)

    def retract(self, event_ids: Iterable[str]) -> int:
        """Take counted clicks back out for good, and keep clicks not counted yet out (a user flagged as
        a bot: issue 10; a later :meth:`observe` of any of these ids is a duplicate). Returns how many
        were counted and so removed; an id counted too long ago to be remembered (``seen_clicks``) stays.

        >>> s = StreamStats()
        >>> _ = s.observe("h1", "human", "a", 0.0); _ = s.observe("b1", "bot", "a", 1.0); _ = s.observe("b2", "bot", "b", 2.0)
        >>> s.retract(["b1", "b2", "never"]), round(s.popularity("a", 0.0), 6), s.neighbours(s.coclicks, "a")
        (2, 1.0, {})
        >>> s.observe("b1", "bot", "a", 1.0), s.observe("never", "bot", "a", 3.0)  # kept out for good
        (False, False)
        """
        removed = 0
        for event_id in event_ids:
            undo = self._undo.get(event_id)
            if undo is None:  # not counted (yet): blocked
                self._undo[event_id] = ()
                while len(self._undo) > self._seen_cap:
                    self._undo.popitem(last=False)
                continue
            if not undo:
                continue
            self._apply(undo, -1.0)
            self._undo[event_id] = ()  # kept (empty): a redelivery of it is still a duplicate
            removed += 1
        return removed

    def items_of(self, event_ids: Iterable[str]) -> set[str]:
        """The items of the counted clicks among ``event_ids`` (from their undo records).

        >>> s = StreamStats(); _ = s.observe("e1", "u", "a", 0.0); _ = s.observe("e2", "u", "b", 1.0)
        >>> sorted(s.items_of(["e1", "e2", "never"]))
        ['a', 'b']
        """
        out = set()
        for event_id in event_ids:
            undo = self._undo.get(event_id, ())
            out.update(undo[i + 2] for i in range(0, len(undo), 4) if undo[i] == UNDO_POP)
        return out

    # ------------------------------------------------------------------------------ reads
    def popularity(self, item_id: str, now: float) -> float:
        """Decayed click count of ``item_id`` at event time ``now``."""
        if self.pop_origin is None:
            return 0.0
        return self.pop.get(item_id, 0.0) * growth((self.pop_origin - now) / self.half_life_s)

    # Readers (the recommendations API, on the event loop) and the writer thread share these dicts:
    # readers iterate a ``dict.copy()``, never the dict itself (see :func:`snapshot`).
    def neighbours(self, table: dict[str, dict[str, float]], item_id: str) -> dict[str, float]:
        return {k: v for k, v in snapshot(table.get(item_id, {})).items() if v > 0.0}

    def query_items(self, query: str) -> dict[str, float]:
        return {k: v for k, v in snapshot(self.query_clicks.get(query, {})).items() if v > 0.0}

    # ------------------------------------------------------------------------------ internals
    def mark_changed(self, item_ids: Iterable[str]) -> None:
        """Tell row readers that these items' values changed outside the statistics (the ranker's
        offsets: see :class:`RowStats`). The writer thread, like every other change."""
        for item_id in item_ids:
            self._mark(item_id)

    def _mark(self, item_id: str) -> None:
        if len(self.changed) == CHANGE_LOG:
            self.changes_dropped += 1  # the log overflowed: the next read refills every row
        self.changed.append(item_id)

    def _row(self, table: dict[str, dict[str, float]], key: str) -> dict[str, float]:
        row = table.get(key)
        if row is None:
            row = table[key] = {}
            if len(table) > self.max_items:
                table.pop(next(iter(table)))  # bounded: the oldest source item goes
        return row

    def _apply(self, undo: tuple, sign: float) -> None:
        """Add (``sign`` 1) or take out (-1) one click's recorded deltas (flat ``table, row key, key,
        delta`` entries). A row dropped since (the tables are bounded) is left alone: what it held is
        gone already."""
        for i in range(0, len(undo), 4):
            table, row_key, key, delta = undo[i], undo[i + 1], undo[i + 2], undo[i + 3]
            row = self.pop if table == UNDO_POP else self._tables[table].get(row_key)
            if row is None:
                continue
            row[key] = row.get(key, 0.0) + sign * delta
            if table == UNDO_POP:
                self._mark(key)

    def _add(self, table: int, row_key: str, key: str, delta: float, undo: list) -> None:
        if table == UNDO_POP:
            row = self.pop
        elif table == UNDO_QUERIES:
            row = self.query_clicks[row_key]
        else:
            row = self._row(self._tables[table], row_key)
        if key not in row and row is not self.pop and len(row) >= self.max_neighbours:
            # Bounded: a new neighbour replaces the weakest one (its undo entries just stop mattering).
            weakest = min(row, key=row.__getitem__)
            del row[weakest]
        row[key] = row.get(key, 0.0) + delta
        undo += (table, row_key, key, delta)  # flat: one tuple per click when stored (observe)

    def _rebase(self) -> None:
        shift = growth((self.pop_origin - self.newest_ts) / self.half_life_s)
        for k in self.pop:
            self.pop[k] *= shift
        # Remembered increments are in the old scale; rescale them too so exclusion stays exact.
        rescaled = {event_id: tuple(v * shift if i % 4 == 3 and undo[i - 3] == UNDO_POP else v
                                    for i, v in enumerate(undo))
                    for event_id, undo in self._undo.items()
                    if any(undo[i] == UNDO_POP for i in range(0, len(undo), 4))}
        self._undo.update(rescaled)  # existing keys: the order (oldest first) stays
        self.pop_origin = self.newest_ts
        self.rebases += 1  # every raw count changed: row readers refill


class RowStats:
    """The popularity (raw decayed counts) and first-seen times of :class:`StreamStats` laid out by the
    rows of an item index and kept current from the statistics' change log, so that a request reads two
    tensors instead of looking up every item of the catalogue in two dicts (O(n) Python per request:
    ~100 ms of a 100k-item request went there).

    Requests (event loop) and the ranker's learning (writer thread) both read through one instance, under
    its lock; the writer only changes the statistics and the index. It marks an item after changing it,
    so a change missed by one read is in the log for the next. Rows the index gives to another item
    (eviction at capacity, a swapped index) are found by comparing each row's item with the one it was
    filled for, whenever the index's eviction count moves or the index object changes.

    >>> s = StreamStats(popularity_half_life_s=10.0)
    >>> _ = s.observe("e1", "u1", "b", 0.0); s.note_item("a", -10.0)
    >>> class Index: ids, row, evictions, device = ["a", "b", "c"], {"a": 0, "b": 1, "c": 2}, {}, torch.device("cpu")
    >>> pop, newness, offsets, top = RowStats(s, torch.device("cpu"), offsets={"c": 0.5}).read(Index, 3, now=0.0)
    >>> pop.tolist(), newness.tolist(), offsets.tolist(), top
    ([0.0, 1.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.5], 1.0)
    """

    def __init__(self, stats: StreamStats, device: torch.device, offsets: dict[str, float] | None = None) -> None:
        """``offsets``: a third per-item value read by row the same way (the learned ranker's item biases,
        which its writer marks in ``stats.changed`` after writing them)."""
        self.stats = stats
        self.item_offsets = offsets if offsets is not None else {}  # item id -> offset, shared with its writer
        self.lock = threading.Lock()
        self._reset(device)

    def _reset(self, device: torch.device) -> None:
        self.device = device
        self.ids: list[str | None] = []  # the item each row was filled for
        self.pop = torch.zeros(1024, dtype=torch.float64, device=device)
        # -inf: never seen, so that newness = 0.5 ** inf = 0 with no mask (two torch calls a read fewer)
        self.first = torch.full((1024,), -math.inf, dtype=torch.float64, device=device)
        self.offsets = torch.zeros(1024, device=device)
        self._index = None
        self._evictions = -1
        self._dropped = -1  # refill every row at the first read
        self._rebases = self.stats.rebases
        self._unsure = False

    def read(self, index, n: int, now: float, rows: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """``(popularity counts at event time now, newness at now, offsets, the largest count)`` of rows
        ``< n`` (or of ``rows`` only: a coarse index's candidates, so the per-row work is theirs, not the
        catalogue's), float32 each: the same values as looking every item up in the statistics' dicts."""
        stats = self.stats
        with self.lock:
            self._sync(index, n)
            at = slice(0, n) if rows is None else rows
            size = n if rows is None else rows.numel()
            if stats.pop_origin is None or n == 0:
                pop, top = torch.zeros(size, device=self.device), 0.0
            else:
                scale = growth((stats.pop_origin - now) / stats.half_life_s)
                pop = (self.pop[at] * scale).clamp_min(0.0).float()
                top = max(float(self.pop[:n].max()) * scale, 0.0)
            first = self.first[at]
            newness = torch.pow(0.5, (now - first).clamp_min(0.0) / stats.half_life_s)
            offsets = self.offsets[at].clone()
        return pop, newness.float(), offsets, top

    def write_offsets(self, index, item_ids: Sequence[str]) -> None:
        """Copy these items' offsets from the shared dict into their rows now: the ranker's writer after
        each step (~33 items). Marking them changed instead made the next read refill each of their rows'
        three values with a tensor built per value, a third of a step's torch calls (issue 11: each call
        hands the GIL over). An item whose row this reader has not filled for it (not read yet, moved, or
        another index) is marked changed instead, and the next read fills it as before.

        >>> s = StreamStats(); offsets = {"a": 0.0}
        >>> class Index: ids, row, evictions, device = ["a", "b"], {"a": 0, "b": 1}, {}, torch.device("cpu")
        >>> rows = RowStats(s, torch.device("cpu"), offsets=offsets); _ = rows.read(Index, 2, now=0.0)
        >>> offsets.update(a=0.5, z=1.0); rows.write_offsets(Index, ["a", "z"])
        >>> rows.offsets[:2].tolist(), list(s.changed)
        ([0.5, 0.0], ['z'])
        """
        offsets, row = self.item_offsets, index.row
        at: list[int] = []
        values: list[float] = []
        unfilled: list[str] = []
        with self.lock:
            mine = self.ids if index is self._index else ()
            for item in item_ids:
                r = row.get(item)
                if r is not None and r < len(mine) and mine[r] == item:
                    at.append(r)
                    values.append(offsets.get(item, 0.0))
                else:
                    unfilled.append(item)
            self.stats.mark_changed(unfilled)
            if at:
                self.offsets[torch.tensor(at, dtype=torch.long, device=self.device)] = torch.tensor(
                    values, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------------------ internals
    def _sync(self, index, n: int) -> None:
        stats, ids = self.stats, index.ids
        if index.device != self.device or (self._index is not None and len(ids) < len(self.ids)):
            self._reset(index.device)  # another device or a smaller catalogue: start afresh
        evictions = sum(index.evictions.values())
        full = stats.changes_dropped != self._dropped or stats.rebases != self._rebases
        self._dropped, self._rebases = stats.changes_dropped, stats.rebases
        stale: list[int] = []
        if not full and (index is not self._index or evictions != self._evictions or self._unsure):
            stale = self._moved(index, evictions != self._evictions or self._unsure)
        self._index, self._evictions = index, evictions
        changed, row, filled = stats.changed, index.row, len(self.ids)
        while True:  # drain before reading the values: a change after this is logged for the next read
            try:
                item = changed.popleft()
            except IndexError:
                break
            r = row.get(item)
            if r is not None and r < filled:
                stale.append(r)
        if full:
            stale = list(range(filled))
        if n > filled:
            while self.pop.shape[0] < n:
                self._grow()
            self.ids.extend(ids[filled:n])
            stale.extend(range(filled, n))
        if stale:
            self._fill(ids, stale)

    def _moved(self, index, check_rows: bool) -> list[int]:
        """Rows whose item is not the one they were filled for. ``check_rows``: also rows whose item the
        index no longer maps to them (the writer is between the two steps of giving the row away: the
        row is refilled now and looked at again at the next read)."""
        ids, row, m = index.ids, index.row, len(self.ids)
        if not check_rows and ids[:m] == self.ids:
            return []
        out, unsure = [], False
        for r, (mine, now) in enumerate(zip(self.ids, ids[:m])):
            if mine != now:
                out.append(r)
            elif check_rows and row.get(now) != r:
                out.append(r)
                unsure = True
        self._unsure = unsure
        return out

    def _fill(self, ids: Sequence[str], rows: list[int]) -> None:
        pop, first_seen = self.stats.pop, self.stats.first_seen
        items = [ids[r] for r in rows]
        for r, item in zip(rows, items):
            self.ids[r] = item
        at = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.pop[at] = torch.tensor([pop.get(i, 0.0) for i in items], dtype=torch.float64, device=self.device)
        self.first[at] = torch.tensor([first_seen.get(i, -math.inf) for i in items], dtype=torch.float64,
                                      device=self.device)
        offsets = self.item_offsets
        self.offsets[at] = torch.tensor([offsets.get(i, 0.0) for i in items], dtype=torch.float32, device=self.device)

    def _grow(self) -> None:
        cap = self.pop.shape[0] * 2
        pop = torch.zeros(cap, dtype=torch.float64, device=self.device)
        first = torch.full((cap,), -math.inf, dtype=torch.float64, device=self.device)
        offsets = torch.zeros(cap, device=self.device)
        pop[: self.pop.shape[0]] = self.pop
        first[: self.first.shape[0]] = self.first
        offsets[: self.offsets.shape[0]] = self.offsets
        self.pop, self.first, self.offsets = pop, first, offsets


def log_norm(counts: dict[str, float]) -> dict[str, float]:
    """``log1p(count) / log1p(max count)`` per key, in [0, 1].

    >>> log_norm({"a": 3.0, "b": 1.0})
    {'a': 1.0, 'b': 0.5}
    """
    if not counts:
        return {}
    top = math.log1p(max(counts.values()))
    return {k: (math.log1p(v) / top if top > 0 else 0.0) for k, v in counts.items()}


def snapshot(shared: dict) -> dict:
    """A consistent copy of a dict that the writer thread may be resizing meanwhile.

    ``dict.copy()`` copies the entries in one C call that runs no Python code, so no other thread can
    run in between. ``list(d.items())`` is not safe: it allocates a tuple per entry, an allocation can
    start the cyclic garbage collector, and a finalizer it runs can hand the GIL to the writer in the
    middle of the iteration ("dictionary changed size during iteration", seen under test).

    >>> snapshot({"a": 1.0})
    {'a': 1.0}
    """
    return shared.copy()


def growth(half_lives: float) -> float:
    """``2 ** half_lives``, capped at 2 ** 500: popularity is kept relative to an origin, and a read or a
    click far from it (a user's old events against today's counts) must give a finite number instead
    of an OverflowError. Far in the past the factor underflows to 0.0, which is what it means.

    >>> growth(1.0), growth(-5000.0), growth(5000.0) == 2.0 ** 500
    (2.0, 0.0, True)
    """
    return 2.0 ** min(half_lives, 500.0)
