"""The evaluation gate: a candidate is published only if it does not lose to the serving model.

Both models are scored on the same holdout, the most recent ``fraction`` of the buffer by event time
(excluded from that round's training): each holdout context is ranked against the whole catalog the
trainer knows, and we report recall@10 and nDCG@10 of the clicked item (one relevant item per row, so
nDCG is ``1 / log2(rank + 2)`` inside the top 10, else 0).

The margin a candidate may lose by is ``tolerance + z * SE``, where SE is the standard error of the
per-row difference (candidate − serving) over the same holdout rows: on a small holdout one click
weighs more than any fixed tolerance (86 rows: 0.012 a click against 0.005), and a refusal there says
nothing about the candidate. ``z = 0`` is the fixed-tolerance gate.

>>> decide({"recall@10": 0.30, "ndcg@10": 0.20, "n": 100}, {"recall@10": 0.31, "ndcg@10": 0.20, "n": 100}, 0.02)
Decision(publish=True, reason='candidate within margin (tolerance 0.02): recall@10 0.3000 vs 0.3100, ndcg@10 0.2000 vs 0.2000')
>>> decide({"recall@10": 0.20, "ndcg@10": 0.20, "n": 100}, {"recall@10": 0.31, "ndcg@10": 0.20, "n": 100}, 0.02).publish
False
>>> se = {"recall@10": 0.03, "ndcg@10": 0.02}
>>> decide({"recall@10": 0.279, "ndcg@10": 0.15, "n": 86}, {"recall@10": 0.291, "ndcg@10": 0.16, "n": 86},
...        0.005, standard_errors=se, z=1.0).publish
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import torch

from coldstart.evaluation.metrics import ndcg_at_k, recall_at_k
from coldstart.trainer.rounds import encode_texts

METRICS = ("recall@10", "ndcg@10")


@dataclass(frozen=True)
class Decision:
    publish: bool
    reason: str

    @property
    def outcome(self) -> str:
        """Metric label: ``published`` or ``refused``."""
        return "published" if self.publish else "refused"


def split_holdout(samples: pa.Table, fraction: float, min_holdout: int = 1) -> tuple[pa.Table, pa.Table]:
    """(train, holdout): the holdout is the most recent ``fraction`` of rows by event ``ts``.

    >>> t = pa.table({"ts": [5.0, 1.0, 4.0, 2.0, 3.0]})
    >>> train, hold = split_holdout(t, 0.4)
    >>> train.column("ts").to_pylist(), hold.column("ts").to_pylist()
    ([1.0, 2.0, 3.0], [4.0, 5.0])
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    ordered = samples.take(pc.sort_indices(samples, [("ts", "ascending")]))
    n = ordered.num_rows
    n_hold = min(n, max(min_holdout, math.ceil(n * fraction))) if n else 0
    return ordered.slice(0, n - n_hold), ordered.slice(n - n_hold)


def with_context(samples: pa.Table) -> pa.Table:
    """The samples that have a context: a user's first click with no query before it has none (the
    worker still sends it, its weight and loss are counted), and an empty string is no training input
    nor a fair holdout row -- every model ranks the same items for it.

    >>> with_context(pa.table({"context": ["halo", "", "  ", "red stapler"]})).column("context").to_pylist()
    ['halo', 'red stapler']
    """
    if samples.num_rows == 0:
        return samples
    return samples.filter(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(samples.column("context"))), 0))


def catalog_from(samples: pa.Table) -> dict[str, str]:
    """item_id -> item_text (the latest text seen per item) from a sample table."""
    ordered = samples.take(pc.sort_indices(samples, [("ts", "ascending")]))
    return dict(zip(ordered.column("item_id").to_pylist(), ordered.column("item_text").to_pylist()))


def evaluate(model: Any, tokenizer: Any, holdout: pa.Table, catalog_texts: dict[str, str], *,
             k: int = 10, **kwargs: Any) -> dict[str, float]:
    """Recall@k and nDCG@k of ``holdout`` (context -> item_id) ranked over the whole catalog (the
    arguments are :func:`holdout_ranks`'s)."""
    if holdout.num_rows == 0:
        return {"recall@10": 0.0, "ndcg@10": 0.0, "n": 0}
    return ranking_metrics(holdout_ranks(model, tokenizer, holdout, catalog_texts, **kwargs), k)


