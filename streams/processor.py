"""The batch path, free of Kafka and Faust: decode -> encode -> score -> profile update -> retrieval.

Agents hand a batch of parsed events and the current profile states to :class:`BatchProcessor` and
write back what it returns; the web view asks ``coldstart.streams.recommender.Recommender``. Both
use the model version in service (``ServingModel``), so every vector in one call comes from one vector
space. The same code is what the GPU benchmark feeds in-process.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Sequence

import numpy as np
import torch

from coldstart.settings import Settings
from coldstart.model.coarse import gather_rows, sample_outside
from coldstart.model.importance import NoiseLines, catalog_loss, click_weights, search_importance, unscored_weight
from coldstart.model.items import ClickEvidence
from coldstart.model.profile import profile_vectors, profile_weights, recency_weights
from coldstart.model.serving import ServingModel
from coldstart.contract import ClickEvent, SearchEvent, TrainingSample, UserEvent
from coldstart.streams.state import ProfileState, RecentEvent

COLD_START_EVENTS = 5


@dataclasses.dataclass
class BatchOutcome:
    profiles: dict[str, ProfileState]  # the states to write back: one per touched user
    samples: list[TrainingSample]
    applied: list[UserEvent]  # events with an effect (duplicates removed)
    duplicates: int
    importance: dict[str, list[float]]  # per event type, for the histogram
    encode_seconds: float
    encoded_texts: int
    # Seconds per stage of this call (learn, encode, importance, profile): the worker adds its own
    # (parse, read, write, send) and exports them all as coldstart_batch_stage_seconds (issue 11).
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class BatchProcessor:
    def __init__(self, settings: Settings, model: ServingModel) -> None:
        self.settings = settings
        self.model = model
        # Issue 9: called with each batch's fresh events before they are applied (the recommender's
        # prequential ranker step and stream statistics); None in callers that only need profiles.
        self.click_hook = None
        # issue 10: the click-importance estimator (Settings admits only those a worker can compute); its
        # noise lines (loss quantile, rank density) follow the click distribution across batches.
        self.noise_lines = NoiseLines()
        self._scratch: dict = {}  # the sampled columns' vectors, reused (model/coarse.py gather_rows)

    def swap(self, model: ServingModel) -> None:
        self.model = model

    def process(self, events: Sequence[UserEvent], profiles: dict[str, ProfileState]) -> BatchOutcome:
        model = self.model
        s = self.settings
        # 1. Idempotency: an event id already applied to its user changes nothing.
        fresh: list[UserEvent] = []
        duplicates = 0
        batch_ids: set[str] = set()
        # Issue 8: an event already in its user's stored state but redelivered (a worker killed after
        # its RocksDB write, before the offset commit) may have lost its changelog record and training
        # sample with the killed producer: its state is written again and its sample sent again (the
        # trainer drops duplicate sample ids); the profile does not change.
        redelivered: list[UserEvent] = []
        for ev in events:
            state = profiles.get(ev.user_id)
            if ev.event_id in batch_ids or (state is not None and ev.event_id in state.seen):
                duplicates += 1
                if ev.event_id not in batch_ids:
                    redelivered.append(ev)
                    batch_ids.add(ev.event_id)
                continue
            batch_ids.add(ev.event_id)
            fresh.append(ev)

        stages: dict[str, float] = {}
        t_learn = time.perf_counter()
        if self.click_hook is not None:
            self.click_hook(fresh, profiles)
        stages["learn"] = time.perf_counter() - t_learn

        # 2. Item evidence from clicks (idempotent too), then vectors for the items whose text changed.
        t0 = time.perf_counter()
        misses_before = model.cache.misses
        clicks = [ClickEvidence(e.event_id, e.item_id, e.query, e.ts) for e in fresh if isinstance(e, ClickEvent)]
        model.items.observe_clicks(clicks)
        # Only the clicked items must be current for this batch; the catalog reader refreshes the rest
        # in small slices.
        model.items.refresh(model.encoder, model.cache, only=[c.item_id for c in clicks])

        # 3. Every distinct text of the batch encoded once (cache by version and text).
        scored = fresh + redelivered
        texts = sorted({e.query for e in scored if e.query})
        text_vecs = model.cache.encode(model.encoder, texts) if texts else None
        text_row = {t: i for i, t in enumerate(texts)}
        encode_seconds = time.perf_counter() - t0
        stages["encode"] = encode_seconds

        # 4. Importance with the current model, per event, before it joins the profile.
        t_importance = time.perf_counter()
        item_vecs, item_valid = model.items.matrix()
        weights = self._importance(scored, profiles, text_vecs, text_row, item_vecs, item_valid)
        t_profile = time.perf_counter()
        stages["importance"] = t_profile - t_importance

        # 5. Apply to the bounded per-user state.
        touched: dict[str, ProfileState] = {}
        importance: dict[str, list[float]] = {"search": [], "click": []}
        samples: list[TrainingSample] = []
        n_valid = max(int(item_valid.sum()), 2)
        # Redelivered events (scored after ``fresh``) only re-send their sample: no profile change.
        pweights = profile_weights([ev.kind for ev in fresh], [loss for _, loss in weights[:len(fresh)]], n_valid)
        for i, (ev, (w, loss)) in enumerate(zip(scored, weights)):
            state = touched.get(ev.user_id) or profiles.get(ev.user_id) or ProfileState(ev.user_id)
            touched[ev.user_id] = state
            prior = state.n_events
            history = history_context(state.events, model.items)
            if i < len(fresh):
                state.add(
                    RecentEvent(ev.event_id, ev.kind, ev.ts, text=ev.query,
                                item_id=ev.item_id if isinstance(ev, ClickEvent) else None,
                                weight=pweights[i]),
                    max_events=s.recent_events, max_seen=s.seen_event_ids)
                importance[ev.kind].append(w)
            if isinstance(ev, ClickEvent) and ev.item_id in model.items.row:
                row = model.items.row[ev.item_id]
                samples.append(TrainingSample(
                    sample_id=ev.event_id, user_id=ev.user_id, context=ev.query or history,
                    item_id=ev.item_id, item_text=model.items.text(row), weight=w,
                    loss=loss, prior_events=prior, model_version=model.version, ts=ev.ts))

        # 6. One batched profile recomputation for every touched user, from their recent events.
        if touched:
            states = list(touched.values())
            vectors = profile_matrix(model, states, s.half_life_s)
            vecs_np = vectors.cpu().numpy()
            for state, vec in zip(states, vecs_np):
                state.vector = vec
                state.version = model.version
                state.updated_ts = max(e.ts for e in state.events)
        stages["profile"] = time.perf_counter() - t_profile
        return BatchOutcome(
            profiles=touched, samples=samples, applied=fresh, duplicates=duplicates,
            importance=importance, encode_seconds=encode_seconds,
            encoded_texts=model.cache.misses - misses_before, stage_seconds=stages)

    def _importance(self, events, profiles, text_vecs, text_row, item_vecs, item_valid) -> list[tuple[float, float]]:
        model = self.model
        n_items = int(item_valid.sum())
        out: list[tuple[float, float]] = [(1.0, 0.0)] * len(events)
        if not events:
            return out
        dev = model.device
        # Prior event counts, including earlier events of the same batch.
        running: dict[str, int] = {}
        prior = []
        for ev in events:
            base = running.get(ev.user_id)
            if base is None:
                state = profiles.get(ev.user_id)
                base = state.n_events if state else 0
            prior.append(base)
            running[ev.user_id] = base + 1
        contexts: dict[int, torch.Tensor] = {}  # event position -> what it is scored from
        targets: dict[int, int] = {}  # click position -> its item's row
        for i, e in enumerate(events):
            if isinstance(e, SearchEvent):
                if text_vecs is not None:
                    contexts[i] = text_vecs[text_row[e.query]]
                continue
            row = model.items.row.get(e.item_id)
            if row is None or not bool(item_valid[row]):
                continue
            if e.query and text_vecs is not None:
                contexts[i] = text_vecs[text_row[e.query]]
            else:
                state = profiles.get(e.user_id)
                if state is None or state.vector is None or state.version != model.version:
                    continue
                contexts[i] = torch.from_numpy(state.vector).to(dev)
            targets[i] = row
        if not contexts:
            return self._unscored(events, out, prior, n_items)
        positions = list(contexts)
        n = item_vecs.shape[0]
        sampled = model.items.coarse is not None and 0 < self.settings.ann_min_items <= n
        if sampled:
            chunks = [positions[k:k + IMPORTANCE_CHUNK] for k in range(0, len(positions), IMPORTANCE_CHUNK)]
        else:  # every item, in one product for the batch
            chunks = [positions]
            every = ScoredColumns.of(item_vecs, item_valid.nonzero().squeeze(1), None)
        for chunk in chunks:
            ctx_all = torch.stack([contexts[i] for i in chunk])
            cols = self._sampled_columns(events, chunk, ctx_all, targets, item_vecs, item_valid, n) if sampled else every
            vecs, log_w = cols.vecs, cols.log_weights
            searches = [k for k, i in enumerate(chunk) if i not in targets]
            clicks = [k for k, i in enumerate(chunk) if i in targets]
            if searches:
                p = torch.tensor([prior[chunk[k]] for k in searches], device=dev, dtype=torch.float32)
                w = search_importance(ctx_all[searches], vecs, p, log_weights=log_w)
                for k, wi in zip(searches, w.tolist()):
                    out[chunk[k]] = (wi, 0.0)
            if clicks:
                ctx = ctx_all[clicks]
                target = cols.column_of(torch.tensor([targets[chunk[k]] for k in clicks], device=dev))
                loss = catalog_loss(ctx, vecs, target, log_weights=log_w)
                p = torch.tensor([prior[chunk[k]] for k in clicks], device=dev, dtype=torch.float32)
                w = self._click_weights(loss, ctx, vecs, target, p, max(n_items, 2), log_w)
                for k, wi, li in zip(clicks, w.tolist(), loss.tolist()):
                    out[chunk[k]] = (wi, li)
        return self._unscored(events, out, prior, n_items)

    def _sampled_columns(self, events, chunk: list[int], contexts: torch.Tensor, targets: dict[int, int],
                         item_vecs: torch.Tensor, item_valid: torch.Tensor, n: int) -> "ScoredColumns":
        """Where the coarse index serves (``COLDSTART_ANN_MIN_ITEMS``), a chunk of events is scored against
        the items of the ``IMPORTANCE_PROBE`` groups nearest to each context and its clicked items, exactly
        (the head of each softmax), and ``COLDSTART_IMPORTANCE_SAMPLE`` items drawn uniformly from the rest,
        each standing for the rows it samples (:func:`sample_outside`). Scored against every item, one batch
        took 1.0 s at 100k items and 32 events, 28 s at 1M and 256 (README, performance). Drawn with a seed
        from the chunk's event ids, so a batch redelivered whole is scored alike. Returns the columns'
        vectors, their log weights and their catalogue rows."""
        dev = self.model.device
        clicked = torch.tensor([targets[i] for i in chunk if i in targets], dtype=torch.long, device=dev)
        rows = torch.unique(torch.cat([self.model.items.coarse.candidates(contexts, n, IMPORTANCE_PROBE), clicked]))
        seed = zlib.crc32("".join(events[i].event_id for i in chunk).encode())
        rows, log_w, _ = sample_outside(rows, n, self.settings.importance_sample, seed)
        keep = item_valid[rows]  # a drawn or unassigned row without a vector is no item
        rows, log_w = rows[keep], log_w[keep]  # still ascending
        return ScoredColumns(gather_rows(item_vecs, rows, self._scratch), log_w, rows)

    def _unscored(self, events, out: list[tuple[float, float]], prior: list[int], n_items: int):
        # Clicks the model cannot score yet (an item with no vector, no context): neutral weight,
        # boosted for cold users like any other event.
        unscored = [i for i, e in enumerate(events) if isinstance(e, ClickEvent) and out[i] == (1.0, 0.0)]
        if unscored:  # one tensor call for all of them (issue 11: no per-event tensor work)
            p = torch.tensor([float(prior[i]) for i in unscored], device=self.model.device)
            for i, wi in zip(unscored, unscored_weight(p, n_items).tolist()):
                out[i] = (wi, 0.0)
        return out

    def _click_weights(self, loss, ctx, item_vecs, target, prior, n_items: int, log_weights=None) -> torch.Tensor:
        """issue 10: weights of ``COLDSTART_IMPORTANCE_ESTIMATOR`` (the function the benchmark measures)."""
        return click_weights(self.settings.importance_estimator, loss, prior, n_items, context=ctx,
                             item_vecs=item_vecs, target=target, lines=self.noise_lines, log_weights=log_weights)


@dataclasses.dataclass(frozen=True)
class ScoredColumns:
    """The items a chunk of events is scored against: their vectors, the log of how many catalogue rows
    each stands for (None: itself only, the exact sums) and their catalogue rows, ascending.

    >>> cols = ScoredColumns.of(torch.eye(4), torch.tensor([0, 2, 3]), None)
    >>> cols.vecs.shape, cols.column_of(torch.tensor([3, 0])).tolist()
    (torch.Size([3, 4]), [2, 0])
    """

    vecs: torch.Tensor
    log_weights: torch.Tensor | None
    rows: torch.Tensor

    @classmethod
    def of(cls, item_vecs: torch.Tensor, rows: torch.Tensor, log_weights: torch.Tensor | None) -> "ScoredColumns":
        return cls(item_vecs[rows], log_weights, rows)

    def column_of(self, catalog_rows: torch.Tensor) -> torch.Tensor:
        """The columns of given catalogue rows (each one of :attr:`rows`)."""
        return torch.searchsorted(self.rows, catalog_rows)


# Where the coarse index serves: a batch's importance is scored a chunk of this many events at a time,
# each against the items of the IMPORTANCE_PROBE groups nearest to its contexts (exactly) and a uniform
# sample of the rest (Settings.importance_sample); ~32k columns a chunk at 1M items.
IMPORTANCE_CHUNK = 16
IMPORTANCE_PROBE = 2
HISTORY_EVENTS = 3  # events in a click's training context (the importance benchmark's protocol too)


def history_context(events: Sequence[RecentEvent], items, n: int = HISTORY_EVENTS) -> str:
    """A click's training context when no query came with it: the texts of the user's ``n`` newest
    events, newest first, joined by " ; " -- a search's query, a click's item text (its title, else the
    queries that led to it). A click carries no text of its own, so before this a user who only clicked
    (a log without searches) gave the trainer empty contexts.

    >>> from coldstart.model.items import ItemIndex
    >>> index = ItemIndex(4, "cpu"); _ = index.upsert("sku1", "red stapler")
    >>> events = [RecentEvent("e1", "search", 1.0, text="stapler"), RecentEvent("e2", "click", 2.0, item_id="sku1"),
    ...           RecentEvent("e3", "click", 3.0, item_id="unknown")]
    >>> history_context(events, index)
    'red stapler ; stapler'
    """
    texts = []
    for ev in reversed(events):
        if ev.text:
            texts.append(ev.text)
        elif ev.item_id is not None and (row := items.row.get(ev.item_id)) is not None and items.text(row):
            texts.append(items.text(row))
        if len(texts) == n:
            break
    return " ; ".join(texts)


def event_vectors(model: ServingModel, states: Sequence[ProfileState], half_life_s: float):
    """Vectors, weights and owners of the recent events of ``states`` in the serving vector space.

    A search contributes its query; a click its item (or its query while the item has no vector).
    Weight = the event's stored profile weight (``profile_weights``) x recency relative to the user's newest event (event time, so a
    replay gives the same profile as the live stream).
    """
    item_vecs, item_valid = model.items.matrix()
    # Only the texts of events without an item vector are encoded (a click's text, its title or query,
    # is not needed once its item has one): a serving replica's cache never saw the worker's encodes,
    # so each needless text was a forward pass on its request path.
    text_row: dict[str, int] = {}  # text -> its row in the encoded batch
    rows_txt, rows_item, slots, w, ts, owner, now = [], [], [], [], [], [], []
    kinds = []  # 0 = text row, 1 = item row
    for u, st in enumerate(states):
        newest = max((e.ts for e in st.events), default=0.0)
        for j, e in enumerate(st.events):
            row = model.items.row.get(e.item_id) if e.item_id else None
            if row is not None and bool(item_valid[row]):
                kinds.append(1)
                rows_item.append(row)
            elif e.text:
                kinds.append(0)
                rows_txt.append(text_row.setdefault(e.text, len(text_row)))
            else:
                continue
            slots.append((u, j))
            w.append(e.weight)
            ts.append(e.ts)
            now.append(newest)
            owner.append(u)
    text_vecs = model.cache.encode(model.encoder, list(text_row)) if text_row else None
    dev = model.device
    dim = model.encoder.dim
    if not slots:
        return torch.zeros(0, dim, device=dev), torch.zeros(0, device=dev), torch.zeros(0, dtype=torch.long, device=dev), slots
    kinds_t = torch.tensor(kinds, device=dev, dtype=torch.bool)
    vecs = torch.empty(len(slots), dim, device=dev)
    if rows_item:
        vecs[kinds_t] = item_vecs[torch.tensor(rows_item, device=dev)]
    if rows_txt:
        vecs[~kinds_t] = text_vecs[torch.tensor(rows_txt, device=dev)]
    ts_t = torch.tensor(ts, device=dev, dtype=torch.float64)
    age_ref = torch.tensor(now, device=dev, dtype=torch.float64)
    # recency relative to each user's newest event: weights = 0.5 ** (age / half-life)
    recency = recency_weights(ts_t - age_ref, 0.0, half_life_s).float()
    weights = torch.tensor(w, device=dev, dtype=torch.float32) * recency
    return vecs, weights, torch.tensor(owner, device=dev, dtype=torch.long), slots


def profile_matrix(model: ServingModel, states: Sequence[ProfileState], half_life_s: float) -> torch.Tensor:
    vecs, weights, owner, _ = event_vectors(model, states, half_life_s)
    return profile_vectors(vecs, weights, owner, len(states))
