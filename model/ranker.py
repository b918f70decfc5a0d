"""A ranker learned from the stream: a linear softmax model over per-candidate signals (issue 9).

Every candidate item gets a row of :data:`FEATURES` (semantic similarities, stream statistics,
popularity, newness, and interactions with the user's event count). The score is ``features @ w``.
The weights start at values that reproduce the fixed blend the worker served before (so a fresh
worker is never worse than it) and are then learned online, prequentially: for each click, *before*
it is applied, the features of every candidate are computed as they were when the click happened and
one AdaGrad step of the softmax cross-entropy (the clicked item against all other candidates, the
exact form of "clicked vs sampled negatives") moves the weights. Where titles say little, the
weights of the cosine features fall and the stream statistics take over, with no per-log tuning.

Beside the shared weights each item has a learned offset (``item_bias``): what clicks say about an item
beyond its signals (an item clicked more, or less, than its text and counts predict). It is learned on
the same softmax, sparsely (the clicked item and the few items the step ranked highest: the only ones
with gradient worth writing), keyed by item id so a checkpoint survives a rebuilt item index.

Pure torch, no Kafka: the worker calls it from its batch path, the evaluation from its in-process run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["FEATURES", "TEXT_FEATURES", "LinearRanker", "cosine_spread", "feature_matrix", "initial_weights",
           "load_ranker", "log_gap", "on", "save_ranker", "text_gain", "with_features_added"]

FEATURES = (
    "profile_cos_blend",  # (1 - a(n)) * cos(profile, item): today's personal term
    "popularity_blend",  # a(n) * popularity: today's popularity term
    "query_memory",  # past clicks after the user's current query (today's query->click memory)
    "last_cos",  # cos(last event, item): recency beyond the profile's mean
    "query_cos",  # cos(current query, item), 0 without a pending query
    "transition",  # clicked the user's last item, then this one
    "coclick",  # clicked together with the user's recent items
    "popularity",  # decayed popularity, not faded by n
    "newness",  # 1 for an item first seen now, halving every popularity half-life
    "profile_cos_x_logn",  # cos(profile) x log1p(n): how much history is worth, learned
    "transition_x_logn",
    "popularity_x_logn",
    "max_cos",  # max over the user's recent events of cos(event, item): one interest, not the blurred mean
    "transition_cos",  # cos(item, mean of what followed the user's last item): transitions through the text
    "seen",  # 1 for an item the user clicked recently: whether this shop's users come back, learned
    # x log1p(minutes since the user's last event): a visitor back after a week is not in the session
    # their last item started (Best Buy, profile only, whole log: live 0.48 vs popularity 0.52 after a gap
    # of over 7 days, 0.74 vs 0.45 within a minute), so how much popularity, transitions, the last event
    # and a return to an item already clicked are worth is learned along the gap, as along log(1 + n).
    "popularity_x_gap",
    "transition_x_gap",
    "last_cos_x_gap",
    "seen_x_gap",
    # clicked the user's item before the last one, then this one: a step of the session the last click may
    # have been a detour from (Amazon, whole test stream, in process: +0.0031 [+0.0012, +0.0049] Recall@10)
    "transition_prev",
    # past clicks after the query of the user's newest click: the query memory of what they searched
    # before, for a visitor who has not typed again (Best Buy profile only, whole log, in process:
    # +0.0035 [-0.0002, +0.0071] Recall@10, one prior event +0.0048 [+0.0009, +0.0088])
    "click_query_memory",
)

# The features that are cosines in the serving version's vector space (scaled by text_gain at a swap).
TEXT_FEATURES = ("profile_cos_blend", "last_cos", "query_cos", "profile_cos_x_logn", "max_cos", "transition_cos",
                 "last_cos_x_gap")


# The fixed blend's scores live in [0, ~3]: as softmax logits over thousands of candidates they are
# almost flat, so the first thousand clicks went into learning a temperature rather than which signal
# predicts clicks. Scaling the blend ranks exactly as the blend does and starts the softmax sharp.
# Measured in process on the first 2,400 Amazon clicks (Recall@10, 1-5 prior events): scale 1 / lr 0.05,
# the earlier defaults, 0.193; scale 5 with lr 0.3 / 1.0: 0.206 / 0.212; scale 10 / 20 with lr 1.0:
# 0.210 / 0.201. Neither is tuned to a log: any scale of 5-10 and lr of 0.3-1 measured within 0.006.
INITIAL_SCALE = 5.0


def initial_weights() -> torch.Tensor:
    """The weights that rank as the fixed blend (personal + popularity + query memory), scaled.

    >>> dict(zip(FEATURES[:3], initial_weights()[:3].tolist()))
    {'profile_cos_blend': 5.0, 'popularity_blend': 5.0, 'query_memory': 5.0}
    """
    w = torch.zeros(len(FEATURES))
    w[0] = w[1] = w[2] = INITIAL_SCALE
    return w


def on(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` on ``device`` (and in ``dtype``), converted only when it is not already: every torch call
    releases and retakes the GIL, and in a worker whose event loop wants the GIL back each handover can
    wait for the loop (issue 11: no-op conversions were a third of the torch calls of a ranker step).

    >>> x = torch.zeros(2); on(x, x.device) is x, on(x, x.device, torch.float64).dtype
    (True, torch.float64)
    """
    if t.device == device and (dtype is None or t.dtype == dtype):
        return t
    return t.to(device, dtype) if dtype is not None else t.to(device)


