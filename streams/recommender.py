"""Serving recommendations: every catalog item scored by the learned ranker over semantic signals and
stream statistics, with an explanation that names the signal (issue 9).

Candidates are every item with a vector in the serving version (a superset of the union of cosine
top-N, neighbours of the user's last items, query memory and popular items: scoring them all is one
matrix product up to a few hundred thousand items). From ``ann_min_items`` on, a coarse index
(:mod:`coldstart.model.coarse`) narrows them to the items near the user's query vectors plus every item
a statistic names and the best by popularity, newness and offset; the features are the same. The
ranker (:mod:`coldstart.model.ranker`) starts from today's fixed blend and learns from each click
before it is applied (:meth:`Recommender.learn_clicks`, called from the batch path), so the same
features serve and learn.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import zlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from coldstart.contract import ClickEvent, UserEvent
from coldstart.model.coarse import gather_rows, sample_outside
from coldstart.model.profile import popularity_blend_of, profile_vectors, top_contributors_of_each
from coldstart.model.ranker import FEATURES, LinearRanker, feature_matrix, log_gap, text_gain
from coldstart.model.retrieval import popularity_scores, top_k
from coldstart.model.serving import ServingModel
from coldstart.model.stats import RowStats, StreamStats, log_norm
from coldstart.settings import Settings
from coldstart.streams.state import ProfileState, RecentEvent

log = logging.getLogger(__name__)

# max_cos looks at the user's newest events only: each costs a product with the whole catalogue, and a
# cold-start user (the users this serves first) has no more than this many anyway.
MAX_COS_EVENTS = 5

PRIOR_EVERY_CLICKS = 64  # the prior's candidates are reused until this many more clicks (_prior_rows)

# Items whose vectors in the old and the new version measure a swap's text_gain (a 1,024 x 1,024 product).
GAIN_SAMPLE = 1_024

# With a coarse index: rows drawn from outside the candidates into each learning step's softmax (issue 11).
LEARN_SAMPLE = 1_024

# With a coarse index (issue 11): the items best by popularity, newness and offset that are candidates
# whatever their text: one in 250 of the catalogue, 100 to 4,000 (at 1,000 the bench's flat head of
# 2,000 equally popular items lost a tenth of its top 10 at 100k items).
def prior_candidates(n_items: int) -> int:
    """
    >>> prior_candidates(3_000), prior_candidates(200_000), prior_candidates(1_000_000)
    (100, 800, 4000)
    """
    return max(100, min(4_000, n_items // 250))


# Signals grouped by what an explanation says about them (the others by name in `_because`).
PROFILE_SIGNALS = {"profile_cos_blend", "profile_cos_x_logn", "last_cos", "max_cos", "last_cos_x_gap"}
QUERY_SIGNALS = {"query_memory", "query_cos"}


@dataclasses.dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    text: str
    because: list[dict]  # {kind, signal, reason, event_id?, text?, item_id?, share}: the signal that won


@dataclasses.dataclass
class Signals:
    features: torch.Tensor  # [n_candidates, len(FEATURES)]
    offsets: torch.Tensor  # [n_candidates]: the ranker's learned item biases
    valid: torch.Tensor  # [n_candidates] bool: items with a vector in this version
    query: str | None
    last_item: str | None
    # event_vectors(...) of the user's events when the signals needed them: explanations reuse them
    event_vectors: tuple | None = None
    # The index rows of the candidates, ascending (a coarse index's, issue 11); None: every row, in order.
    rows: torch.Tensor | None = None
    # With ``sample``: log of how many rows each candidate stands for in a step's softmax (0 for a
    # candidate, log(outside / sampled) for a row drawn from outside them); None: every row is itself.
    log_weights: torch.Tensor | None = None
    sampled: torch.Tensor | None = None  # [n_candidates] bool: drawn from outside (no offset is written)
    # (candidates' item vectors, the user's profile vector) when the ranker's metric learns
    # (LinearRanker.metric_query): ``offsets`` then include the metric's term.
    metric_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
    prev_item: str | None = None  # the user's clicked item before ``last_item`` (transition_prev)
    click_query: RecentEvent | None = None  # the user's newest click that carried a query (click_query_memory)
    # item id -> the user's recent item it was co-clicked with most (:meth:`Recommender.coclick_sources`),
    # set by a request whose explanations need it; None: the last item is named
    coclick_source: dict[str, str] | None = None

    def row_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Index rows of candidate positions."""
        return positions if self.rows is None else self.rows[positions]

    def positions_of(self, rows: list[int]) -> list[int]:
        """Candidate positions of index rows (rows that are not candidates are left out)."""
        if self.rows is None or not rows:
            return list(rows)
        at = torch.tensor(rows, dtype=torch.long, device=self.rows.device)
        pos = torch.searchsorted(self.rows, at).clamp_max(self.rows.numel() - 1)
        return pos[self.rows[pos] == at].tolist()

    def ids(self, all_ids: list[str]) -> list[str | None]:
        """The item id of every candidate (None for a row sampled from outside the candidates)."""
        if self.rows is None:
            return all_ids
        ids = [all_ids[r] for r in self.rows.tolist()]
        if self.sampled is not None:
            for pos in self.sampled.nonzero().flatten().tolist():
                ids[pos] = None
        return ids


