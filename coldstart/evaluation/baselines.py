"""Online baselines that learn event by event, river-style: ``learn_one(event)`` then ``rank(...)``.

Every baseline sees the same :class:`~coldstart.replay.ReplayEvent` stream as the live system, in
time order. The prequential runner asks ``rank(user, query, k)`` *before* it calls ``learn_one`` with
the click being predicted, so nothing from the future reaches a ranking.

    DecayedPopularity   clicks, exponentially decayed in event time
    ItemKNN             cosine-normalised co-occurrence of items clicked by the same user
    Transitions         first-order "clicked A, then B" counts from the user's last click
    QueryMemory         items clicked after the same normalised query, backed off to another ranker
    ZeroShotProfile     cosine of a recency-weighted mean of the user's event vectors (no fine-tuning),
                        optionally blended with popularity like the live scorer

Rankers that run out of evidence fill the list with popularity, so every list has ``k`` items when
``k`` items were ever clicked.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Iterable, Sequence
from typing import Protocol

import torch

from coldstart.model.profile import popularity_blend, profile_vectors, recency_weights
from coldstart.model.retrieval import item_text_vector, score_items, top_k
from coldstart.replay.events import ReplayEvent

__all__ = [
    "Baseline", "DecayedPopularity", "ItemKNN", "QueryMemory", "TextVectors", "Transitions",
    "ZeroShotProfile", "normalize_query",
]


class Baseline(Protocol):
    name: str

    def learn_one(self, event: ReplayEvent) -> None: ...

    def rank(self, user: str, query: str | None, k: int) -> list[str]: ...


def normalize_query(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the key of the query memory.

    >>> normalize_query("  Call-of-Duty: Black  OPS ")
    'call of duty black ops'
    """
    return " ".join(re.sub(r"[^\w]+", " ", text.lower()).split())


def _top(scores: dict[str, float], k: int, skip: Iterable[str] = ()) -> list[str]:
    # Ties break on item id so runs are reproducible.
    skip = set(skip)
    return [i for _, i in heapq.nsmallest(k, ((-s, i) for i, s in scores.items() if i not in skip))]


def _clicked(event: ReplayEvent) -> str | None:
    return str(event.value.get("item_id")) if event.type == "click" and event.value.get("item_id") else None


class DecayedPopularity:
    """Clicks per item, each worth ``0.5 ** (age / half_life_s)`` in event time.

    >>> pop = DecayedPopularity(half_life_s=10.0)
    >>> for item, ts in [("a", 0.0), ("a", 1.0), ("b", 30.0)]:
    ...     pop.learn_one(ReplayEvent("click", "u", {"user_id": "u", "item_id": item}, ts))
    >>> pop.rank("anyone", None, 2)  # a: 2 clicks 30 s ago (~0.23) < b: 1 click now
    ['b', 'a']
    """

    name = "popularity"

    def __init__(self, half_life_s: float = 3 * 86_400.0) -> None:
        self.half_life_s = half_life_s
        self.origin: float | None = None
        self.scores: dict[str, float] = {}
        self._newest = 0.0  # exponent of the newest click

    def learn_one(self, event: ReplayEvent) -> None:
        item = _clicked(event)
        if item is None:
            return
        if self.origin is None:
            self.origin = event.ts
        exponent = (event.ts - self.origin) / self.half_life_s
        if exponent > 500:  # rebase before the weights overflow a float
            scale = 0.5 ** exponent
            self.scores = {i: s * scale for i, s in self.scores.items()}
            self.origin, exponent, self._newest = event.ts, 0.0, self._newest - exponent
        self.scores[item] = self.scores.get(item, 0.0) + 2.0 ** exponent
        self._newest = max(self._newest, exponent)

    def rank(self, user: str, query: str | None, k: int, skip: Iterable[str] = ()) -> list[str]:
        return _top(self.scores, k, skip)

    def normalized(self) -> dict[str, float]:
        """``log1p(clicks) / log1p(max clicks)`` per item, clicks decayed to the newest click: the
        worker's popularity scale (``coldstart.model.retrieval.popularity_scores``)."""
        if not self.scores:
            return {}
        unit = 2.0 ** self._newest
        top = math.log1p(max(self.scores.values()) / unit)
        if top <= 0:
            return {}
        return {i: math.log1p(s / unit) / top for i, s in self.scores.items()}


