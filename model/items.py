"""The item index of one model version: ids, texts, vectors and decayed popularity, on the device.

An item is recommendable the moment it has a vector: a catalog item from its title as soon as it
arrives; an item without a title (the Best Buy log has none) from the queries that led to clicks on
it, learned from past clicks only. Vectors are recomputed lazily (``refresh``) for the rows that
changed, so a batch pays for the items it touched, not for the catalog.

Bounded: at ``max_items`` a new item takes the row of the untitled item unseen for longest (an id
only ever seen in clicks); a new catalog item, when every row is titled, takes the row of the titled
item unseen for longest; a new untitled id then is not indexed (its click still counts in the
profile). Nothing raises; ``evictions`` counts each case by reason.

>>> idx = ItemIndex(4, torch.device("cpu"), max_items=2)
>>> _ = idx.observe_clicks([ClickEvidence("c1", "a", "q", 1.0), ClickEvidence("c2", "b", "q", 2.0)])
>>> _ = idx.observe_clicks([ClickEvidence("c3", "a", "q", 3.0), ClickEvidence("c4", "new", "q", 4.0)])
>>> sorted(idx.row), dict(idx.evictions)  # "b" was unseen for longest
(['a', 'new'], {'untitled': 1})
"""

from __future__ import annotations

import collections
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from coldstart.model.coarse import CoarseIndex, CoarseTraining
from coldstart.model.encoder import EmbeddingCache, TextEncoder
from coldstart.model.retrieval import item_text_vector, popularity_scores


class _NoQueries(collections.Counter):
    """The query counts of every row that has none: one shared, empty, read-only Counter, replaced by a
    row's own on its first query. A Counter per row was a million objects at a million titled items for
    every garbage collection to walk with the GIL held (250 ms of a 381 ms full collection)."""

    def __setitem__(self, key, value):
        raise TypeError("the shared empty query counts are read-only: give the row its own Counter")

    def __delitem__(self, key):
        raise TypeError("the shared empty query counts are read-only")


NO_QUERIES = _NoQueries()


# A coarse index's k-means over at most this many (sample rows x groups) runs in one call (~40 ms on a
# core); a larger one a step a batch (model/coarse.py KMeansSteps).
SMALL_KMEANS = 500_000


@dataclass(frozen=True, slots=True)
class ClickEvidence:
    event_id: str
    item_id: str
    query: str | None
    ts: float


