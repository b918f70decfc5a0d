"""Ranking metrics for one relevant item per request, with bootstrap confidence intervals.

Every prequential request has exactly one relevant item (the one the user clicked next), so a request
is summed up by the 1-based ``rank`` of that item in the recorded top-K list, or ``None`` for a miss.
All metrics are means over requests of a per-request value, which is what the bootstrap resamples.

>>> ranks = [1, 3, None, 2]
>>> recall_at_k(ranks, 10), round(ndcg_at_k(ranks, 10), 4), round(mrr(ranks), 4)
(0.75, 0.5327, 0.4583)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

GROUPS = ("0", "1", "2", "3-5", "6+")
COLD_GROUPS = ("1", "2", "3-5")  # "users with 1-5 prior events" in the goals


def prior_group(n_prior: int) -> str:
    """The prior-event group of a request: 0, 1, 2, 3-5 or 6+.

    >>> [prior_group(n) for n in (0, 1, 2, 3, 5, 6, 40)]
    ['0', '1', '2', '3-5', '3-5', '6+', '6+']
    """
    if n_prior < 0:
        raise ValueError(f"a number of prior events cannot be negative: {n_prior}")
    if n_prior <= 2:
        return str(n_prior)
    return "3-5" if n_prior <= 5 else "6+"


def rank_of(ranking: Sequence[str], item_id: str) -> int | None:
    """1-based position of ``item_id`` in ``ranking``, or ``None`` when it is not there.

    >>> rank_of(["a", "b", "c"], "b"), rank_of(["a"], "z")
    (2, None)
    """
    for position, candidate in enumerate(ranking, start=1):
        if candidate == item_id:
            return position
    return None


def hit(rank: int | None, k: int) -> float:
    """1.0 when the item is in the top ``k``.

    >>> hit(3, 10), hit(11, 10), hit(None, 10)
    (1.0, 0.0, 0.0)
    """
    return 1.0 if rank is not None and rank <= k else 0.0


def dcg(rank: int | None, k: int) -> float:
    """NDCG of one request with one relevant item: ``1 / log2(rank + 1)`` inside the top ``k`` (the
    ideal DCG is 1, the relevant item first).

    >>> dcg(1, 10), round(dcg(3, 10), 4), dcg(12, 10)
    (1.0, 0.5, 0.0)
    """
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def reciprocal(rank: int | None) -> float:
    """``1 / rank``, 0 for a miss (MRR over the recorded list, i.e. MRR@K).

    >>> reciprocal(4), reciprocal(None)
    (0.25, 0.0)
    """
    return 1.0 / rank if rank is not None else 0.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def recall_at_k(ranks: Sequence[int | None], k: int = 10) -> float:
    """Share of requests whose item is in the top ``k`` (hit rate; NaN without requests).

    >>> recall_at_k([1, 10, 11, None], 10)
    0.5
    """
    return _mean([hit(r, k) for r in ranks])


def ndcg_at_k(ranks: Sequence[int | None], k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per request.

    >>> round(ndcg_at_k([1, 3], 10), 4)
    0.75
    """
    return _mean([dcg(r, k) for r in ranks])


def mrr(ranks: Sequence[int | None]) -> float:
    """Mean reciprocal rank over the recorded lists.

    >>> mrr([1, 2, None, 4])
    0.4375
    """
    return _mean([reciprocal(r) for r in ranks])


def coverage(rankings: Iterable[Sequence[str]], catalog_size: int, k: int = 10) -> float:
    """Share of the catalog that appears in at least one top-``k`` list.

    >>> coverage([["a", "b"], ["b", "c"]], catalog_size=6)
    0.5
    """
    if catalog_size <= 0:
        return float("nan")
    shown = {item for ranking in rankings for item in list(ranking)[:k]}
    return len(shown) / catalog_size


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` of the mean of ``values`` (NaNs when there are none).

    Deterministic for a given ``seed``. With all values equal the interval collapses to that value.

    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0)
    >>> low, high = bootstrap_ci([0.0, 1.0] * 50, seed=1)
    >>> 0.38 < low < 0.5 < high < 0.62
    True
    """
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # Chunks keep the index matrix small for long runs (n_boot x n would be 1000 x 100k).
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = data[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarize(ranks: Sequence[int | None], k: int = 10, n_boot: int = 1000, seed: int = 0) -> dict:
    """Recall@k, NDCG@k and MRR with bootstrap 95% intervals, and the number of requests and hits.

    >>> s = summarize([1, None, 2, None], k=10, n_boot=200)
    >>> s["n"], s["hits"], s["recall"], s["misses"]
    (4, 2, 0.5, 2)
    >>> len(s["recall_ci"])
    2
    """
    hits = [hit(r, k) for r in ranks]
    gains = [dcg(r, k) for r in ranks]
    recips = [reciprocal(r) for r in ranks]
    return {
        "n": len(ranks),
        "hits": int(sum(hits)),
        "misses": len(ranks) - int(sum(hits)),
        "recall": _mean(hits),
        "recall_ci": list(bootstrap_ci(hits, n_boot=n_boot, seed=seed)),
        "ndcg": _mean(gains),
        "ndcg_ci": list(bootstrap_ci(gains, n_boot=n_boot, seed=seed)),
        "mrr": _mean(recips),
        "mrr_ci": list(bootstrap_ci(recips, n_boot=n_boot, seed=seed)),
    }