class _UserItems:
    """The recent clicked items of each user (bounded) and a popularity fallback."""

    def __init__(self, max_recent: int, half_life_s: float) -> None:
        self.recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=max_recent))
        self.popularity = DecayedPopularity(half_life_s)

    def fill(self, scores: dict[str, float], k: int) -> list[str]:
        ranked = _top(scores, k)
        if len(ranked) < k:
            ranked += self.popularity.rank("", None, k - len(ranked), skip=ranked)
        return ranked


class ItemKNN(_UserItems):
    """Item-to-item co-occurrence: items clicked by the same users, cosine-normalised.

    >>> knn = ItemKNN()
    >>> for user, item in [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "c")]:
    ...     knn.learn_one(ReplayEvent("click", user, {"user_id": user, "item_id": item}, 0.0))
    >>> knn.learn_one(ReplayEvent("click", "u4", {"user_id": "u4", "item_id": "a"}, 1.0))
    >>> knn.rank("u4", None, 1)
    ['b']
    """

    name = "item_knn"

    def __init__(self, max_recent: int = 20, half_life_s: float = 3 * 86_400.0) -> None:
        super().__init__(max_recent, half_life_s)
        self.co: dict[str, Counter[str]] = defaultdict(Counter)
        self.count: Counter[str] = Counter()

    def learn_one(self, event: ReplayEvent) -> None:
        item = _clicked(event)
        if item is None:
            return
        self.popularity.learn_one(event)
        history = self.recent[event.key]
        if item not in history:
            self.count[item] += 1
            for other in set(history):
                self.co[other][item] += 1
                self.co[item][other] += 1
        history.append(item)

    def rank(self, user: str, query: str | None, k: int) -> list[str]:
        scores: dict[str, float] = defaultdict(float)
        for seen in set(self.recent.get(user, ())):
            for other, together in self.co.get(seen, {}).items():
                scores[other] += together / math.sqrt(self.count[seen] * self.count[other])
        return self.fill(scores, k)


class Transitions(_UserItems):
    """First-order transitions: after the user's last click A, the items others clicked right after A.

    >>> tr = Transitions()
    >>> for user, item in [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "a"), ("u3", "c")]:
    ...     tr.learn_one(ReplayEvent("click", user, {"user_id": user, "item_id": item}, 0.0))
    >>> tr.learn_one(ReplayEvent("click", "u9", {"user_id": "u9", "item_id": "a"}, 1.0))
    >>> tr.rank("u9", None, 2)
    ['c', 'b']
    """

    name = "transitions"

    def __init__(self, half_life_s: float = 3 * 86_400.0) -> None:
        super().__init__(1, half_life_s)
        self.next: dict[str, Counter[str]] = defaultdict(Counter)

    def learn_one(self, event: ReplayEvent) -> None:
        item = _clicked(event)
        if item is None:
            return
        self.popularity.learn_one(event)
        last = self.recent[event.key]
        if last:
            self.next[last[-1]][item] += 1
        last.append(item)

    def rank(self, user: str, query: str | None, k: int) -> list[str]:
        last = self.recent.get(user)
        scores = dict(self.next.get(last[-1], {})) if last else {}
        return self.fill(scores, k)


class TextVectors:
    """Zero-shot text vectors (the base encoder, no fine-tuning) kept in a bounded dict.

    ``prefetch`` encodes many texts in one batched call: a text's vector depends on the text alone,
    never on the stream, so encoding ahead leaks nothing.
    """

    def __init__(self, encoder, capacity: int = 200_000) -> None:
        self.encoder = encoder
        self.capacity = capacity
        self.rows: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def dim(self) -> int:
        return int(self.encoder.dim)

    def prefetch(self, texts: Iterable[str]) -> None:
        missing = sorted({t for t in texts if t and t not in self.rows})
        if missing:
            vecs = self.encoder.encode(missing).detach().to("cpu", torch.float32)
            for text, vec in zip(missing, vecs):
                self.rows[text] = vec
            while len(self.rows) > self.capacity:
                self.rows.popitem(last=False)

    def get(self, text: str) -> torch.Tensor:
        if text not in self.rows:
            self.prefetch([text])
        return self.rows[text]