def log_gap(gap_s: float) -> float:
    """The gap feature: log(1 + minutes since the user's last event), 0 for a negative gap (clocks).

    >>> round(log_gap(0.0), 3), round(log_gap(60.0), 3), round(log_gap(7 * 86400.0), 2)
    (0.0, 0.693, 9.22)
    """
    return math.log1p(max(float(gap_s), 0.0) / 60.0)


def feature_matrix(signals: dict[str, torch.Tensor], n_events: float, pop_weight: float,
                   gap: float = 0.0) -> torch.Tensor:
    """Stack the per-item signals into ``[n_items, len(FEATURES)]``.

    ``signals`` holds ``[n]`` tensors named ``profile_cos``, ``last_cos``, ``query_cos``, ``popularity``,
    ``query_memory``, ``transition``, ``coclick``, ``newness``, ``max_cos``, ``transition_cos``, ``seen``,
    ``transition_prev``, ``click_query_memory``; missing ones are zeros. ``pop_weight`` is
    a(n) of :func:`coldstart.model.profile.popularity_blend`; ``gap``: :func:`log_gap` of the time since
    the user's last event (0 for a user without one).

    >>> f = feature_matrix({"profile_cos": torch.tensor([0.5, 0.0]), "popularity": torch.tensor([0.0, 1.0])},
    ...                    n_events=1, pop_weight=0.25)
    >>> (f @ initial_weights() / INITIAL_SCALE).tolist()
    [0.375, 0.25]
    """
    ref = next(iter(signals.values()))
    dev = ref.device
    zeros = torch.zeros(ref.shape[0], device=dev)

    get = lambda name: on(signals.get(name, zeros), dev, torch.float32)  # noqa: E731
    logn = math.log1p(max(float(n_events), 0.0))
    cos = get("profile_cos")
    pop = get("popularity")
    cols = [
        (1.0 - pop_weight) * cos, pop_weight * pop, get("query_memory"), get("last_cos"), get("query_cos"),
        get("transition"), get("coclick"), pop, get("newness"), cos * logn, get("transition") * logn, pop * logn,
        get("max_cos"), get("transition_cos"), get("seen"), pop * gap, get("transition") * gap,
        get("last_cos") * gap, get("seen") * gap, get("transition_prev"),
        get("click_query_memory"),
    ]
    # Stacked as rows and returned transposed: each column is then one contiguous copy (stacking along
    # dim 1 interleaves 15 strided writes: 0.65 vs 0.13 ms at 100k items; scoring the view is no slower).
    return torch.stack(cols, dim=0).T


