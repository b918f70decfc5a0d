r"""Importance of a training sample: a bounded weight derived from the current model's loss on it.

Importance is a bounded number with a meaning. The trainer samples (or weights) the buffer by this number, so it has to
mean something and stay within bounds. For a click of item ``t`` in context ``c`` (the query if there
is one, else the user's profile), with ``n`` items in the catalog::

    loss  = -log softmax(cos(c, items) / T)[t]            (catalog_loss; T = 0.05)
    d     = loss / log(n)                                  normalised difficulty; 1.0 = no better than
                                                           a uniform guess over the catalog
    learn = min(d, 1 + m) * exp(-max(d - 1 - m, 0))        m = noise_margin
    cold  = 1 + cold_boost / (1 + prior_events)
    w     = clip(learn * cold, w_min, w_max)

Why each factor:

* ``d`` — sampling in proportion to the loss (a cheap, monotone proxy of the per-sample gradient
  norm) is the importance-sampling distribution that reduces the variance of SGD the most
  (Katharopoulos & Fleuret, 2018, "Not All Samples Are Created Equal"); Selective-Backprop (Jiang et
  al., 2019) shows that preferring high-loss samples speeds training up at equal accuracy. Dividing by
  ``log(n)`` makes the number comparable across catalog sizes and model versions.
* ``learn`` — the loss alone over-samples noise: a click the model finds *less* likely than a random
  guess (``d > 1 + m``) is more often a mis-click, a bot or a mislabeled pair than a lesson. RHO-LOSS
  (Mindermann et al., 2022) selects points that are learnable, worth learning and not yet learnt, and
  down-weights those whose loss stays high because they are noisy. Without a holdout model to measure
  the irreducible loss, we use the uniform-guess level as the line: the weight rises with the loss up
  to ``1 + m`` and decays exponentially beyond it.
* ``cold`` — the product is about users with one or two events; their samples carry the most
  information per event about the parts of the space the model has seen least, so they get up to
  ``1 + cold_boost`` times the weight, fading as the user accumulates history.
* the clip — a bounded weight keeps the effective sample size up and one bad sample from dominating a
  round (the usual truncation of importance weights).

A search has no label, so :func:`search_importance` uses the model's uncertainty instead: the entropy of
the same softmax over the catalog, normalised by ``log(n)`` to ``[0, 1]``, times the same cold factor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["ESTIMATORS", "NoiseLines", "RankNull", "RunningQuantile", "bounded", "catalog_loss",
           "check_estimator", "click_weights", "cold_factor", "estimator_score", "genuine_probability",
           "importance_weight", "learnability", "output_grad_norm", "plausibility", "quantile_noise_weight",
           "rank_percentile", "reducible_loss", "search_importance", "unscored_weight"]


def catalog_loss(context: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor,
                 temperature: float = 0.05, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row cross-entropy of the clicked item against the whole catalog, ``[b]``.

    Rows of ``context`` and ``item_vecs`` are unit vectors, so ``context @ item_vecs.T`` is the cosine.
    ``log_weights``: the columns are a sample of the catalogue (``log_weights``: the log of how many items
    each stands for, 0 for the targets), and the partition sum is estimated from it.

    >>> items = torch.eye(3)
    >>> round(float(catalog_loss(items[:1], items, torch.tensor([0]), temperature=1.0)[0]), 4)
    0.5514
    """
    logits = (context @ item_vecs.T).float() / temperature
    if log_weights is not None:
        logits = logits + log_weights.to(logits.device)[None, :]
    return F.cross_entropy(logits, target.long(), reduction="none")


def cold_factor(prior_events: torch.Tensor, cold_boost: float = 1.0) -> torch.Tensor:
    """``1 + cold_boost / (1 + prior_events)``: ``1 + cold_boost`` for a new user, towards 1 with history.

    >>> cold_factor(torch.tensor([0.0, 1.0, 3.0]))
    tensor([2.0000, 1.5000, 1.2500])
    """
    return 1.0 + cold_boost / (1.0 + prior_events.float().clamp_min(0.0))