class Recommender:
    def __init__(self, settings: Settings, model: ServingModel, stats: StreamStats | None = None,
                 ranker: LinearRanker | None = None) -> None:
        self.settings = settings
        self.model = model
        self.stats = stats or StreamStats(popularity_half_life_s=model.items.half_life_s)
        self.ranker = ranker or LinearRanker()
        self.ranker.bias_lr = settings.ranker_bias_lr  # a restored ranker learns at today's setting
        self.ranker.metric_lr = settings.ranker_metric_lr
        self.ranker.text_version = self.ranker.text_version or model.version  # a fresh ranker or an old checkpoint
        # popularity, first-seen and the ranker's item biases by index row
        self._rows = RowStats(self.stats, model.device, offsets=self.ranker.item_bias)
        self.clicks_learned = 0  # distinct clicks through the batch path (the evaluation waits on it)
        self.steps_shed = 0  # teaching clicks skipped by the per-batch cap (:meth:`shed`)
        self._scratch = threading.local()  # per thread: the candidates' vectors (model/coarse.py gather_rows)
        # (n_events, whole gap unit) -> ((n, click epoch), index, rows): _prior_rows
        self._prior_cache: dict[tuple[int, int], tuple] = {}
        self.text_gains: list[tuple[str, float]] = []  # (version, gain) of every swap that rescaled

    def swap(self, model: ServingModel, reference: tuple[list[str], torch.Tensor] | None = None) -> None:
        """Serve ``model`` (its items already adopted and refreshed). The ranker carries over (weights,
        item offsets, text metric: forgetting the metric measured no better, README), with its text
        terms rescaled from the version they were learned in (``ranker.text_version``) to the new
        version's spread of cosines (:func:`text_gain`). That version is the serving one, except after a
        restart, when the checkpoint's version can differ from the model the worker loaded first: then
        ``reference`` holds that version's item ids and vectors (from the registry), and without it the
        scale is kept and the reason logged."""
        source = self.ranker.text_version or self.model.version
        if source != model.version:
            if source == self.model.version:
                gain = self.text_gain_to(model)
            else:
                gain = self.text_gain_to(model, reference) if reference is not None else None
            if gain is not None:
                self.ranker.rescale_text(gain)
                self.text_gains.append((model.version, gain))
                log.info("swap %s -> %s: the ranker's text weights (learned in %s) x %.3f (the ratio of the "
                         "versions' spreads of cosines)", self.model.version, model.version, source, gain)
            elif source != self.model.version:
                log.warning("swap to %s: the ranker's text weights were learned in %s, whose item vectors are "
                            "not at hand (or share too few items), so their scale is kept", model.version, source)
        self.ranker.text_version = model.version
        self.model = model

    def adopt_ranker(self, ranker: LinearRanker) -> None:
        """Rank with ``ranker`` from now on (the serving replica's copy of a worker's checkpoint): its
        weights, text metric and item offsets, read by row through a fresh :class:`RowStats`. Call it
        with no writer running (the replica holds its batch lock)."""
        ranker.bias_lr = self.settings.ranker_bias_lr
        ranker.metric_lr = self.settings.ranker_metric_lr
        ranker.text_version = ranker.text_version or self.model.version
        self._rows = RowStats(self.stats, self.model.device, offsets=ranker.item_bias)
        self._prior_cache.clear()  # the prior's candidates are ranked by the offsets too
        self.ranker = ranker

    def text_gain_to(self, model: ServingModel, reference: tuple[list[str], torch.Tensor] | None = None) -> float | None:
        """:func:`text_gain` from the serving version (or from ``reference``: another version's item ids
        and vectors) to ``model`` over up to ``GAIN_SAMPLE`` items that have a vector in both (a fixed
        draw, so a replay rescales alike every time); None with fewer than 16 such items (nothing to
        measure: the scale is kept)."""
        new_vecs, new_valid = model.items.matrix()
        if reference is None:
            old_vecs, old_valid = self.model.items.matrix()
            n = min(old_vecs.shape[0], new_vecs.shape[0])
            both = (old_valid[:n].cpu() & new_valid[:n].cpu()).nonzero().flatten()
            old_rows = new_rows = both
        else:  # match the reference's rows to the new index's by item id
            ids, old_vecs = reference
            at = model.items.row
            pairs = [(i, at[item]) for i, item in enumerate(ids) if item in at and at[item] < new_valid.shape[0]]
            pairs = [(i, r) for i, r in pairs if bool(new_valid[r])]
            old_rows = torch.tensor([i for i, _ in pairs], dtype=torch.long)
            new_rows = torch.tensor([r for _, r in pairs], dtype=torch.long)
        if new_rows.numel() < 16:
            return None
        pick = torch.randperm(new_rows.numel(), generator=torch.Generator().manual_seed(0))[:GAIN_SAMPLE]
        old = old_vecs[old_rows[pick].to(old_vecs.device)].float()
        new = new_vecs[new_rows[pick].to(new_vecs.device)].float()
        return text_gain(old, new)

    # ------------------------------------------------------------------------------ features
    def signals(self, state: ProfileState | None, view: tuple[torch.Tensor, torch.Tensor] | None = None,
                must: list[int] | None = None, sample: int = 0, seed: int = 0) -> Signals:
        """Every feature of every candidate for this user: every item, or above ``ann_min_items`` the
        candidates of the coarse index (:meth:`_candidates`; ``must``: rows that must be among them, the
        clicked item a step learns from; ``sample``: that many rows drawn uniformly from outside them,
        with ``seed``, for a step's softmax, see :attr:`Signals.log_weights`). ``view``: the item
        matrix the caller already read. A request reads on the event loop while the writer thread may
        append items, so one view fixes the row count ``n`` and rows added after it are left out, never
        indexed past it."""
        from coldstart.streams.processor import event_vectors

        model, stats = self.model, self.stats
        items = model.items
        item_vecs, item_valid = view if view is not None else items.matrix()
        n = item_vecs.shape[0]
        events = state.events if state is not None else []
        n_events = state.n_events if state is not None and events else 0
        sparse: dict[str, dict[str, float]] = {}  # per-item statistics, by item id
        query = last_item = prev_item = click_query = None
        user_events = None
        profile = None
        # The dense text signals: every query vector (profile, newest events, last event, pending query,
        # centroid of what followed the last item) in one product with the catalogue, which is read
        # from memory once instead of five times (the products were 90% of a request at 100k items).
        queries: list[torch.Tensor] = []
        slots: dict[str, slice] = {}

        def ask(name: str, vecs: torch.Tensor) -> None:
            start = sum(q.shape[0] for q in queries)
            queries.append(vecs.to(item_vecs.dtype))
            slots[name] = slice(start, start + vecs.shape[0])

        if events:
            user_events = event_vectors(model, [state], self.settings.half_life_s)
            vecs, weights, owner, _ = user_events
            if state.vector is not None and state.version == model.version:
                profile = torch.from_numpy(state.vector).to(model.device)[None]
            else:
                profile = profile_vectors(vecs, weights, owner, 1)
            ask("profile_cos", profile)
            metric_query = self.ranker.metric_query(profile[0])
            if metric_query is not None:
                ask("metric", metric_query[None])
            if vecs.shape[0]:  # the newest few: a cold-start user has no more than this anyway
                ask("max_cos", vecs[-MAX_COS_EVENTS:])
            last = events[-1]
            row = items.row.get(last.item_id) if last.item_id else None
            if row is not None and row < n and bool(item_valid[row]):
                ask("last_cos", item_vecs[row][None])
            elif last.text:
                ask("last_cos", model.cache.encode(model.encoder, [last.text])[:1])
            if last.kind == "search" and last.text:
                query = last.text
                ask("query_cos", model.cache.encode(model.encoder, [query])[:1])
                sparse["query_memory"] = log_norm(stats.query_items(query))
            # The query behind the user's newest click (a click carries the query it answered, which the
            # shop learns with it): what others clicked after that query. A source none of the others is
            # when the visitor has not typed again (Best Buy profile only, whole log: +0.0035 Recall@10).
            asked = next((e for e in reversed(events) if e.kind == "click" and e.text), None)
            if asked is not None and asked.text != query:
                click_query = asked
                sparse["click_query_memory"] = log_norm(stats.query_items(asked.text))
            clicked = state.clicked_items()
            if clicked:
                last_item = clicked[-1]
                following = log_norm(stats.neighbours(stats.transitions, last_item))
                sparse["transition"] = following
                # and from the item before it (an item clicked twice in a row adds nothing new)
                if len(clicked) >= 2 and clicked[-2] != last_item:
                    prev_item = clicked[-2]
                    sparse["transition_prev"] = log_norm(stats.neighbours(stats.transitions, prev_item))
                centroid = self._centroid(following, item_vecs, item_valid)
                if centroid is not None:
                    ask("transition_cos", centroid[None])
                sparse["seen"] = dict.fromkeys(clicked, 1.0)
                co: dict[str, float] = {}
                for item in clicked[-stats.coclick_window:]:
                    for k, v in log_norm(stats.neighbours(stats.coclicks, item)).items():
                        co[k] = co.get(k, 0.0) + v
                scale = 1.0 / min(len(clicked), stats.coclick_window)
                sparse["coclick"] = {k: v * scale for k, v in co.items()}
        now = max((e.ts for e in events), default=stats.newest_ts)
        # The gap since the user's last event, on the stream's clock (the newest click counted), not the
        # wall clock: a replay of old events and the live stream then read it alike, and the step for a
        # click reads what the request before it did.
        gap = log_gap(stats.newest_ts - now) if events else 0.0
        a = popularity_blend_of(n_events)
        query_vecs = torch.cat(queries) if queries else None
        rows = log_weights = sampled = None
        coarse = items.coarse
        if coarse is not None and self.settings.ann_min_items > 0 and n >= self.settings.ann_min_items:
            prior = self._prior_rows(items, n, now, n_events, a, gap)
            rows = self._candidates(coarse, query_vecs, prior, sparse, n, must)
            if sample:
                rows, log_weights, sampled = sample_outside(rows, n, sample, seed)
            # into this thread's reused buffer: requests (event loop) and steps (writer) each have one
            item_vecs, item_valid = gather_rows(item_vecs, rows, self._scratch.__dict__), item_valid[rows]
        # Row-indexed statistics kept current by the writer's change log: no per-item Python here.
        pop, newness, offsets, top = self._rows.read(items, n, now, rows)
        popularity = popularity_scores(pop, top)  # normalised over the whole catalogue, candidates or not
        sig: dict[str, torch.Tensor] = {name: self._dense(values, n, rows) for name, values in sparse.items()}
        if query_vecs is not None:
            cos = item_vecs @ query_vecs.T  # [candidates, m]
            for name, cols in slots.items():
                part = cos[:, cols]
                sig[name] = part.max(dim=1).values if name == "max_cos" else part[:, 0]
        sig["popularity"], sig["newness"] = popularity, newness
        metric = sig.pop("metric", None)
        if metric is not None:
            offsets = offsets.to(metric.device) + metric.float()
        metric_inputs = (item_vecs, profile[0]) if profile is not None and self.ranker.metric_lr > 0 else None
        return Signals(feature_matrix(sig, n_events, a, gap), offsets, item_valid, query, last_item, user_events, rows,
                       log_weights, sampled, metric_inputs, prev_item, click_query)

    def _prior_rows(self, items, n: int, now: float, n_events: int, a: float, gap: float = 0.0) -> torch.Tensor:
        """The :func:`prior_candidates` rows best by popularity, newness and offset for a user with
        ``n_events`` and a gap since their last event in this whole unit of :func:`log_gap` (the
        weights depend on both), kept until ``PRIOR_EVERY_CLICKS`` more clicks were
        counted: a whole-catalogue pass (four [n] tensors and a top-k: ~20 ms at 1M items) a few times
        a second at most, not once a request. Stale by at most that many clicks, which only decides
        candidates (their features are read fresh); counted in clicks, not seconds, so the in-process
        evaluation ranks as the live worker does at any speed."""
        key = (min(n_events, 64), int(gap))
        epoch = (n, self.stats.clicks // PRIOR_EVERY_CLICKS)
        hit = self._prior_cache.get(key)
        if hit is not None and hit[0] == epoch and hit[1] is items:
            return hit[2]
        pop, newness, offsets, top = self._rows.read(items, n, now)
        prior = self.ranker.item_prior(popularity_scores(pop, top), newness, offsets, n_events, a, float(int(gap)))
        rows = torch.topk(prior, min(prior_candidates(n), n)).indices.sort().values
        self._prior_cache[key] = (epoch, items, rows)
        return rows

    def _candidates(self, coarse, query_vecs: torch.Tensor | None, prior_rows: torch.Tensor,
                    sparse: dict[str, dict[str, float]], n: int, must: list[int] | None) -> torch.Tensor:
        """The rows a coarse index lets a request score (ascending): the items in the groups nearest to
        each query vector, every item a statistic names (transitions, co-clicks, query memory, seen),
        ``prior_rows`` (:meth:`_prior_rows`), and ``must``."""
        parts = [prior_rows]
        if query_vecs is not None:
            parts.append(coarse.candidates(query_vecs, n, self.settings.ann_probe))
        for values in sparse.values():
            parts.append(self._gather(values, n)[0])
        if must:
            parts.append(torch.tensor(must, dtype=torch.long, device=prior_rows.device))
        return torch.unique(torch.cat(parts))

    def _centroid(self, values: dict[str, float], item_vecs: torch.Tensor,
                  item_valid: torch.Tensor) -> torch.Tensor | None:
        """The ``values``-weighted mean of the vectors of ``values``' items: its cosine with every item
        generalises a statistic over a few items to every item that reads alike."""
        rows, vals = self._gather(values, item_vecs.shape[0])
        keep = item_valid[rows] & (vals > 0)
        if not bool(keep.any()):
            return None
        rows, vals = rows[keep], vals[keep].float()
        return F.normalize((vals[:, None] * item_vecs[rows].float()).sum(dim=0), dim=0)

    def _gather(self, values: dict[str, float], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows (below ``n``) of ``values``' items and their values (float64), as two tensors."""
        row = self.model.items.row
        pairs = [(r, v) for r, v in ((row.get(k), v) for k, v in values.items()) if r is not None and r < n]
        dev = self.model.device
        if not pairs:
            return torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, dtype=torch.float64, device=dev)
        rows, vals = zip(*pairs)
        return (torch.tensor(rows, dtype=torch.long, device=dev),
                torch.tensor(vals, dtype=torch.float64, device=dev))

    def _dense(self, values: dict[str, float], n: int, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """``values`` by row (``[n]``), or at the positions of ``candidates`` (ascending rows) when given."""
        rows, vals = self._gather(values, n)
        if candidates is None:
            out = torch.zeros(n, device=self.model.device)
            out[rows] = vals.float()
            return out
        out = torch.zeros(candidates.numel(), device=self.model.device)
        if rows.numel():
            pos = torch.searchsorted(candidates, rows).clamp_max(candidates.numel() - 1)
            hit = candidates[pos] == rows
            out[pos[hit]] = vals[hit].float()
        return out

    # ------------------------------------------------------------------------------ learning
    def teaches(self, event_id: str) -> bool:
        """Whether this click takes a ranker step: every click for the first ``ranker_dense_steps``
        steps, then one in ``ranker_learn_every`` by a hash of its id (stable across processes and runs,
        unlike ``hash``), so the live worker and the in-process evaluation learn from the same clicks.

        >>> r = Recommender.__new__(Recommender)
        >>> r.settings, r.ranker = Settings(ranker_learn_every=4, ranker_dense_steps=0), LinearRanker()
        >>> sum(r.teaches(f"c{i}") for i in range(4000))
        999
        """
        s = self.settings
        return (s.ranker_learn_every <= 1 or self.ranker.steps < s.ranker_dense_steps
                or zlib.crc32(event_id.encode()) % s.ranker_learn_every == 0)

    def shed(self, events: Sequence[UserEvent]) -> set[str]:
        """The teaching clicks of this batch that take no step: past the dense steps a batch takes at
        most ``ranker_max_steps``, spread evenly over its teaching clicks in stream order (load shedding,
        issue 11: under a backlog the batches fill up and the steps were most of a batch's time). Batches
        of the dense phase are never capped: a fresh shop's first clicks are worth the most.

        >>> r = Recommender.__new__(Recommender)
        >>> r.settings, r.ranker = Settings(ranker_learn_every=1, ranker_dense_steps=0, ranker_max_steps=2), LinearRanker()
        >>> clicks = [ClickEvent(event_id=f"c{i}", user_id="u", ts=0.0, item_id="a") for i in range(5)]
        >>> sorted(r.shed(clicks)), r.shed(clicks[:2])
        (['c1', 'c3', 'c4'], set())
        """
        cap = self.settings.ranker_max_steps
        if cap <= 0 or self.ranker.steps < self.settings.ranker_dense_steps:
            return set()
        teaching = [ev.event_id for ev in events if isinstance(ev, ClickEvent) and self.teaches(ev.event_id)]
        if len(teaching) <= cap:
            return set()
        kept = {teaching[i * len(teaching) // cap] for i in range(cap)}
        return set(teaching) - kept

    def learn_clicks(self, events: Sequence[UserEvent], profiles: dict[str, ProfileState]) -> None:
        """Prequential: a click that teaches (:meth:`teaches`, not :meth:`shed`) steps the ranker with
        the user's state and the statistics as they were before it (its own count taken out); every click
        then joins the statistics."""
        items = self.model.items
        # A bounded step of the coarse index's upkeep, here on the writer thread once a batch (issue 11).
        items.maintain_coarse(self.settings.ann_min_items)
        shed = self.shed(events)
        self.steps_shed += len(shed)
        for ev in events:
            if not isinstance(ev, ClickEvent):
                continue
            row = items.row.get(ev.item_id)
            # teaches() first: pure Python, while reading the valid flag is two torch calls (each hands
            # the GIL over: issue 11), for the three clicks in four that take no step
            if (row is not None and ev.event_id not in shed and self.teaches(ev.event_id)
                    and bool(items.valid[row])):
                with self.stats.excluding(ev.event_id):
                    sig = self.signals(profiles.get(ev.user_id), must=[row], sample=LEARN_SAMPLE,
                                       seed=zlib.crc32(ev.event_id.encode()))
                (target,) = sig.positions_of([row])
                if bool(sig.valid[target]):
                    self.ranker.learn_one(sig.features, target, mask=sig.valid, offsets=sig.offsets,
                                          item_ids=sig.ids(items.ids), log_weights=sig.log_weights,
                                          metric_inputs=sig.metric_inputs)
                    # the biases written, straight into the rows every read (RowStats) serves them from
                    self._rows.write_offsets(items, self.ranker.bias_changed)
            self.stats.observe(ev.event_id, ev.user_id, ev.item_id, ev.ts, query=ev.query)
            self.clicks_learned += 1

    def retract(self, event_ids: Sequence[str]) -> int:
        """Take clicks back out of what other users' rankings read (a flagged bot's): the statistics'
        counts, and the learned biases of the items clicked, reset (:meth:`LinearRanker.forget_biases`).
        The shared weights keep their steps: a few among thousands. Writer thread."""
        self.stats.mark_changed(self.ranker.forget_biases(self.stats.items_of(event_ids)))
        return self.stats.retract(event_ids)

    # ------------------------------------------------------------------------------ serving
    def recommend(self, state: ProfileState | None, k: int = 10, exclude_clicked: bool = True) -> list[Recommendation]:
        model = self.model
        view = model.items.matrix()  # one view for the whole request (see signals)
        item_vecs, item_valid = view
        if item_vecs.shape[0] == 0:
            return []
        sig = self.signals(state, view)
        scores = self.ranker.score(sig.features, sig.offsets)[None]
        exclude = ~sig.valid[None].clone()
        if exclude_clicked and state is not None:
            clicked = sig.positions_of([r for r in model.items.rows_of(state.clicked_items())
                                        if r < item_vecs.shape[0]])
            if clicked:
                exclude[0, clicked] = True
        n_ok = int((~exclude).sum())
        if n_ok == 0:
            return []
        vals, idx = top_k(scores, min(k, n_ok), exclude)
        rows = sig.row_of(idx[0]).tolist()
        # Explanations for the rows shown, in a few tensor calls for all of them (per item, the small
        # torch calls were a quarter of a request): each item's strongest positive signal and its share.
        positive = self.ranker.contributions(sig.features[idx[0]]).clamp_min(0.0)
        best, strongest = positive.max(dim=1)
        totals, best, strongest = positive.sum(dim=1).tolist(), best.tolist(), strongest.tolist()
        events_by_item = None
        if state is not None and state.events and any(FEATURES[f] in PROFILE_SIGNALS for f in strongest):
            if sig.event_vectors is None:
                from coldstart.streams.processor import event_vectors

                sig.event_vectors = event_vectors(model, [state], self.settings.half_life_s)
            vecs, weights, _, _ = sig.event_vectors
            events_by_item = top_contributors_of_each(vecs, weights, item_vecs[rows], k=2)
        if state is not None and any(FEATURES[f] == "coclick" for f in strongest):
            sig.coclick_source = self.coclick_sources(state)
        out = []
        for j, (score, row) in enumerate(zip(vals[0].tolist(), rows)):
            item_id = model.items.ids[row]
            because = self._because(state, sig, item_id, FEATURES[strongest[j]], best[j], totals[j],
                                    events_by_item[j] if events_by_item is not None else [])
            out.append(Recommendation(item_id, float(score), model.items.text(row), because))
        return out

    def coclick_sources(self, state: ProfileState) -> dict[str, str]:
        """For each item co-clicked with the user's recent items, the one of them it was co-clicked with
        most (log-normalised, as the ``coclick`` signal adds them; a tie goes to the newer item): the item
        an explanation names. Only for a request whose shown items a co-click explains, so the ranker's
        steps, which read the same signals, do not pay for it."""
        stats, best = self.stats, {}
        for item in state.clicked_items()[-stats.coclick_window:]:
            for k, v in log_norm(stats.neighbours(stats.coclicks, item)).items():
                if v >= best.get(k, (0.0, ""))[0]:
                    best[k] = (v, item)
        return {k: item for k, (_, item) in best.items()}

    def _because(self, state: ProfileState | None, sig: Signals, item_id: str, name: str, best: float,
                 total: float, events_behind: list[tuple[int, float]]) -> list[dict]:
        """The signal that adds most to ``item_id``'s score (``name``, adding ``best`` of the positive
        ``total``), said in words; ``events_behind``: the user's events that pull the item up most
        (index into ``sig.event_vectors``' slots, share), for the profile signals."""
        if total <= 0.0:
            return [_entry("popular", "popular", "popular now", 1.0)]
        share = round(best / total, 3)
        events = state.events if state is not None else []
        if name in QUERY_SIGNALS and sig.query:
            search = events[-1]
            return [_entry("search", name, f"because you searched {sig.query!r}", share,
                           event_id=search.event_id, text=sig.query)]
        if name == "click_query_memory" and sig.click_query is not None:
            asked = sig.click_query
            return [_entry("search", name, f"people who searched {asked.text!r} clicked this", share,
                           event_id=asked.event_id, text=asked.text)]
        if name.startswith("transition"):
            before_last = name == "transition_prev"
            source = sig.prev_item if before_last else sig.last_item
            if source:
                then = "went on to click" if before_last else "next clicked"
                return [_entry("transition", name, f"people who clicked {source} {then} this", share,
                               item_id=source)]
        if name.startswith("seen") and sig.last_item:
            return [_entry("seen", name, "you clicked this before", share)]
        if name == "coclick" and sig.last_item:
            source = (sig.coclick_source or {}).get(item_id, sig.last_item)
            return [_entry("coclick", name, f"people who clicked {source} also clicked this", share,
                           item_id=source)]
        if name in PROFILE_SIGNALS and events and events_behind:
            slots = sig.event_vectors[3]
            out = []
            for j, part in events_behind:
                ev = events[slots[j][1]]
                what = f"you searched {ev.text!r}" if ev.kind == "search" else f"you clicked {ev.item_id}"
                out.append(_entry(ev.kind, name, f"because {what}", round(share * part, 3),
                                  event_id=ev.event_id, text=ev.text, item_id=ev.item_id))
            if out:
                return out
        if name == "newness":
            return [_entry("new", name, "new in the catalogue", share)]
        return [_entry("popular", name, "popular now", share)]


def _entry(kind: str, signal: str, reason: str, share: float, *, event_id: str | None = None,
           text: str | None = None, item_id: str | None = None) -> dict:
    return {"event_id": event_id, "kind": kind, "signal": signal, "reason": reason, "text": text,
            "item_id": item_id, "share": share}


__all__ = ["Recommendation", "Recommender", "Signals"]