class ZeroShotProfile:
    """A user's profile = recency-weighted mean of their recent event vectors (a search: its query; a
    click: the item); items = their title, or the count-weighted mean of the queries that led to
    clicks on them (past clicks only). Score = cosine; with ``blend`` the live scorer's popularity mix
    ``(1 - a(n)) * cos + a(n) * popularity``. The math is the worker's own (``coldstart.model``:
    ``recency_weights``, ``profile_vectors``, ``item_text_vector``, ``popularity_blend``,
    ``score_items``) with its defaults; only the state is kept here, event by event, on the CPU.
    """

    def __init__(self, vectors: TextVectors, *, blend: bool = False, half_life_s: float = 3600.0,
                 max_recent: int = 20, popularity_half_life_s: float = 3 * 86_400.0) -> None:
        self.name = "zeroshot_pop" if blend else "zeroshot"
        self.vectors = vectors
        self.blend = blend
        self.half_life_s = half_life_s
        self.popularity = DecayedPopularity(popularity_half_life_s)
        self.events: dict[str, deque[tuple[float, str, str]]] = defaultdict(lambda: deque(maxlen=max_recent))
        self.n_events: Counter[str] = Counter()
        self.ids: list[str] = []
        self.row: dict[str, int] = {}
        self.titles: dict[str, str] = {}
        self.queries: dict[str, Counter[str]] = defaultdict(Counter)
        self.matrix = torch.zeros(1024, vectors.dim)
        self.valid = torch.zeros(1024, dtype=torch.bool)

    def learn_one(self, event: ReplayEvent) -> None:
        v = event.value
        if event.type == "item":
            title = str(v.get("title") or "").strip()
            if title:
                self.titles[event.key] = title
                self._set(event.key, self.vectors.get(title))
            return
        self.n_events[event.key] += 1
        if event.type == "search" and v.get("query"):
            self.events[event.key].append((event.ts, "q", str(v["query"])))
        elif event.type == "click" and v.get("item_id"):
            item = str(v["item_id"])
            self.popularity.learn_one(event)
            self.events[event.key].append((event.ts, "i", item))
            query = v.get("query")
            if query and item not in self.titles:
                self.queries[item][str(query)] += 1
                counts = self.queries[item]
                self._set(item, item_text_vector(torch.stack([self.vectors.get(t) for t in counts]),
                                                 torch.tensor(list(counts.values()))))
            elif item not in self.row:
                self._row_for(item)

    def profile(self, user: str) -> torch.Tensor | None:
        vecs, times = [], []
        for ts, kind, ref in self.events.get(user, ()):
            if kind == "i":
                row = self.row.get(ref)
                if row is None or not self.valid[row]:
                    continue
                vecs.append(self.matrix[row])
            else:
                vecs.append(self.vectors.get(ref))
            times.append(ts)
        if not vecs:
            return None
        ts = torch.tensor(times, dtype=torch.float64)
        weights = recency_weights(ts, now=float(ts.max()), half_life_s=self.half_life_s)
        profile = profile_vectors(torch.stack(vecs), weights, torch.zeros(len(vecs), dtype=torch.long), 1)[0]
        return profile if bool(profile.any()) else None

    def rank(self, user: str, query: str | None, k: int) -> list[str]:
        profile = self.profile(user)
        n = len(self.ids)
        if profile is None or n == 0:
            return self.popularity.rank(user, None, k)
        popularity = torch.zeros(n)
        a = torch.zeros(1)
        if self.blend:
            for item, p in self.popularity.normalized().items():
                popularity[self.row[item]] = p
            a = popularity_blend(torch.tensor([self.n_events[user]]))
        scores = score_items(profile[None], self.matrix[:n], popularity, a)[0]
        valid = self.valid[:n]
        m = min(k, int(valid.sum()))
        _, top = top_k(scores[None], m, exclude=~valid[None])
        # Ties break on item id so runs are reproducible.
        top = sorted(top[0].tolist(), key=lambda r: (-float(scores[r]), self.ids[r]))
        ranked = [self.ids[r] for r in top]
        if len(ranked) < k:
            ranked += self.popularity.rank(user, None, k - len(ranked), skip=ranked)
        return ranked

    def _row_for(self, item: str) -> int:
        row = self.row.get(item)
        if row is None:
            row = len(self.ids)
            if row >= self.matrix.shape[0]:
                self.matrix = torch.cat([self.matrix, torch.zeros_like(self.matrix)])
                self.valid = torch.cat([self.valid, torch.zeros_like(self.valid)])
            self.ids.append(item)
            self.row[item] = row
        return row

    def _set(self, item: str, vec: torch.Tensor) -> None:
        row = self._row_for(item)
        self.matrix[row] = vec
        self.valid[row] = True