@torch.no_grad()
def holdout_ranks(model: Any, tokenizer: Any, holdout: pa.Table, catalog_texts: dict[str, str], *,
                  max_length: int = 64, batch_size: int = 256,
                  item_vectors: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each ``holdout`` row's clicked item (context -> item_id) over the whole catalog.

    ``model`` is a TextEncoder (``tokenizer`` may then be None) or a bare transformers module such as a
    round's trained copy (encoded on its own device). A holdout item missing from the catalog is
    added with its own ``item_text``, so every row has its target among the candidates.
    ``item_vectors`` (rows in ``catalog_texts`` order, made by this model) skips encoding the catalog
    when the caller has them already; every holdout item must then be in the catalog.
    """
    contexts = holdout.column("context").to_pylist()
    targets = holdout.column("item_id").to_pylist()
    catalog = dict(catalog_texts)
    if item_vectors is None:
        for item_id, text in zip(targets, holdout.column("item_text").to_pylist()):
            catalog.setdefault(item_id, text)
    ids = list(catalog)
    row = {item_id: i for i, item_id in enumerate(ids)}
    missing = [t for t in targets if t not in row]
    if missing:
        raise ValueError(f"{len(missing)} holdout items are not in the catalog (e.g. {missing[0]!r})")
    if item_vectors is None:
        items = encode_texts(model, tokenizer, [catalog[i] for i in ids], max_length=max_length,
                             batch_size=batch_size)
    else:
        items = item_vectors
    queries = encode_texts(model, tokenizer, contexts, max_length=max_length, batch_size=batch_size)
    queries = queries.to(items.device)
    target_rows = torch.tensor([row[t] for t in targets], device=items.device)
    return ranks_of(queries, items, target_rows)


def ranks_of(queries: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """0-based rank of each target item among all items; ties count against the target, so a collapsed
    model that scores every item alike ranks last rather than first."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start:start + chunk] @ items.T
        tgt = targets[start:start + chunk]
        target_scores = scores.gather(1, tgt[:, None])
        out.append((scores >= target_scores).sum(dim=1) - 1)
    return torch.cat(out)


def ranking_metrics(ranks: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Recall@k and nDCG@k of 0-based catalog ranks, computed by the evaluation's metrics module (one
    implementation for the gate and ``coldstart eval``, which count ranks from 1).

    >>> ranking_metrics(torch.tensor([0, 1, 12]))
    {'recall@10': 0.6666666666666666, 'ndcg@10': 0.5436432511904858, 'n': 3}
    """
    one_based = [int(r) + 1 for r in ranks.tolist()]
    return {f"recall@{k}": recall_at_k(one_based, k), f"ndcg@{k}": ndcg_at_k(one_based, k), "n": len(one_based)}


def per_row_metrics(ranks: torch.Tensor, k: int = 10) -> dict[str, torch.Tensor]:
    """Each row's recall@k (hit or not) and nDCG@k from its 0-based rank; their means are
    :func:`ranking_metrics`.

    >>> {m: v.tolist() for m, v in per_row_metrics(torch.tensor([0, 12])).items()}
    {'recall@10': [1.0, 0.0], 'ndcg@10': [1.0, 0.0]}
    """
    ranks = ranks.double()
    hit = ranks < k
    return {f"recall@{k}": hit.double(), f"ndcg@{k}": torch.where(hit, 1.0 / torch.log2(ranks + 2), 0.0)}


def paired_standard_errors(candidate_ranks: torch.Tensor, serving_ranks: torch.Tensor, k: int = 10) -> dict[str, float]:
    """Standard error of the mean per-row difference (candidate − serving) of each gate metric, the two
    models ranked on the same holdout rows: rows where both hit or both miss add nothing, so two
    models that differ in a handful of rows get a small SE, a reshuffle of many rows a large one.

    >>> se = paired_standard_errors(torch.tensor([0, 20, 0, 20]), torch.tensor([20, 0, 0, 20]))
    >>> round(se["recall@10"], 4)
    0.4082
    >>> paired_standard_errors(torch.tensor([3]), torch.tensor([30]))["recall@10"]
    0.0
    """
    cand, serv = per_row_metrics(candidate_ranks, k), per_row_metrics(serving_ranks, k)
    n = int(candidate_ranks.numel())
    if n < 2:
        return {m: 0.0 for m in cand}
    return {m: float((cand[m] - serv[m]).std() / math.sqrt(n)) for m in cand}


def decide(candidate: dict[str, float], serving: dict[str, float], tolerance: float, *,
           standard_errors: dict[str, float] | None = None, z: float = 0.0) -> Decision:
    """Publish only if neither recall@10 nor nDCG@10 is worse than serving by more than the margin,
    ``tolerance + z * standard_errors[metric]`` (``z = 0`` or no SE: ``tolerance`` alone)."""
    if candidate.get("n", 0) == 0:
        return Decision(False, "empty holdout: nothing to judge the candidate on")
    se = standard_errors or {}
    margin = {m: tolerance + z * se.get(m, 0.0) for m in METRICS}
    worse = [m for m in METRICS if candidate[m] < serving[m] - margin[m]]
    summary = ", ".join(f"{m} {candidate[m]:.4f} vs {serving[m]:.4f}" for m in METRICS)
    how = f"tolerance {tolerance}" + (f" + {z} SE: " + ", ".join(f"{m} {margin[m]:.4f}" for m in METRICS)
                                      if z and se else "")
    if worse:
        return Decision(False, f"candidate worse than serving by more than the margin ({how}) on "
                               f"{'/'.join(worse)}: {summary}")
    return Decision(True, f"candidate within margin ({how}): {summary}")
