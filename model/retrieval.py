"""Scoring the catalog for many users at once, and item vectors for catalogs without titles.

A user's score for an item blends personal similarity with catalog popularity::

    score[u, i] = (1 - a[u]) * cos(profile[u], item[i]) + a[u] * popularity[i]

with ``a`` from :func:`coldstart.model.profile.popularity_blend` (1.0 for a user with no events).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["item_text_vector", "popularity_scores", "score_items", "top_k"]


def popularity_scores(counts: torch.Tensor, top_count: float | None = None) -> torch.Tensor:
    """``log1p(counts) / log1p(max(counts))`` in ``[0, 1]``; all zeros when nothing was counted.
    ``top_count``: the catalogue's largest count when ``counts`` are some of its items only.

    The log keeps a few blockbuster items from flattening everything else to zero.

    >>> popularity_scores(torch.tensor([0.0, 1.0, 3.0]))
    tensor([0.0000, 0.5000, 1.0000])
    >>> popularity_scores(torch.zeros(2))
    tensor([0., 0.])
    >>> popularity_scores(torch.tensor([1.0]), top_count=3.0)
    tensor([0.5000])
    """
    logs = torch.log1p(counts.float().clamp_min(0.0))
    if logs.numel() == 0:
        return logs
    if top_count is not None:
        # A host number already: divided here, in Python, four torch calls fewer (each hands the GIL
        # over: issue 11). The log in float64 instead of float32: within a rounding of the tensor path.
        top_log = math.log1p(max(top_count, 0.0))
        return logs / top_log if top_log > 0 else torch.zeros_like(logs)
    top = logs.max()
    # Divide by a safe denominator instead of branching on a device scalar (no host sync on the GPU).
    return torch.where(top > 0, logs / top.clamp_min(1e-12), torch.zeros_like(logs))


def score_items(profiles: torch.Tensor, item_vecs: torch.Tensor, popularity: torch.Tensor,
                pop_weight: torch.Tensor) -> torch.Tensor:
    """``(1 - a[:, None]) * (profiles @ item_vecs.T) + a[:, None] * popularity[None, :]``: ``[u, n]``.

    >>> items = torch.eye(2)
    >>> score_items(torch.tensor([[1.0, 0.0]]), items, torch.tensor([0.0, 1.0]), torch.tensor([0.25]))
    tensor([[0.7500, 0.2500]])
    """
    a = pop_weight.to(profiles.device, profiles.dtype)[:, None]
    return (1.0 - a) * (profiles @ item_vecs.T) + a * popularity.to(profiles.dtype)[None, :]


def top_k(scores: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k' = min(k, n)`` best scores per row and their column indices, best first.

    Excluded entries (``exclude[u, i]`` true: already seen, not yet valid, ...) get ``-inf`` and sort
    last; they appear in a row only when that row has fewer than ``k'`` allowed items, and then with a
    score of ``-inf`` — callers drop entries whose score is not finite.

    >>> s = torch.tensor([[0.1, 0.9, 0.5]])
    >>> top_k(s, 2, exclude=torch.tensor([[False, True, False]]))
    (tensor([[0.5000, 0.1000]]), tensor([[2, 0]]))
    """
    n = scores.shape[-1]
    k = max(0, min(k, n))
    if exclude is not None:
        scores = scores.masked_fill(exclude.to(scores.device), float("-inf"))
    values, indices = torch.topk(scores, k, dim=-1)
    return values, indices


def item_text_vector(query_vecs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """An untitled item's vector: the normalised, count-weighted mean of the queries that led to it.

    For catalogs without titles (the Best Buy log): an item is what people searched for before
    clicking it. Zero total count gives a zero vector.

    >>> item_text_vector(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 1]))
    tensor([0.9487, 0.3162])
    """
    w = counts.to(query_vecs.device, query_vecs.dtype).clamp_min(0.0)
    return F.normalize((w[:, None] * query_vecs).sum(dim=0), p=2, dim=0)