# The item offsets a step writes besides the clicked item's: the items with most of the softmax's mass.
BIAS_TOP = 32
BIAS_MAX = 10.0  # a bound on every item's offset, as max_abs is on the weights
BIAS_L2 = 1e-3
# At most this many items keep an offset (two floats each in dicts); past it the first written tenth goes
# (dicts keep insertion order), so a catalogue that churns through ids cannot grow the ranker forever.
BIAS_MAX_ITEMS = 1_000_000
# The metric's AdaGrad accumulator at the start: its gradients are per dimension (~1e-3 for unit vectors
# of 384 dimensions), so an accumulator of 1 would leave it at plain SGD with a tiny step.
METRIC_SQ0 = 1e-4


class LinearRanker:
    """``score = features @ w + item_bias``, learned online with AdaGrad on the softmax cross-entropy of
    each click.

    river's contract: ``learn_one`` then ``predict_one`` (here ``score``); state round-trips through
    ``state_dict`` as plain tensors (safetensors-ready).

    >>> r = LinearRanker(torch.zeros(2), lr=0.5)
    >>> feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> for _ in range(20):
    ...     _ = r.learn_one(feats, target=1)
    >>> r.score(feats).argmax().item(), r.steps
    (1, 20)
    >>> LinearRanker.from_state(r.state_dict()).weights.equal(r.weights)
    True
    """

    def __init__(self, weights: torch.Tensor | None = None, lr: float = 0.5, l2: float = 1e-4,
                 max_abs: float = 50.0, warmup: float = 20.0, bias_lr: float = 0.3,
                 metric_lr: float = 0.0) -> None:
        self.weights = (initial_weights() if weights is None else weights).clone().float()
        self.lr = lr
        # Step t moves by lr * t / (t + warmup): the first clicks of a fresh shop say little about which
        # signal predicts clicks (one click after an unrelated search taught "text does not matter" and
        # a popular item beat a new one that matched the next query exactly), so they barely move the
        # blend; after a hundred clicks the rate is 5/6 of lr.
        self.warmup = warmup
        self.l2 = l2
        self.max_abs = max_abs  # a bound on every weight: one odd stretch of the stream cannot run away
        # AdaGrad's accumulator starts at 1, not near 0: the first steps are then lr x gradient, not lr x
        # sign(gradient). In process on the first 2,400 Amazon clicks (Recall@10, 1-5 prior): 0.207 with
        # 1e-2, 0.208 with 1; with the warm-up below 0.206 (warm-up 100: 0.202).
        self.grad_sq = torch.full_like(self.weights, 1.0)
        self.steps = 0
        # Item offsets, sparse: only items some step wrote have one (0 for every other item, a new one
        # included). In process, first 8,000 events (Recall@10, 1-5 prior; paired with the offsets off):
        # Amazon +0.0028 [+0.0004, +0.0051] with lr 0.3, Best Buy search->click +0.0018 [-0.0013, +0.005],
        # Best Buy profile only and Amazon with shuffled titles within their intervals of no change.
        # bias_lr 0 turns them off.
        self.bias_lr = bias_lr
        self.item_bias: dict[str, float] = {}
        self.item_bias_sq: dict[str, float] = {}
        self.bias_changed: list[str] = []  # the items the last step's biases were written for
        # A learned diagonal metric over the text vectors: ``item_vec @ (profile * metric)`` joins each
        # candidate's score (0 at the start: the signals alone rank). Which dimensions of the encoder's
        # space predict this shop's clicks, learned online beside the weights; metric_lr 0 turns it off.
        self.metric_lr = metric_lr
        self.metric: torch.Tensor | None = None  # [dim], created by the first step that has a profile
        self.metric_sq: torch.Tensor | None = None
        # The model version whose cosines the text terms are scaled to (:meth:`rescale_text`), kept in the
        # checkpoint: a worker restarted onto another version rescales from this one, not from whatever
        # it happened to load first. None: not known yet (the serving version is assumed).
        self.text_version: str | None = None

    def score(self, features: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Each candidate's score; ``offsets``: the candidates' item biases (:meth:`offsets_of`)."""
        scores = features @ on(self.weights, features.device)
        return scores if offsets is None else scores + on(offsets, scores.device)

    def item_prior(self, popularity: torch.Tensor, newness: torch.Tensor, offsets: torch.Tensor,
                   n_events: float, pop_weight: float, gap: float = 0.0) -> torch.Tensor:
        """Each item's score from the signals that do not depend on the user's texts or clicks
        (popularity, newness, learned offset): with a coarse index, the items best by it are candidates
        whatever the text says (``pop_weight``: a(n), ``gap``: as in :func:`feature_matrix`).

        >>> r = LinearRanker()
        >>> r.item_prior(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([0.0, 2.0]), 0, 1.0).tolist()
        [5.0, 2.0]
        """
        w = self.weights.tolist()
        logn = math.log1p(max(float(n_events), 0.0))
        i = FEATURES.index
        pop_w = (w[i("popularity_blend")] * pop_weight + w[i("popularity")] + w[i("popularity_x_logn")] * logn
                 + w[i("popularity_x_gap")] * gap)
        return pop_w * popularity + w[i("newness")] * newness + offsets

    def offsets_of(self, item_ids: list[str | None]) -> torch.Tensor:
        """The item biases of ``item_ids`` as a float32 tensor (0 for an item never written or ``None``).

        >>> r = LinearRanker(); r.item_bias["a"] = 0.5
        >>> r.offsets_of(["a", "b", None]).tolist()
        [0.5, 0.0, 0.0]
        """
        bias = self.item_bias
        return torch.tensor([bias.get(i, 0.0) if i is not None else 0.0 for i in item_ids], dtype=torch.float32)

    def learn_one(self, features: torch.Tensor, target: int, mask: torch.Tensor | None = None,
                  offsets: torch.Tensor | None = None, item_ids: list[str | None] | None = None,
                  log_weights: torch.Tensor | None = None,
                  metric_inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        """One step on ``-log softmax(score)[target]`` over the candidates (``mask``: rows allowed).
        With ``item_ids`` (each candidate row's item id) the item biases learn too, starting from
        ``offsets`` (the candidates' current biases); :attr:`bias_changed` then names the items written.
        ``log_weights``: log of how many items each row stands for (a sampled softmax: rows drawn from
        outside a candidate set; their ``item_ids`` are None). ``metric_inputs``: the candidates' item
        vectors and the user's profile vector, when ``offsets`` hold the metric term (:meth:`metric_query`):
        the metric then learns too. Returns the loss before the step."""
        scores = features @ on(self.weights, features.device)
        if offsets is not None:
            scores = scores + on(offsets, scores.device)
        if log_weights is not None:
            scores = scores + on(log_weights, scores.device)
        if mask is not None:
            scores = scores.masked_fill(~on(mask, features.device), float("-inf"))
        logp = torch.log_softmax(scores, dim=0)
        p = logp.exp()
        # E_p[f] - f_target; as a vector-matrix product (a broadcast product summed over the items took
        # 30 ms at 100k, 0.2 ms this way: it runs once per click on the writer thread).
        grad = p @ torch.nan_to_num(features) - features[target]
        grad = on(grad, self.weights.device) + self.l2 * self.weights
        self.grad_sq += grad * grad
        self.steps += 1
        rate = self.lr * self.steps / (self.steps + self.warmup)
        self.weights = (self.weights - rate * grad / self.grad_sq.sqrt()).clamp(-self.max_abs, self.max_abs)
        self.bias_changed = []
        if item_ids is not None:
            self._bias_step(p, target, item_ids, rate / self.lr)
        if metric_inputs is not None and self.metric_lr > 0:
            self._metric_step(p, target, *metric_inputs, warm=rate / self.lr)
        return -float(logp[target])

    def metric_query(self, profile: torch.Tensor) -> torch.Tensor | None:
        """``profile * metric``: its dot product with an item vector is the metric's term of that item's
        score (None while the metric is off or has not learned yet)."""
        metric = self.metric  # once: the batch thread may replace it while a request reads
        if self.metric_lr <= 0 or metric is None or metric.shape != profile.shape:
            return None  # off, nothing learned yet, or a model version of another width (relearned)
        return profile * on(metric, profile.device, profile.dtype)

    def _metric_step(self, p: torch.Tensor, target: int, item_vecs: torch.Tensor, profile: torch.Tensor,
                     warm: float) -> None:
        """AdaGrad on the diagonal metric: d loss / d metric = profile * (E_p[item] - item_target), one
        vector-matrix product over the candidates (the term is linear in the metric: a convex step).

        >>> r = LinearRanker(torch.zeros(1), metric_lr=0.5)
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]); u = torch.tensor([0.0, 1.0])
        >>> for _ in range(30):
        ...     q = r.metric_query(u)
        ...     off = x @ q if q is not None else None
        ...     _ = r.learn_one(torch.zeros(2, 1), target=1, offsets=off, metric_inputs=(x, u))
        >>> r.metric[1].item() > 0.5, r.metric[0].item()
        (True, 0.0)
        """
        x = torch.nan_to_num(on(item_vecs, item_vecs.device, torch.float32))
        g = (on(p, p.device, torch.float32) @ x - x[target]) * on(profile, x.device, torch.float32)
        g = on(g, torch.device("cpu"))
        if self.metric is None or self.metric.shape != g.shape:
            self.metric, self.metric_sq = torch.zeros_like(g), torch.full_like(g, METRIC_SQ0)
        g = g + self.l2 * self.metric
        self.metric_sq += g * g
        step = warm * self.metric_lr * g / self.metric_sq.sqrt()
        self.metric = (self.metric - step).clamp(-self.max_abs, self.max_abs)

    def _bias_step(self, p: torch.Tensor, target: int, item_ids: list[str | None], warm: float) -> None:
        """Sparse AdaGrad on the item biases: d loss / d bias_i = p_i - [i = target], written for the
        target and the ``BIAS_TOP`` candidates with most mass (the rest of the gradient is spread thin
        over thousands of items, each share too small to move its item). Sets :attr:`bias_changed`."""
        if self.bias_lr <= 0:
            return
        top = torch.topk(p, min(BIAS_TOP, p.shape[0]))
        # The top's probabilities from topk itself: indexing ``p`` with a list of rows builds an index
        # tensor from Python ints, a tenth of a step (issue 11).
        probs = dict(zip(top.indices.tolist(), top.values.tolist()))
        if target not in probs:
            probs[target] = float(p[target])
        changed = []
        for row, prob in probs.items():
            item = item_ids[row]
            if item is None:
                continue
            b = self.item_bias.get(item, 0.0)
            g = prob - (1.0 if row == target else 0.0) + BIAS_L2 * b
            sq = self.item_bias_sq.get(item, 1.0) + g * g
            self.item_bias_sq[item] = sq
            new = max(-BIAS_MAX, min(BIAS_MAX, b - warm * self.bias_lr * g / math.sqrt(sq)))
            self.item_bias[item] = new
            changed.append(item)
        if len(self.item_bias) > BIAS_MAX_ITEMS:
            for item in list(itertools.islice(self.item_bias, BIAS_MAX_ITEMS // 10)):
                del self.item_bias[item]
                self.item_bias_sq.pop(item, None)
                changed.append(item)  # back to 0: readers refresh it
        self.bias_changed = changed

    def forget_biases(self, item_ids: Iterable[str]) -> list[str]:
        """Reset these items' biases to a new item's (0, and a fresh accumulator, so genuine clicks
        relearn them quickly); returns those that had one. For the items a flagged bot clicked: their
        offsets were pushed by the bot's steps and, the other way, by every other step that saw the
        bot's counts in the popularity (the offset compensated a pull that is now retracted), so taking
        back the bot's own steps is not enough (measured in tests/streams/test_recommender.py)."""
        had = [i for i in item_ids if i in self.item_bias]
        for item in had:
            del self.item_bias[item]
            self.item_bias_sq.pop(item, None)
        return had

    def rescale_text(self, gain: float) -> None:
        """Multiply every text term of the score (the weights of :data:`TEXT_FEATURES` and the metric)
        by ``gain`` (:func:`text_gain`): a new vector space whose cosines lie ``gain`` times closer then
        scores as the old one did, and the steps go on from there instead of relearning the scale."""
        if not math.isfinite(gain) or gain <= 0:
            raise ValueError(f"gain must be a positive number, got {gain}")
        w = self.weights.clone()
        for name in TEXT_FEATURES:
            w[FEATURES.index(name)] *= gain
        self.weights = w.clamp(-self.max_abs, self.max_abs)
        if self.metric is not None:
            self.metric = (self.metric * gain).clamp(-self.max_abs, self.max_abs)

    def contributions(self, features: torch.Tensor) -> torch.Tensor:
        """``features * w``: how much each signal adds to each candidate's score (explanations)."""
        return features * self.weights.to(features.device)[None, :]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain tensors: the item ids of the biases as the UTF-8 bytes of one JSON list (an id may hold
        any character)."""
        items = list(self.item_bias)
        return {"weights": self.weights.clone(), "grad_sq": self.grad_sq.clone(),
                "steps": torch.tensor([self.steps]),
                "item_bias": torch.tensor([self.item_bias[i] for i in items], dtype=torch.float32),
                "item_bias_sq": torch.tensor([self.item_bias_sq.get(i, 1.0) for i in items], dtype=torch.float32),
                "item_bias_ids": torch.frombuffer(bytearray(json.dumps(items).encode()), dtype=torch.uint8),
                **({"metric": self.metric.clone(), "metric_sq": self.metric_sq.clone()}
                   if self.metric is not None else {})}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], **kwargs) -> "LinearRanker":
        r = cls(state["weights"], **kwargs)
        r.grad_sq = state["grad_sq"].clone().float()
        r.steps = int(state["steps"][0])
        ids_bytes = state.get("item_bias_ids")
        if ids_bytes is not None and ids_bytes.numel():
            items = json.loads(ids_bytes.numpy().tobytes().decode())
            values, squares = state["item_bias"].tolist(), state["item_bias_sq"].tolist()
            if not len(items) == len(values) == len(squares):
                raise KeyError("item_bias: ids and values of different lengths")
            r.item_bias, r.item_bias_sq = dict(zip(items, values)), dict(zip(items, squares))
        if "metric" in state:
            r.metric, r.metric_sq = state["metric"].clone().float(), state["metric_sq"].clone().float()
        return r


def cosine_spread(vectors: torch.Tensor) -> float:
    """How far apart the cosines of one query with many items lie: for each of the unit ``vectors``
    [m, d], the standard deviation of its cosines with the other m - 1, averaged over the m. A softmax
    over ``w * cos`` ranks by differences of cosines within one query, so this is the unit the ranker's
    text weights are learned in.

    >>> cosine_spread(torch.eye(3))  # every pair orthogonal: no spread
    0.0
    >>> round(cosine_spread(torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=1)), 4)
    0.3333
    """
    m = vectors.shape[0]
    if m < 3:
        raise ValueError(f"a spread needs at least 3 vectors, got {m}")
    cos = vectors.float() @ vectors.float().T
    off = cos[~torch.eye(m, dtype=torch.bool, device=cos.device)].view(m, m - 1)
    return float(off.std(dim=1).mean())


def text_gain(old: torch.Tensor, new: torch.Tensor) -> float:
    """The factor that keeps the ranker's text weights in the units they were learned in across a swap:
    the spread of the old version's cosines over that of the new one's, on the same items (rows of
    ``old`` and ``new`` are the same items' vectors in each version).

    Measured (Amazon, 3,000 titles): one fine-tuning round of 30 steps took the mean cosine of two
    random items from 0.26 to 0.63 and halved its spread (0.13 -> 0.065) while keeping their order, so
    the weights learned on the base version read every text signal at half strength after the swap.

    >>> g = torch.Generator().manual_seed(0)
    >>> old = torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=1)
    >>> squeezed = torch.nn.functional.normalize(old + 3 * torch.ones(8), dim=1)  # same items, closer together
    >>> text_gain(old, old), text_gain(old, squeezed) > 2
    (1.0, True)
    """
    if old.shape != new.shape:
        raise ValueError(f"old and new must be the same items' vectors, got {tuple(old.shape)} and {tuple(new.shape)}")
    new_spread = cosine_spread(new)
    return cosine_spread(old) / new_spread if new_spread > 0 else 1.0


def save_ranker(ranker: LinearRanker, path: Path) -> None:
    """Write the ranker's state to ``path`` (safetensors, never a pickle), atomically: written aside,
    fsynced, renamed over the old file, so a crash leaves the previous checkpoint or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    metadata = {"features": ",".join(FEATURES)}
    if ranker.text_version is not None:
        metadata["text_version"] = ranker.text_version
    save_file(ranker.state_dict(), str(tmp), metadata=metadata)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_ranker(path: Path, **kwargs) -> tuple[LinearRanker | None, str]:
    """The ranker saved at ``path``, or ``(None, why)`` when there is none, it cannot be read, or it was
    learned over a list of features this code cannot take (one was removed since): the caller starts
    afresh. Features added since it was saved start as a fresh ranker starts them
    (:func:`with_features_added`).

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> load_ranker(d / "ranker.safetensors")
    (None, 'no saved ranker')
    >>> r = LinearRanker(); r.weights[0] = 3.0
    >>> save_ranker(r, d / "ranker.safetensors")
    >>> loaded, why = load_ranker(d / "ranker.safetensors"); float(loaded.weights[0]), why, loaded.text_version
    (3.0, 'loaded', None)
    >>> r.text_version = "v0007"; save_ranker(r, d / "ranker.safetensors")
    >>> load_ranker(d / "ranker.safetensors")[0].text_version
    'v0007'
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return None, "no saved ranker"
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        state = load_file(str(path))
        saved = metadata.get("features", "").split(",")
        why = "loaded"
        if saved != list(FEATURES):
            state = with_features_added(state, saved)
            if state is None:
                return None, "learned over another list of features"
            why = f"loaded, with features added since it was saved: {', '.join(f for f in FEATURES if f not in saved)}"
        ranker = LinearRanker.from_state(state, **kwargs)
        ranker.text_version = metadata.get("text_version")  # absent in checkpoints before it was kept
    except (SafetensorError, OSError, KeyError, IndexError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    if ranker.weights.shape != (len(FEATURES),) or not bool(torch.isfinite(ranker.weights).all()):
        return None, "unreadable (weights of the wrong shape or not finite)"
    return ranker, why


def with_features_added(state: dict[str, torch.Tensor], saved: list[str]) -> dict[str, torch.Tensor] | None:
    """A checkpoint learned over ``saved`` features brought to today's :data:`FEATURES` when a newer
    coldstart only added features: every saved weight (and its AdaGrad sum) moves to its feature's
    place, an added one starts as a fresh ranker starts it. A worker upgraded in place then keeps what
    it learned instead of ranking as the fixed blend again. None when a saved feature is gone or the
    weights do not match their names: such a checkpoint ranks by signals this code no longer computes.

    >>> old = [f for f in FEATURES if f != "transition_prev"]
    >>> state = {"weights": torch.arange(len(old), dtype=torch.float32), "grad_sq": torch.full((len(old),), 2.0)}
    >>> new = with_features_added(state, old)
    >>> float(new["weights"][FEATURES.index("transition_prev")]), float(new["grad_sq"][FEATURES.index("transition_prev")])
    (0.0, 1.0)
    >>> float(new["weights"][FEATURES.index("popularity")]) == old.index("popularity")
    True
    >>> with_features_added(state, old[:-1] + ["a_feature_removed_since"]) is None
    True
    """
    if not set(saved) <= set(FEATURES) or len(set(saved)) != len(saved):
        return None
    if any(state[key].shape != (len(saved),) for key in ("weights", "grad_sq")):
        return None
    fresh = LinearRanker()
    at = torch.tensor([FEATURES.index(name) for name in saved])
    weights, grad_sq = fresh.weights.clone(), fresh.grad_sq.clone()
    weights[at], grad_sq[at] = state["weights"].float(), state["grad_sq"].float()
    return {**state, "weights": weights, "grad_sq": grad_sq}