class ItemIndex:
    def __init__(self, dim: int, device: torch.device, *, max_items: int = 1_000_000,
                 max_queries: int = 16, popularity_half_life_s: float = 3 * 86_400.0,
                 seen_clicks: int = 200_000, capacity: int = 1024) -> None:
        self.dim = dim
        self.device = device
        self.max_items = max_items
        self.max_queries = max_queries
        self.half_life_s = popularity_half_life_s
        self.ids: list[str] = []
        self.row: dict[str, int] = {}
        self.titles: list[str | None] = []
        self.queries: list[collections.Counter[str]] = []
        self.vectors = torch.zeros(capacity, dim, device=device)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=device)
        self.pop = torch.zeros(capacity, device=device)
        self.pop_ts = 0.0
        self._dirty: set[int] = set()
        # Every change to a row's text bumps the index revision and stamps the row, so a new model
        # version built from a snapshot can catch up with the rows that changed meanwhile.
        self.revision = 0
        self.row_rev: list[int] = []
        # Query -> clicked rows with counts: the query->click memory, mirroring ``queries`` (bounded
        # by it: at most max_queries entries per item).
        self.query_rows: dict[str, dict[int, int]] = {}
        # Click id -> (item id, query, time) of what it added, so a click found later to be a bot's can
        # be taken back out (``retract_clicks``); None for an id retracted before it arrived.
        self._seen: collections.OrderedDict[str, tuple[str, str | None, float] | None] = collections.OrderedDict()
        self._seen_cap = seen_clicks
        # Rows by whether they have a title, least recently seen first: the eviction order at capacity.
        self._recency: dict[bool, collections.OrderedDict[int, None]] = {
            False: collections.OrderedDict(), True: collections.OrderedDict()}
        self.evictions: collections.Counter[str] = collections.Counter()  # untitled | titled | refused
        # The coarse index requests use above COLDSTART_ANN_MIN_ITEMS (model/coarse.py; maintain_coarse),
        # and the next one while its rows are being assigned (it replaces the first when complete).
        self.coarse: CoarseIndex | None = None
        self._coarse_next: CoarseIndex | None = None
        self._coarse_training: CoarseTraining | None = None  # the next one's k-means, a step a batch

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------------------ updates
    def upsert(self, item_id: str, title: str | None) -> int | None:
        """The item's row (None: the index is full of titled items and this one has no title)."""
        row = self._row_for(item_id, titled=bool(title))
        if row is None:
            return None
        if title and self.titles[row] != title:
            self.titles[row] = title
            self._changed(row)
        self._touch(row)
        return row

    def observe_clicks(self, clicks: Iterable[ClickEvidence]) -> int:
        """Popularity and learned query text from clicks; idempotent by event id. Returns new clicks."""
        fresh = [c for c in clicks if c.event_id not in self._seen]
        if not fresh:
            return 0
        for c in fresh:
            self._seen[c.event_id] = None  # what it added is filled in below, once it has a row
        while len(self._seen) > self._seen_cap:
            self._seen.popitem(last=False)
        self._decay_to(max(c.ts for c in fresh))
        rows, indexed = [], []
        for c in fresh:
            row = self._row_for(c.item_id, titled=False)
            if row is None:
                continue
            self._touch(row)
            rows.append(row)
            indexed.append(c)
            query = sys.intern(c.query) if c.query else None  # one copy of each text across clicks
            if query:
                self._add_query(row, query)
            if c.event_id in self._seen:  # the index's own id string, not one more copy per click
                self._seen[c.event_id] = (self.ids[row], query, c.ts)
        if not rows:
            return len(fresh)
        weights = torch.tensor([0.5 ** (max(self.pop_ts - c.ts, 0.0) / self.half_life_s) for c in indexed],
                               device=self.device)
        self.pop.index_add_(0, torch.tensor(rows, device=self.device), weights)
        return len(fresh)

    def retract_clicks(self, event_ids: Iterable[str]) -> int:
        """Take clicks back out (a user flagged as a bot after they were counted): their query leaves
        the item's learned text (the vector of an untitled item is rebuilt at the next ``refresh``) and
        the query->click memory, and their popularity goes. An id not seen yet is kept out when it
        arrives. Returns the clicks taken out.

        >>> idx = ItemIndex(4, torch.device("cpu"))
        >>> _ = idx.observe_clicks([ClickEvidence("c1", "a", "halo", 1.0), ClickEvidence("b1", "a", "spam", 1.0)])
        >>> idx.retract_clicks(["b1", "b2"]), dict(idx.queries[0]), "spam" in idx.query_rows
        (1, {'halo': 1}, False)
        >>> idx.observe_clicks([ClickEvidence("b2", "a", "spam", 2.0)]), dict(idx.queries[0])
        (0, {'halo': 1})
        """
        taken = 0
        for event_id in event_ids:
            if event_id not in self._seen:
                self._seen[event_id] = None
                continue
            evidence = self._seen[event_id]
            self._seen[event_id] = None
            row = self.row.get(evidence[0]) if evidence is not None else None
            if row is None:  # never indexed, evicted since, or retracted already
                continue
            item_id, query, ts = evidence
            taken += 1
            self.pop[row] = max(float(self.pop[row]) - 0.5 ** (max(self.pop_ts - ts, 0.0) / self.half_life_s), 0.0)
            counts = self.queries[row]
            if query and counts.get(query, 0) > 0:
                counts[query] -= 1
                if counts[query] == 0:
                    del counts[query]
                    self._unlink_query(row, query)
                else:
                    self.query_rows.setdefault(query, {})[row] = counts[query]
                if not self.titles[row]:
                    self._changed(row)
        while len(self._seen) > self._seen_cap:
            self._seen.popitem(last=False)
        return taken

    def refresh(self, encoder: TextEncoder, cache: EmbeddingCache, limit: int | None = None,
                only: Iterable[str] | None = None) -> int:
        """Recompute the vectors of rows whose text changed: at most ``limit`` of them (so a caller on
        an event loop can yield between chunks), or only those of the items ``only``. Returns the
        number of rows refreshed."""
        if not self._dirty:
            return 0
        if only is not None:
            rows = sorted({self.row[i] for i in only if i in self.row} & self._dirty)
        else:
            rows = sorted(self._dirty)
        if limit is not None:
            rows = rows[:limit]
        self._dirty.difference_update(rows)
        # A reused (evicted) row with no text yet must not keep its previous item's vector.
        empty = [r for r in rows if not self.titles[r] and not self.queries[r]]
        if empty:
            self.valid[empty] = False
        titled = [r for r in rows if self.titles[r]]
        if titled:
            vecs = cache.encode(encoder, [self.titles[r] for r in titled])
            self.vectors[titled] = vecs
            self.valid[titled] = True
            self._assign_coarse(titled)
        learned = [r for r in rows if not self.titles[r] and self.queries[r]]
        if learned:
            texts: list[str] = []
            spans = []
            for r in learned:
                qs = self.queries[r]
                spans.append((len(texts), len(qs)))
                texts.extend(qs.keys())
            qvecs = cache.encode(encoder, texts)
            for r, (start, n) in zip(learned, spans):
                counts = torch.tensor(list(self.queries[r].values()), dtype=torch.float32, device=self.device)
                self.vectors[r] = item_text_vector(qvecs[start:start + n], counts)
                self.valid[r] = True
            self._assign_coarse(learned)
        return len(rows)

    def maintain_coarse(self, min_items: int, budget: int = 2048) -> int:
        """Keep the coarse index (model/coarse.py) up with the catalogue, a bounded step at a time (the
        writer thread calls it once a batch): trained once ``min_items`` items have vectors (0: never)
        and again whenever their number doubled (the k-means a bounded step a call where it is large),
        then at most ``budget`` rows assigned per call (~25 ms at 1,024 groups on one core). Returns the
        rows assigned, 1 for a step of training, 0 when there was nothing to do.

        >>> idx = ItemIndex(4, torch.device("cpu"))
        >>> for i in range(64):
        ...     _ = idx.upsert(f"i{i}", f"t{i}")
        >>> idx.vectors[:64] = torch.nn.functional.normalize(torch.randn(64, 4), dim=1); idx.valid[:64] = True
        >>> idx.maintain_coarse(32, budget=40), idx.coarse is None, idx.maintain_coarse(32, budget=40)
        (40, True, 24)
        >>> idx.coarse.lists, idx.coarse.complete(64)
        (16, True)
        """
        n = len(self.ids)
        if min_items <= 0 or n < min_items:
            return 0
        if self.coarse is not None and self.coarse.lists_stale(n):
            self.coarse.rebuild_lists(n)  # the inverted lists behind by a fifth: sorted again
        if self._coarse_next is None and self._coarse_training is None:
            n_valid = int(self.valid[:n].sum())
            if n_valid < min_items or (self.coarse is not None and n_valid < 2 * self.coarse.trained_on):
                return 0
            self._coarse_training = CoarseIndex.training(self.vectors, capacity=self.vectors.shape[0],
                                                         rows=self.valid[:n].nonzero().flatten())
        if self._coarse_training is not None:
            # k-means a step a batch (1.6 s at once at 1M items: a stall of the writer and every batch),
            # unless the whole of it is small
            training = self._coarse_training
            small = training.steps.x.shape[0] * training.steps.k <= SMALL_KMEANS
            while training.step() and small:
                pass
            if training.index is None:
                return 1
            self._coarse_next, self._coarse_training = training.index, None
        nxt = self._coarse_next
        done = nxt.assign_next(self.vectors, n, budget)
        if nxt.complete(n):
            nxt.rebuild_lists(n)
            self.coarse, self._coarse_next = nxt, None
        return done

    def _assign_coarse(self, rows: list[int]) -> None:
        """Rows that got a new vector move to their nearest group in the coarse indexes there are."""
        for coarse in (self.coarse, self._coarse_next):
            if coarse is not None:
                coarse.assign_rows(rows, self.vectors[rows])

    def reencode_all(self, encoder: TextEncoder, cache: EmbeddingCache) -> None:
        """Recompute every vector (a new model version: one vector space at a time)."""
        self._dirty.update(range(len(self.ids)))
        self.refresh(encoder, cache)

    def copy_metadata(self, device: torch.device | None = None) -> "ItemIndex":
        """A new index with the same items, texts and popularity but no vectors (for a new version)."""
        other = ItemIndex(self.dim, device or self.device, max_items=self.max_items,
                          max_queries=self.max_queries, popularity_half_life_s=self.half_life_s,
                          seen_clicks=self._seen_cap, capacity=max(len(self.ids), 1024))
        other.ids = list(self.ids)
        other.row = dict(self.row)
        other.titles = list(self.titles)
        other.queries = [collections.Counter(q) if q else NO_QUERIES for q in self.queries]
        other.query_rows = {q: dict(rows) for q, rows in self.query_rows.items()}
        other.pop[: len(self.ids)] = self.pop[: len(self.ids)].to(other.device)
        other.pop_ts = self.pop_ts
        other._seen = collections.OrderedDict(self._seen)
        other._recency = {k: collections.OrderedDict(v) for k, v in self._recency.items()}
        other.evictions = collections.Counter(self.evictions)
        other.revision = self.revision
        other.row_rev = list(self.row_rev)
        other._dirty = set(range(len(self.ids)))
        return other

    def adopt(self, live: "ItemIndex", snapshot_revision: int) -> int:
        """Take over ``live``'s items, texts, popularity and seen clicks (it is retired by the swap),
        keeping this index's vectors for rows unchanged since ``snapshot_revision``; rows added or
        changed since are marked for ``refresh``. Returns how many rows need re-encoding.
        """
        n = len(live.ids)
        while self.vectors.shape[0] < n:
            self._grow()
        self.ids, self.row, self.titles, self.queries = live.ids, live.row, live.titles, live.queries
        self.query_rows = live.query_rows
        self._seen, self.revision, self.row_rev = live._seen, live.revision, live.row_rev
        self._recency, self.evictions = live._recency, live.evictions
        self.pop[:n] = live.pop[:n].to(self.device)
        self.pop_ts = live.pop_ts
        stale = [r for r in range(n) if self.row_rev[r] > snapshot_revision]
        self._dirty.update(stale)
        return len(stale)

    # ------------------------------------------------------------------------------ reads
    @property
    def pending(self) -> int:
        """Rows waiting for a vector (changed since the last refresh)."""
        return len(self._dirty)

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.ids)
        return self.vectors[:n], self.valid[:n]

    def popularity(self) -> torch.Tensor:
        return popularity_scores(self.pop[: len(self.ids)])

    def query_memory(self, query: str) -> torch.Tensor | None:
        """Past clicks after exactly this (normalised) query, as scores in [0, 1] per row; None if never seen.

        Only clicks already observed count, so nothing from the future leaks into a ranking.
        """
        rows = self.query_rows.get(query)
        if not rows:
            return None
        out = torch.zeros(len(self.ids), device=self.device)
        idx = torch.tensor(list(rows.keys()), device=self.device)
        counts = torch.tensor(list(rows.values()), dtype=torch.float32, device=self.device)
        out[idx] = torch.log1p(counts) / math.log1p(float(counts.max()))
        return out

    def text(self, row: int) -> str:
        if self.titles[row]:
            return self.titles[row]
        return " | ".join(q for q, _ in self.queries[row].most_common(3))

    def rows_of(self, item_ids: Iterable[str]) -> list[int]:
        # one lookup per id: a reader must not see an id evicted between a test and a read
        return [r for r in (self.row.get(i) for i in item_ids) if r is not None]

    # ------------------------------------------------------------------------------ internals
    def _row_for(self, item_id: str, titled: bool) -> int | None:
        row = self.row.get(item_id)
        if row is not None:
            return row
        if len(self.ids) >= self.max_items:
            return self._reuse_row(item_id, titled)
        row = len(self.ids)
        if row >= self.vectors.shape[0]:
            self._grow()
        self.ids.append(item_id)
        self.row[item_id] = row
        self.titles.append(None)
        self.queries.append(NO_QUERIES)
        self.row_rev.append(0)
        self._changed(row)
        return row

    def _reuse_row(self, item_id: str, titled: bool) -> int | None:
        """At capacity: evict the untitled item unseen for longest (a titled one only to make room
        for another titled item) and give its row to ``item_id``; None when nothing may go."""
        if self._recency[False]:
            reason = "untitled"
        elif titled and self._recency[True]:
            reason = "titled"
        else:
            self.evictions["refused"] += 1
            return None
        row, _ = self._recency[reason == "titled"].popitem(last=False)
        self.evictions[reason] += 1
        del self.row[self.ids[row]]
        for query in self.queries[row]:
            self._unlink_query(row, query)
        self.ids[row] = item_id
        self.row[item_id] = row
        self.titles[row] = None
        self.queries[row] = NO_QUERIES
        self.valid[row] = False
        self.pop[row] = 0.0
        self._changed(row)
        return row

    def _touch(self, row: int) -> None:
        titled = bool(self.titles[row])
        self._recency[not titled].pop(row, None)
        order = self._recency[titled]
        order[row] = None
        order.move_to_end(row)

    def _changed(self, row: int) -> None:
        self.revision += 1
        self.row_rev[row] = self.revision
        self._dirty.add(row)

    def _grow(self) -> None:
        cap = self.vectors.shape[0] * 2
        for name in ("vectors", "valid", "pop"):
            old = getattr(self, name)
            new = torch.zeros((cap, *old.shape[1:]), dtype=old.dtype, device=self.device)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def _add_query(self, row: int, query: str) -> None:
        counts = self.queries[row]
        if counts is NO_QUERIES:
            counts = self.queries[row] = collections.Counter()
        if query not in counts and len(counts) >= self.max_queries:
            # Bounded: a new query replaces the rarest one (ties: the oldest inserted).
            rarest = min(counts, key=counts.__getitem__)
            del counts[rarest]
            self._unlink_query(row, rarest)
        counts[query] += 1
        self.query_rows.setdefault(query, {})[row] = counts[query]
        if not self.titles[row]:
            self._changed(row)

    def _unlink_query(self, row: int, query: str) -> None:
        """``query`` no longer leads to ``row``: out of the query->rows memory (and the query with it
        when no row is left)."""
        rows = self.query_rows.get(query)
        if rows is not None:
            rows.pop(row, None)
            if not rows:
                del self.query_rows[query]

    def _decay_to(self, ts: float) -> None:
        if ts <= self.pop_ts:
            return
        if self.pop_ts > 0:
            self.pop.mul_(math.pow(0.5, (ts - self.pop_ts) / self.half_life_s))
        self.pop_ts = ts