def learnability(d: torch.Tensor, noise_margin: float = 0.25) -> torch.Tensor:
    """``min(d, 1 + m) * exp(-max(d - 1 - m, 0))``: rises with difficulty, decays past the noise line.

    NaN (a broken loss) counts as noise and gets 0.

    >>> learnability(torch.tensor([0.5, 1.25, 2.25]))
    tensor([0.5000, 1.2500, 0.4598])
    """
    d = torch.nan_to_num(d.float(), nan=math.inf).clamp_min(0.0)
    line = 1.0 + noise_margin
    excess = (d - line).clamp_min(0.0)
    return d.clamp_max(line) * torch.exp(-excess)


def plausibility(loss: torch.Tensor, n_items: int, noise_margin: float = 0.25) -> torch.Tensor:
    """How much a click should count as evidence about its user: 1 for any click the model finds at
    least as likely as a uniform guess (up to the noise line), decaying like the learnability factor
    beyond it. Unlike the importance, a click the model already explains well keeps its full weight:
    easy to predict is not the same as uninformative about the user.

    >>> plausibility(torch.tensor([0.1, math.log(100), 2.5 * math.log(100)]), 100)
    tensor([1.0000, 1.0000, 0.2865])
    """
    d = torch.nan_to_num(loss.float(), nan=math.inf).clamp_min(0.0) / math.log(max(n_items, 2))
    return torch.exp(-(d - 1.0 - noise_margin).clamp_min(0.0))


def importance_weight(loss: torch.Tensor, n_items: int, prior_events: torch.Tensor, *,
                      w_min: float = 0.1, w_max: float = 4.0, cold_boost: float = 1.0,
                      noise_margin: float = 0.25) -> torch.Tensor:
    """The bounded importance weight of clicks with catalog loss ``loss`` (formula in the module doc).

    >>> n = 100
    >>> uniform = torch.tensor([math.log(n)])      # the model does no better than a random guess
    >>> importance_weight(uniform, n, torch.tensor([0.0]))   # new user: doubled
    tensor([2.])
    >>> importance_weight(uniform, n, torch.tensor([9.0]))
    tensor([1.1000])
    """
    d = loss.float() / math.log(max(n_items, 2))
    w = learnability(d, noise_margin) * cold_factor(prior_events.to(loss.device), cold_boost)
    return w.clamp(w_min, w_max)


def unscored_weight(prior_events: torch.Tensor, n_items: int) -> torch.Tensor:
    """The weight of clicks the model cannot score yet (an item with no vector, no context): the weight
    of a uniform guess over the catalog, boosted for cold users like any other event.

    >>> unscored_weight(torch.tensor([0.0, 9.0]), 100)
    tensor([2.0000, 1.1000])
    """
    uniform = torch.full(prior_events.shape, math.log(max(n_items, 2)), device=prior_events.device)
    return importance_weight(uniform, max(n_items, 2), prior_events)