class QueryMemory:
    """Items clicked after the same normalised query, most clicked first; the rest of the list (and
    every list without a known query) comes from ``backoff``.

    ``learn_backoff=False`` when the backoff ranker is shared with the run and learns there.

    >>> memory = QueryMemory(DecayedPopularity())
    >>> for user, q, item in [("u1", "Halo 3", "h3"), ("u2", "halo  3!", "h3"), ("u3", "fifa", "f1")]:
    ...     memory.learn_one(ReplayEvent("search", user, {"user_id": user, "query": q}, 0.0))
    ...     memory.learn_one(ReplayEvent("click", user, {"user_id": user, "item_id": item}, 0.0))
    >>> memory.rank("u9", "HALO 3", 2)
    ['h3', 'f1']
    """

    name = "query_memory"

    def __init__(self, backoff: Baseline, learn_backoff: bool = True) -> None:
        self.backoff = backoff
        self.learn_backoff = learn_backoff
        self.memory: dict[str, Counter[str]] = defaultdict(Counter)
        self.pending: dict[str, str] = {}  # user -> the query typed since their last click

    def learn_one(self, event: ReplayEvent) -> None:
        if self.learn_backoff:
            self.backoff.learn_one(event)
        if event.type == "search" and event.value.get("query"):
            self.pending[event.key] = normalize_query(str(event.value["query"]))
        elif event.type == "click":
            query = event.value.get("query")
            key = normalize_query(str(query)) if query else self.pending.get(event.key)
            self.pending.pop(event.key, None)
            item = _clicked(event)
            if key and item:
                self.memory[key][item] += 1

    def rank(self, user: str, query: str | None, k: int) -> list[str]:
        remembered = self.memory.get(normalize_query(query)) if query else None
        ranked = _top(dict(remembered), k) if remembered else []
        if len(ranked) < k:
            extra = self.backoff.rank(user, query, k + len(ranked))
            ranked += [i for i in extra if i not in set(ranked)][: k - len(ranked)]
        return ranked


def default_baselines(vectors: TextVectors | None, with_queries: bool,
                      popularity_half_life_s: float = 3 * 86_400.0) -> list[Baseline]:
    """The issue's baselines for one task; the zero-shot ones only when ``vectors`` is given."""
    out: list[Baseline] = [
        DecayedPopularity(popularity_half_life_s),
        ItemKNN(half_life_s=popularity_half_life_s),
        Transitions(half_life_s=popularity_half_life_s),
    ]
    if vectors is not None:
        zs_pop = ZeroShotProfile(vectors, blend=True, popularity_half_life_s=popularity_half_life_s)
        out += [ZeroShotProfile(vectors, popularity_half_life_s=popularity_half_life_s), zs_pop]
        if with_queries:
            out.append(QueryMemory(zs_pop, learn_backoff=False))
    elif with_queries:
        out.append(QueryMemory(DecayedPopularity(popularity_half_life_s)))
    return out


def texts_of(events: Sequence[ReplayEvent]) -> list[str]:
    """Every title and query in a stream (for :meth:`TextVectors.prefetch`)."""
    out = []
    for e in events:
        for key in ("title", "query"):
            if e.value.get(key):
                out.append(str(e.value[key]))
    return out
