"""A ranker learned from the stream: a linear softmax model over per-candidate signals (issue 9).

Every candidate item gets a row of :data:`FEATURES` (semantic similarities, stream statistics,
popularity, newness, and interactions with the user's event count). The score is ``features @ w``.
The weights start at values that reproduce the fixed blend the worker served before (so a fresh
worker is never worse than it) and are then learned online, prequentially: for each click, *before*
it is applied, the features of every candidate are computed as they were when the click happened and
one AdaGrad step of the softmax cross-entropy (the clicked item against all other candidates, the
exact form of "clicked vs sampled negatives") moves the weights. Where titles say little, the
weights of the cosine features fall and the stream statistics take over, with no per-log tuning.

Pure torch, no Kafka: the worker calls it from its batch path, the evaluation from its in-process run.
"""

from __future__ import annotations

import math

import torch

__all__ = ["FEATURES", "LinearRanker", "feature_matrix", "initial_weights"]

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
)


def initial_weights() -> torch.Tensor:
    """The weights that reproduce the fixed blend (personal + popularity + query memory).

    >>> dict(zip(FEATURES[:3], initial_weights()[:3].tolist()))
    {'profile_cos_blend': 1.0, 'popularity_blend': 1.0, 'query_memory': 1.0}
    """
    w = torch.zeros(len(FEATURES))
    w[0] = w[1] = w[2] = 1.0
    return w


def feature_matrix(signals: dict[str, torch.Tensor], n_events: float, pop_weight: float) -> torch.Tensor:
    """Stack the per-item signals into ``[n_items, len(FEATURES)]``.

    ``signals`` holds ``[n]`` tensors named ``profile_cos``, ``last_cos``, ``query_cos``, ``popularity``,
    ``query_memory``, ``transition``, ``coclick``, ``newness``; missing ones are zeros. ``pop_weight`` is
    a(n) of :func:`coldstart.model.profile.popularity_blend`.

    >>> f = feature_matrix({"profile_cos": torch.tensor([0.5, 0.0]), "popularity": torch.tensor([0.0, 1.0])},
    ...                    n_events=1, pop_weight=0.25)
    >>> (f @ initial_weights()).tolist()
    [0.375, 0.25]
    """
    n = next(iter(signals.values())).shape[0]
    ref = next(iter(signals.values()))
    zeros = torch.zeros(n, device=ref.device)
    get = lambda name: signals.get(name, zeros).to(ref.device, torch.float32)  # noqa: E731
    logn = math.log1p(max(float(n_events), 0.0))
    cos = get("profile_cos")
    pop = get("popularity")
    cols = [
        (1.0 - pop_weight) * cos, pop_weight * pop, get("query_memory"), get("last_cos"), get("query_cos"),
        get("transition"), get("coclick"), pop, get("newness"), cos * logn, get("transition") * logn, pop * logn,
    ]
    return torch.stack(cols, dim=1)


class LinearRanker:
    """``score = features @ w``, learned online with AdaGrad on the softmax cross-entropy of each click.

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

    def __init__(self, weights: torch.Tensor | None = None, lr: float = 0.05, l2: float = 1e-4,
                 max_abs: float = 50.0) -> None:
        self.weights = (initial_weights() if weights is None else weights).clone().float()
        self.lr = lr
        self.l2 = l2
        self.max_abs = max_abs  # a bound on every weight: one odd stretch of the stream cannot run away
        self.grad_sq = torch.full_like(self.weights, 1e-2)
        self.steps = 0

    def score(self, features: torch.Tensor) -> torch.Tensor:
        return features @ self.weights.to(features.device)

    def learn_one(self, features: torch.Tensor, target: int, mask: torch.Tensor | None = None) -> float:
        """One step on ``-log softmax(score)[target]`` over the candidates (``mask``: rows allowed).
        Returns the loss before the step."""
        w = self.weights.to(features.device)
        scores = features @ w
        if mask is not None:
            scores = scores.masked_fill(~mask.to(features.device), float("-inf"))
        logp = torch.log_softmax(scores, dim=0)
        p = logp.exp()
        grad = (p[:, None] * torch.nan_to_num(features)).sum(0) - features[target]  # E_p[f] - f_target
        grad = grad.cpu() + self.l2 * self.weights
        self.grad_sq += grad * grad
        self.weights = (self.weights - self.lr * grad / self.grad_sq.sqrt()).clamp(-self.max_abs, self.max_abs)
        self.steps += 1
        return float(-logp[target])

    def contributions(self, features: torch.Tensor) -> torch.Tensor:
        """``features * w``: how much each signal adds to each candidate's score (explanations)."""
        return features * self.weights.to(features.device)[None, :]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights.clone(), "grad_sq": self.grad_sq.clone(),
                "steps": torch.tensor([self.steps])}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], **kwargs) -> "LinearRanker":
        r = cls(state["weights"], **kwargs)
        r.grad_sq = state["grad_sq"].clone().float()
        r.steps = int(state["steps"][0])
        return r
