"""A user's profile: the recency-weighted, normalised sum of the vectors of their recent events.

All functions take many users at once (one batched update per batch, on the device): the worker gathers the
recent events of every user touched by a batch, and one :func:`profile_vectors` call makes all their
profiles on the device. A user with few events leans on the catalog's popularity
(:func:`popularity_blend`), so even a user with no events gets a sensible list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from coldstart.model.importance import plausibility

__all__ = ["popularity_blend", "popularity_blend_of", "profile_vectors", "profile_weights", "recency_weights", "top_contributors"]


def recency_weights(ts: torch.Tensor, now: float, half_life_s: float) -> torch.Tensor:
    """``0.5 ** (max(now - ts, 0) / half_life_s)``: 1 for an event now, 1/2 one half-life ago.

    Events from the future (clock skew) count as now. Pass epoch seconds as float64 (or times relative
    to a recent reference): float32 resolves today's epoch seconds only to 128 s.

    >>> recency_weights(torch.tensor([100.0, 90.0, 80.0, 120.0]), now=100.0, half_life_s=10.0)
    tensor([1.0000, 0.5000, 0.2500, 1.0000])
    """
    age = (now - ts.to(torch.float64)).clamp_min(0.0)
    return torch.pow(0.5, age / half_life_s).to(torch.float32)


def profile_vectors(event_vecs: torch.Tensor, weights: torch.Tensor, owner: torch.Tensor,
                    n_profiles: int) -> torch.Tensor:
    """Per-owner weighted sums of event vectors, L2-normalised: ``[n_profiles, d]``.

    ``owner[i]`` is the profile row of event ``i``; a row with no events (or zero total) stays zero.

    >>> vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> profile_vectors(vecs, torch.tensor([1.0, 1.0, 2.0]), torch.tensor([0, 0, 2]), 3)
    tensor([[0.7071, 0.7071],
            [0.0000, 0.0000],
            [0.0000, 1.0000]])
    """
    d = event_vecs.shape[1]
    sums = torch.zeros(n_profiles, d, dtype=event_vecs.dtype, device=event_vecs.device)
    sums.index_add_(0, owner.to(event_vecs.device).long(),
                    event_vecs * weights.to(event_vecs.device, event_vecs.dtype)[:, None])
    # normalize divides by max(norm, eps), so all-zero rows stay exactly zero.
    return F.normalize(sums, p=2, dim=1)


def popularity_blend_of(n_events: float, prior_weight: float = 0.5, half_events: float = 2.0) -> float:
    """:func:`popularity_blend` of one count, in plain Python: the ranker's learning asks for it once per
    click, where three tensor calls on a one-element tensor cost 10% of the step.

    >>> [round(popularity_blend_of(n), 4) for n in (0, 1, 2, 6)]
    [1.0, 0.3333, 0.25, 0.125]
    """
    n = max(float(n_events), 0.0)
    return 1.0 if n == 0 else prior_weight * half_events / (half_events + n)


def popularity_blend(n_events: torch.Tensor, prior_weight: float = 0.5,
                     half_events: float = 2.0) -> torch.Tensor:
    """Weight of the popularity prior in a user's scores, by their number of events.

    ``1.0`` at ``n = 0`` (a user we know nothing about gets the popular items), then
    ``prior_weight * half_events / (half_events + n)``: ``prior_weight / 2`` after ``half_events``
    events, fading towards pure personalisation. The step from 1.0 to ``prior_weight`` at the first
    event is deliberate: one event is already worth following.

    >>> popularity_blend(torch.tensor([0, 1, 2, 6]))
    tensor([1.0000, 0.3333, 0.2500, 0.1250])
    """
    n = n_events.float().clamp_min(0.0)
    blended = prior_weight * half_events / (half_events + n)
    return torch.where(n == 0, torch.ones_like(n), blended)


def top_contributors(event_vecs: torch.Tensor, weights: torch.Tensor, item_vec: torch.Tensor,
                     k: int = 3) -> list[tuple[int, float]]:
    """The user's events that pull an item up the most: ``(event index, share)``, largest first.

    An event's contribution is ``weight * cos(event, item)``; the share is its part of the total
    positive contribution. Events that pull the item down are never listed.

    >>> vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> top_contributors(vecs, torch.tensor([3.0, 1.0, 5.0]), torch.tensor([0.6, 0.8]), k=3)
    [(0, 0.692...), (1, 0.307...)]
    """
    return top_contributors_of_each(event_vecs, weights, item_vec[None], k)[0]


def top_contributors_of_each(event_vecs: torch.Tensor, weights: torch.Tensor, item_vecs: torch.Tensor,
                             k: int = 3) -> list[list[tuple[int, float]]]:
    """:func:`top_contributors` for each row of ``item_vecs`` ``[m, d]``, in one product (an answer
    explains its ten items at once).

    >>> vecs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> top_contributors_of_each(vecs, torch.tensor([1.0, 1.0]), torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), k=2)
    [[(0, 1.0)], []]
    """
    m = item_vecs.shape[0]
    if event_vecs.shape[0] == 0 or k <= 0:
        return [[] for _ in range(m)]
    contrib = weights.to(event_vecs.device, event_vecs.dtype)[:, None] * (event_vecs @ item_vecs.to(event_vecs.dtype).T)
    positive = contrib.clamp_min(0.0)  # [events, m]
    totals = positive.sum(dim=0).tolist()
    vals, idx = torch.topk(positive, min(k, positive.shape[0]), dim=0)
    out = []
    for j, (col_vals, col_idx) in enumerate(zip(vals.T.tolist(), idx.T.tolist())):
        total = totals[j]
        out.append([(int(i), v / total) for v, i in zip(col_vals, col_idx) if v > 0.0] if total > 0.0 else [])
    return out


SEARCH_PROFILE_WEIGHT = 0.7
# Only clicks the model finds more than twice as unlikely as a uniform guess (in normalised loss)
# are damped in a profile: on the Amazon log the zero-shot model sits above the importance noise
# line (1.25) even for genuine clicks, and damping those distorted the profile mean (-2 points R@10).
PROFILE_NOISE_MARGIN = 1.0


def profile_weights(kinds: Sequence[str], losses: Sequence[float], n_items: int) -> list[float]:
    """How much each event counts in its user's profile, fixed when it is scored (one tensor call).

    A click counts fully unless the current model finds it far less likely than a uniform guess
    (normalised loss beyond 1 + PROFILE_NOISE_MARGIN: a likely mis-click, :func:`plausibility`, the
    RHO-LOSS side of the importance). A click not scored yet (loss 0: its item had no vector) counts
    fully. A search counts 0.7 of a click: it states an intent, a click confirms one.

    >>> [round(w, 3) for w in profile_weights(["click", "click", "search"], [0.5, 12.0, 9.0], 100)]
    [1.0, 0.546, 0.7]
    """
    if not kinds:
        return []
    plausible = plausibility(torch.tensor(losses, dtype=torch.float32), n_items, PROFILE_NOISE_MARGIN).tolist()
    return [p if kind == "click" else SEARCH_PROFILE_WEIGHT for kind, p in zip(kinds, plausible)]