def search_importance(query_vecs: torch.Tensor, item_vecs: torch.Tensor, prior_events: torch.Tensor,
                      temperature: float = 0.05, *, w_min: float = 0.1, w_max: float = 4.0,
                      cold_boost: float = 1.0, noise_margin: float = 0.25,
                      log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weight of unlabeled searches: normalised entropy of the catalog softmax times the cold factor.

    ``noise_margin`` is accepted for a uniform signature; without a label there is no noise test.
    With fewer than two items there is no uncertainty to measure and only the cold factor remains.
    ``log_weights``: the columns are a sample of the catalogue (the log of how many items each stands for): the
    entropy and the catalogue size are estimated from it.

    >>> items = torch.eye(4)
    >>> search_importance(torch.full((1, 4), 0.5), items, torch.tensor([3.0]))  # equidistant: max entropy
    tensor([1.2500])
    """
    del noise_margin
    cold = cold_factor(prior_events.to(query_vecs.device), cold_boost)
    n = item_vecs.shape[0]
    if log_weights is not None:
        n = float(log_weights.exp().sum())
    if n < 2:
        return cold.clamp(w_min, w_max)
    logits = (query_vecs @ item_vecs.T).float() / temperature
    if log_weights is None:
        logp = torch.log_softmax(logits, dim=1)
        mass = logp.exp()
    else:  # one item's log-probability, and the probability of all the items a column stands for
        lw = log_weights.to(logits.device)[None, :]
        logp = logits - torch.logsumexp(logits + lw, dim=1, keepdim=True)
        mass = (logp + lw).exp()
    entropy = -(mass * logp).sum(dim=1) / math.log(n)
    return (entropy.clamp(0.0, 1.0) * cold).clamp(w_min, w_max)


# ------------------------------------------------------------------------------- estimators (issue 10)
# Each estimator turns what the scoring pass already has (per-sample catalog loss, the context and
# item vectors, optionally a reference model's loss, the running NoiseLines) into a per-sample score;
# ``click_weights`` makes it the recorded weight (the worker and the benchmark both call it): an
# absolute number for loss_logn and rank_lfdr, a weight of mean ~1 over the batch (``bounded``) for
# the others, times the cold factor, clipped. The choice is the setting ``COLDSTART_IMPORTANCE_ESTIMATOR``.
#
# Measured (``coldstart bench importance``): only under the trainer's ``weighted_loss`` sampling does a
# low weight take a sample's pull away; ``importance`` sampling's 1/(Np) correction is unbiased, so it
# restores the pull of every sample, injected noise included, whatever the weights.
from coldstart.model.estimators import ESTIMATORS, check_estimator  # noqa: E402 (torch-free names)


def bounded(score: torch.Tensor, w_min: float = 0.1, w_max: float = 4.0) -> torch.Tensor:
    """``score / mean(score)`` clipped to ``[w_min, w_max]``: a weight of mean ~1 within the batch.

    NaN scores count as 0; an all-zero batch gets weight 1 everywhere (nothing to prefer).

    >>> bounded(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    tensor([0.2500, 0.5000, 0.7500, 2.5000])
    >>> bounded(torch.zeros(2))
    tensor([1., 1.])
    """
    s = torch.nan_to_num(score.float(), nan=0.0).clamp_min(0.0)
    mean = s.mean() if s.numel() else s.new_tensor(0.0)
    if float(mean) <= 0.0:
        return torch.ones_like(s)
    return (s / mean).clamp(w_min, w_max)


class RunningQuantile:
    """A per-key running quantile of a loss stream: an exponential moving average of each batch's
    ``q``-quantile. The noise line of :func:`quantile_noise_weight` is read from it, per event type,
    so it follows the loss distribution of the model in service instead of a fixed ``log n``.

    >>> rq = RunningQuantile(q=0.5, alpha=0.5)
    >>> rq.update("click", torch.tensor([1.0, 2.0, 3.0]))
    2.0
    >>> rq.update("click", torch.tensor([4.0, 4.0, 4.0]))
    3.0
    >>> rq.value("search") is None
    True
    """

    def __init__(self, q: float = 0.8, alpha: float = 0.1) -> None:
        if not 0.0 < q < 1.0 or not 0.0 < alpha <= 1.0:
            raise ValueError(f"need 0 < q < 1 and 0 < alpha <= 1, got q={q}, alpha={alpha}")
        self.q = q
        self.alpha = alpha
        self._values: dict[str, float] = {}

    def update(self, key: str, losses: torch.Tensor) -> float | None:
        finite = losses.float()[torch.isfinite(losses.float())]
        if finite.numel():
            batch_q = float(torch.quantile(finite, self.q))
            old = self._values.get(key)
            self._values[key] = batch_q if old is None else (1 - self.alpha) * old + self.alpha * batch_q
        return self._values.get(key)

    def value(self, key: str) -> float | None:
        return self._values.get(key)


def quantile_noise_weight(loss: torch.Tensor, line: float, sharpness: float = 4.0) -> torch.Tensor:
    """Loss weighting with a noise line taken from the loss distribution: ``min(r, 1) * exp(-s (r - 1)+)``
    with ``r = loss / line``. The weight rises with the loss up to the line, then falls fast: a click
    at 1.5× the line keeps ``exp(-2) ≈ 0.14`` of its weight (the ``log n`` line of
    :func:`learnability` sat below genuine clicks on Amazon and let noise through on Best Buy).

    >>> quantile_noise_weight(torch.tensor([1.0, 4.0, 6.0, float("nan")]), line=4.0)
    tensor([0.2500, 1.0000, 0.1353, 0.0000])
    """
    r = torch.nan_to_num(loss.float(), nan=math.inf).clamp_min(0.0) / max(line, 1e-6)
    return r.clamp_max(1.0) * torch.exp(-sharpness * (r - 1.0).clamp_min(0.0))


def rank_percentile(context: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor,
                    log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per row: the share of the *other* catalog items the model scores strictly above the clicked one
    (0 = ranked first, 1 = ranked last; ties count for the click).

    It is the click's p-value under the null hypothesis "this click is a random catalog item": for a
    uniformly drawn item the rank is uniform, whatever the model and whatever the context, so the
    percentile of a random click is uniform on [0, 1] while genuine clicks pile up near 0 as far as
    the model knows anything. It is the catalog loss compared with the losses every other item would
    have in the same context (``catalog_loss`` orders items the same way).

    >>> items = torch.eye(3)
    >>> ctx = torch.tensor([[0.9, 0.3, 0.1], [0.9, 0.3, 0.1]])
    >>> rank_percentile(ctx, items, torch.tensor([0, 2]))
    tensor([0., 1.])

    ``log_weights``: the columns are a sample of the catalogue (the log of how many items each stands for), each
    counting for the items it stands for (a ratio estimate, in [0, 1]).
    """
    s = context.float() @ item_vecs.float().T
    clicked = s.gather(1, target.long().reshape(-1, 1))
    if log_weights is None:
        return (s > clicked).sum(dim=1).float() / max(item_vecs.shape[0] - 1, 1)
    w = log_weights.exp().to(s.device)
    return ((s > clicked).float() @ w / max(float(w.sum()) - 1.0, 1.0)).clamp(0.0, 1.0)


def _nonincreasing(y: list[float]) -> list[float]:
    """Least-squares non-increasing fit of equally weighted ``y`` (pool-adjacent-violators).

    >>> _nonincreasing([5.0, 1.0, 2.0, 0.0])
    [5.0, 1.5, 1.5, 0.0]
    """
    blocks: list[list[float]] = []  # [mean, size]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m, k = blocks.pop()
            blocks[-1] = [(blocks[-1][0] * blocks[-1][1] + m * k) / (blocks[-1][1] + k), blocks[-1][1] + k]
    return [m for m, k in blocks for _ in range(int(k))]


class RankNull:
    """Running density of click rank percentiles (:func:`rank_percentile`) and, from it, the local false
    discovery rate of a click: the probability that a click at percentile ``r`` is a random one.

    The density ``f`` of percentiles is a mixture ``f(r) = pi0 * 1 + (1 - pi0) * g(r)`` of random clicks
    (uniform: density 1) and genuine ones (``g``, falling with ``r``). As in multiple testing with
    p-values (Efron 2001; Storey 2002; Langaas et al. 2005), ``f`` is fitted non-increasing (Grenander's
    estimator on a histogram of ``bins`` equal bins, counts decayed by ``decay`` per batch so it follows
    the model in service), ``pi0`` is its value at ``r = 1`` (conservative: the rarest ranks are taken for
    noise), and ``lfdr(r) = min(1, pi0 / f(r))``. Nothing here is fitted to one log: the noise model is
    the uniform rank of a random item, true for any catalog and model.

    >>> null = RankNull(bins=4)
    >>> table = null.update(torch.tensor([0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4, 0.6, 0.9]))
    >>> [round(x, 3) for x in table.tolist()]          # density 2.4, 0.8, 0.4, 0.4 -> pi0 = 0.4
    [0.167, 0.5, 1.0, 1.0]
    >>> null.lfdr(torch.tensor([0.05, 0.95]))
    tensor([0.1667, 1.0000])
    """

    def __init__(self, bins: int = 50, decay: float = 0.9) -> None:
        if bins < 2 or not 0.0 <= decay < 1.0:
            raise ValueError(f"need bins >= 2 and 0 <= decay < 1, got bins={bins}, decay={decay}")
        self.bins = bins
        self.decay = decay
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.table = torch.zeros(bins, dtype=torch.float64)  # lfdr per bin; 0 until the first update
        self.pi0 = 0.0  # the estimated share of random clicks

    def _bin(self, r: torch.Tensor) -> torch.Tensor:
        r = torch.nan_to_num(r.detach().double().cpu(), nan=1.0)
        return (r * self.bins).long().clamp(0, self.bins - 1)

    def update(self, r: torch.Tensor) -> torch.Tensor:
        """Add a batch of percentiles; returns the lfdr table (one value per bin)."""
        if r.numel():
            self.counts = self.decay * self.counts + torch.bincount(self._bin(r), minlength=self.bins).double()
            f = _nonincreasing((self.counts / self.counts.sum() * self.bins).tolist())
            self.pi0 = min(1.0, f[-1])
            self.table = torch.tensor([min(1.0, self.pi0 / x) if x > 0 else 1.0 for x in f], dtype=torch.float64)
        return self.table

    def lfdr(self, r: torch.Tensor) -> torch.Tensor:
        return self.table[self._bin(r)].float().to(r.device)


def genuine_probability(r: torch.Tensor, null: RankNull) -> torch.Tensor:
    """``1 - lfdr(r)``: the estimated probability that clicks at rank percentiles ``r`` are genuine,
    after adding them to the running density (the batch counts towards its own line, as the running
    quantile does).

    >>> null = RankNull(bins=4)
    >>> genuine_probability(torch.tensor([0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4, 0.6, 0.9]), null)
    tensor([0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.8333, 0.5000, 0.5000, 0.0000, 0.0000])
    """
    null.update(r)
    return 1.0 - null.lfdr(r)


def output_grad_norm(context: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor,
                     temperature: float = 0.05, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row norm of the catalog loss's gradient at the model's output (the unit context vector).

    ``dL/dq = (softmax(q V^T / T) - onehot(t)) V / T``, projected on the tangent of the unit sphere
    (the output is normalised). Katharopoulos & Fleuret (2018) show the gradient norm at the last
    layer upper-bounds (up to a constant) the full per-sample gradient norm, the optimal
    importance-sampling distribution; it is free from the scoring pass.

    >>> items = torch.eye(2)
    >>> g = output_grad_norm(items, items, torch.tensor([0, 1]), temperature=1.0)
    >>> [round(x, 4) for x in g.tolist()]
    [0.2689, 0.2689]
    """
    q = context.float()
    v = item_vecs.float()
    logits = q @ v.T / temperature
    if log_weights is not None:  # a column's probability is that of every item it stands for
        logits = logits + log_weights.to(logits.device)[None, :]
    p = torch.softmax(logits, dim=1)
    p[torch.arange(q.shape[0], device=q.device), target.long()] -= 1.0
    g = p @ v / temperature
    g = g - (g * q).sum(dim=1, keepdim=True) * q
    return g.norm(dim=1)


def reducible_loss(loss: torch.Tensor, reference_loss: torch.Tensor) -> torch.Tensor:
    """RHO-LOSS's score (Mindermann et al., 2022): ``(loss - reference_loss)+``, the part of a sample's
    loss that a small model trained on held-out data *can* remove. Noise is hard for both models, so
    its difference is small; learnt samples are easy for both. NaN counts as 0.

    >>> reducible_loss(torch.tensor([5.0, 9.0, 1.0]), torch.tensor([1.0, 8.5, 2.0]))
    tensor([4.0000, 0.5000, 0.0000])
    """
    return torch.nan_to_num((loss.float() - reference_loss.float()), nan=0.0).clamp_min(0.0)


def estimator_score(name: str, loss: torch.Tensor, *, context: torch.Tensor | None = None,
                    item_vecs: torch.Tensor | None = None, target: torch.Tensor | None = None,
                    reference_loss: torch.Tensor | None = None, line: float | None = None,
                    n_items: int | None = None, temperature: float = 0.05,
                    null: RankNull | None = None, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The raw score of estimator ``name`` for a batch (:func:`click_weights` makes it the weight).
    ``log_weights``: ``item_vecs`` is a sample of the catalogue (the log of how many items each stands for).

    >>> estimator_score("loss_quantile", torch.tensor([2.0, 4.0, 8.0]), line=4.0)
    tensor([0.5000, 1.0000, 0.0183])
    """
    check_estimator(name, "estimator", live=False)
    if name == "uniform":
        return torch.ones_like(loss, dtype=torch.float32)
    if name == "loss":
        return torch.nan_to_num(loss.float(), nan=0.0).clamp_min(0.0)
    if name == "loss_logn":
        n = n_items if n_items is not None else (item_vecs.shape[0] if item_vecs is not None else 0)
        if n < 2:
            raise ValueError("loss_logn needs the catalog size (n_items or item_vecs)")
        return learnability(loss.float() / math.log(n))
    if name == "loss_quantile":
        if line is None:
            raise ValueError("loss_quantile needs the noise line (a RunningQuantile value)")
        return quantile_noise_weight(loss, line)
    if name == "grad_norm":
        if context is None or item_vecs is None or target is None:
            raise ValueError("grad_norm needs context, item_vecs and target")
        return output_grad_norm(context, item_vecs, target, temperature, log_weights)
    if name == "rank_lfdr":
        if context is None or item_vecs is None or target is None or null is None:
            raise ValueError("rank_lfdr needs context, item_vecs, target and the running rank density (RankNull)")
        return genuine_probability(rank_percentile(context, item_vecs, target, log_weights), null)
    if reference_loss is None:
        raise ValueError("reducible_loss needs the reference model's loss")
    return reducible_loss(loss, reference_loss)


class NoiseLines:
    """The running state the click estimators read across batches (one per worker): the loss quantile
    of ``loss_quantile`` and the rank density of ``rank_lfdr``. The worker and the benchmark both
    build it with these defaults, so the benchmark measures the weights the worker applies."""

    def __init__(self, q: float = 0.8, alpha: float = 0.1, bins: int = 50, decay: float = 0.9) -> None:
        self.quantile = RunningQuantile(q=q, alpha=alpha)
        self.ranks = RankNull(bins=bins, decay=decay)


def click_weights(name: str, loss: torch.Tensor, prior_events: torch.Tensor, n_items: int, *,
                  context: torch.Tensor | None = None, item_vecs: torch.Tensor | None = None,
                  target: torch.Tensor | None = None, lines: NoiseLines | None = None,
                  reference_loss: torch.Tensor | None = None, w_min: float = 0.1,
                  w_max: float = 4.0, log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The weights a worker records with a batch of clicks under estimator ``name``: the one definition
    the worker applies and the benchmark measures.

    ``loss_logn`` is :func:`importance_weight` (an absolute number: 1 = a uniform guess over the
    catalog, for a warm user). ``rank_lfdr`` is absolute too: the probability that the click is not a
    random item (so a model no better than chance gives every click the floor, nothing to prefer,
    instead of amplifying small differences). Every other estimator's score is made a weight of mean
    ~1 within the batch (:func:`bounded`). All are multiplied by the cold factor and clipped to
    ``[w_min, w_max]``. ``log_weights``: ``item_vecs`` is a sample of the catalogue
    (the log of how many items each stands for), ``n_items`` still the catalogue's size.

    >>> loss = torch.tensor([math.log(100), math.log(100)])
    >>> click_weights("loss_logn", loss, torch.tensor([0.0, 9.0]), 100)
    tensor([2.0000, 1.1000])
    >>> click_weights("uniform", loss, torch.tensor([0.0, 9.0]), 100)
    tensor([2.0000, 1.1000])
    """
    prior = prior_events.to(loss.device)
    if name == "loss_logn":
        return importance_weight(loss, n_items, prior, w_min=w_min, w_max=w_max)
    lines = lines if lines is not None else NoiseLines()
    line = lines.quantile.update("click", loss) if name == "loss_quantile" else None
    score = estimator_score(name, loss, context=context, item_vecs=item_vecs, target=target, line=line,
                            n_items=n_items, reference_loss=reference_loss, null=lines.ranks,
                            log_weights=log_weights)
    if name != "rank_lfdr":
        score = bounded(score, w_min, w_max)
    return (score * cold_factor(prior)).clamp(w_min, w_max)
