"""Importance estimators side by side at equal optimiser steps (issue 10), on both real logs.

Protocol (the data steps are those of :mod:`coldstart.bench.importance`: time split 80/20, item texts
from the training part only, 20% of training clicks replaced by random catalog items for the noise
condition, test = clicks of users with 1–5 prior events):

1. Encode the catalog, the training contexts and the test contexts once with the base MiniLM.
2. Score every training sample with each estimator of :data:`coldstart.model.importance.ESTIMATORS`,
   in worker-sized batches of 512 in time order (the running quantile is per event type and carries
   over batches, as in a worker); ``reducible_loss``'s reference is trained 2-fold: a model trained
   on one half of the samples scores the other half, so no sample is scored by a model that saw it.
3. Train, for each estimator and seed, the same *adapter* (a 384×384 linear map on both towers,
   initialised to the identity, on top of the frozen base embeddings) with the trainer's own
   ``draw_batch`` (importance sampling with the 1/(Np) correction) and ``info_nce``, for ``steps``
   steps of ``batch_size``. The adapter stands in for the full encoder so that 5 estimators × 3 seeds ×
   2 logs × 2 noise levels fit in minutes on two shared CPU cores; the figures are about the
   *sampling*, which is identical in the full round (``coldstart.trainer.rounds.fine_tune``).
4. Recall@10 on the test clicks against the whole catalog every ``eval_every`` steps (the learning
   curves); mean and spread over seeds; ratios against uniform measured in the same run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from coldstart.model.importance import (ESTIMATORS, RunningQuantile, bounded, catalog_loss,
                                        estimator_score)
from coldstart.trainer.rounds import draw_batch, info_nce

SCORING_BATCH = 512  # the worker's default batch size
QUANTILE = 0.8  # noise line: the running 80th percentile of the click loss
REFERENCE_STEPS = 150


def train_adapter(ctx: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, *,
                  steps: int, seed: int, batch_size: int = 32, lr: float = 2e-3, sampling: str = "importance",
                  evaluate: Any = None, eval_every: int = 50) -> tuple[torch.Tensor, list[float]]:
    """(adapter matrix, Recall@10 curve): a linear map on frozen embeddings trained by InfoNCE."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    adapter = torch.nn.Parameter(torch.eye(ctx.shape[1]))
    optimizer = torch.optim.Adam([adapter], lr=lr)
    curve = []
    for step in range(steps):
        idx, mult = draw_batch(weights, batch_size, sampling, generator)
        q = F.normalize(ctx[idx] @ adapter, dim=1)
        v = F.normalize(item_vecs[target[idx]] @ adapter, dim=1)
        loss = info_nce(q, v, target[idx].tolist(), mult)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if evaluate is not None and (step + 1) % eval_every == 0:
            curve.append(evaluate(adapter.detach()))
    return adapter.detach(), curve


def recall_at(adapter: torch.Tensor, ctx: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor,
              k: int = 10) -> float:
    """Share of rows whose target item is among the ``k`` nearest catalog items after the adapter."""
    q = F.normalize(ctx @ adapter, dim=1)
    v = F.normalize(item_vecs @ adapter, dim=1)
    top = (q @ v.T).topk(min(k, v.shape[0]), dim=1).indices
    return float((top == target[:, None]).any(dim=1).float().mean())


def reference_losses(ctx: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor,
                     steps: int = REFERENCE_STEPS) -> torch.Tensor:
    """RHO-LOSS's irreducible-loss model, 2-fold: each half is scored by an adapter trained on the other."""
    n = target.numel()
    ref = torch.empty(n)
    fold = torch.arange(n) % 2
    for part in (0, 1):
        train, score = fold != part, fold == part
        adapter, _ = train_adapter(ctx[train], item_vecs, target[train], torch.ones(int(train.sum())),
                                   steps=steps, seed=99, sampling="uniform")
        with torch.no_grad():
            q = F.normalize(ctx[score] @ adapter, dim=1)
            ref[score] = catalog_loss(q, F.normalize(item_vecs @ adapter, dim=1), target[score])
    return ref


def estimator_weights(name: str, ctx: torch.Tensor, item_vecs: torch.Tensor, target: torch.Tensor,
                      reference: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights of estimator ``name``, scored in time order in worker-sized batches."""
    loss = catalog_loss(ctx, item_vecs, target)
    quantile = RunningQuantile(q=QUANTILE, alpha=0.3)
    out = []
    for start in range(0, loss.numel(), SCORING_BATCH):
        part = slice(start, start + SCORING_BATCH)
        line = quantile.update("click", loss[part])
        score = estimator_score(name, loss[part], context=ctx[part], item_vecs=item_vecs, target=target[part],
                                reference_loss=None if reference is None else reference[part], line=line)
        out.append(bounded(score))
    return torch.cat(out).double()


def encode_condition(encoder: Any, cache: Any, prep: Any) -> dict[str, torch.Tensor]:
    """The base embeddings one prepared (dataset, noise) condition needs."""
    ids = list(prep.catalog)
    row = {i: r for r, i in enumerate(ids)}
    return {"items": cache.encode(encoder, [prep.catalog[i] for i in ids]).float().cpu(),
            "ctx": cache.encode(encoder, [x for _, x in prep.train]).float().cpu(),
            "target": torch.tensor([row[c.item] for c, _ in prep.train]),
            "test_ctx": cache.encode(encoder, [x for _, x in prep.test]).float().cpu(),
            "test_target": torch.tensor([row[c.item] for c, _ in prep.test]),
            "noisy": torch.tensor([c.noisy for c, _ in prep.train], dtype=torch.bool)}


def weight_summary(w: torch.Tensor, noisy: torch.Tensor) -> dict[str, Any]:
    """Mean and quartiles of the weights of injected-noise vs genuine samples."""
    def describe(x: torch.Tensor) -> dict[str, float]:
        if not x.numel():
            return {}
        q = torch.quantile(x.float(), torch.tensor([0.25, 0.5, 0.75])).tolist()
        return {"mean": float(x.mean()), "p25": q[0], "p50": q[1], "p75": q[2]}
    return {"genuine": describe(w[~noisy]), "noisy": describe(w[noisy])}


def run_estimators(data: dict[str, torch.Tensor], *, steps: int, seeds: Sequence[int], batch_size: int = 32,
                   eval_every: int = 50, estimators: Sequence[str] = ESTIMATORS, log: Any = print,
                   label: str = "") -> dict[str, Any]:
    """Recall@10 curves (per seed) and weight distributions of every estimator on one condition."""
    ctx, items, target = data["ctx"], data["items"], data["target"]

    def evaluate(adapter: torch.Tensor) -> float:
        return recall_at(adapter, data["test_ctx"], items, data["test_target"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster than two fighting on shared cores
    try:
        return _run_estimators(data, evaluate, steps=steps, seeds=seeds, batch_size=batch_size,
                               eval_every=eval_every, estimators=estimators, log=log, label=label)
    finally:
        torch.set_num_threads(threads)


def _run_estimators(data: dict[str, torch.Tensor], evaluate: Any, *, steps: int, seeds: Sequence[int],
                    batch_size: int, eval_every: int, estimators: Sequence[str], log: Any,
                    label: str) -> dict[str, Any]:
    ctx, items, target = data["ctx"], data["items"], data["target"]
    out: dict[str, Any] = {"base": evaluate(torch.eye(ctx.shape[1]))}
    reference = reference_losses(ctx, items, target) if "reducible_loss" in estimators else None
    for name in estimators:
        t0 = time.perf_counter()
        w = estimator_weights(name, ctx, items, target, reference)
        curves = [train_adapter(ctx, items, target, w, steps=steps, seed=s, batch_size=batch_size,
                                sampling="uniform" if name == "uniform" else "importance",
                                evaluate=evaluate, eval_every=eval_every)[1] for s in seeds]
        finals = [c[-1] for c in curves]
        out[name] = {"curves": curves, "final": finals, "mean": statistics.fmean(finals),
                     "sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                     "weights": weight_summary(w, data["noisy"])}
        log(f"[{label}] {name:15s} R@10 {out[name]['mean']:.4f} ± {out[name]['sd']:.4f} "
            f"weights {out[name]['weights']} ({time.perf_counter() - t0:.0f} s)")
    return out


def steps_to_reach(curve_mean: Sequence[float], goal: float, eval_every: int) -> float:
    """First step count whose mean Recall@10 reaches ``goal`` (inf if never).

    >>> steps_to_reach([0.1, 0.3, 0.5], 0.3, 50)
    100
    >>> steps_to_reach([0.1], 0.3, 50)
    inf
    """
    for k, value in enumerate(curve_mean):
        if value >= goal:
            return (k + 1) * eval_every
    return math.inf


def mean_curve(curves: Sequence[Sequence[float]]) -> list[float]:
    return [statistics.fmean(col) for col in zip(*curves)]


def summarise(per: dict[str, dict[str, Any]], dataset: str, eval_every: int,
              estimators: Sequence[str] = ESTIMATORS) -> list[tuple]:
    """Table rows: per estimator, clean lift over uniform, steps to uniform's final recall, noise drop ratio."""
    clean, dirty = per.get("noise_0"), per.get("noise_0.2")
    rows = []
    u_clean = clean["uniform"]["mean"]
    u_drop = u_clean - dirty["uniform"]["mean"] if dirty else math.nan
    goal = u_clean
    for name in estimators:
        c = clean[name]
        lift = c["mean"] / u_clean if u_clean > 0 else math.nan
        reach = steps_to_reach(mean_curve(c["curves"]), goal, eval_every)
        row = [f"{dataset} {name}", f"{c['mean']:.4f} ± {c['sd']:.4f}", f"{lift:.3f}",
               f"{reach:g}" if math.isfinite(reach) else "never"]
        if dirty:
            d = dirty[name]
            drop = c["mean"] - d["mean"]
            ratio = drop / u_drop if u_drop > 0 else math.nan
            wn, wg = d["weights"]["noisy"], d["weights"]["genuine"]
            row += [f"{d['mean']:.4f} ± {d['sd']:.4f}", f"{drop:+.4f}",
                    f"{ratio:.2f}" if math.isfinite(ratio) else "n/a",
                    f"{wn['mean']:.2f} / {wg['mean']:.2f}"]
        rows.append(tuple(row))
    return rows


COLUMNS = ("estimator", "R@10 clean (mean ± sd)", "× uniform", "steps to uniform's final",
           "R@10 20% noise", "drop", "drop / uniform's drop", "mean weight noisy / genuine")


def plot_curves(result: dict[str, Any], path: Any, eval_every: int) -> None:
    """One panel per (dataset, noise): mean Recall@10 against steps, one line per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, k) for d in result["datasets"] for k in result[d]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (dataset, key) in zip(axes[0], panels):
        cond = result[dataset][key]
        for name in result["estimators"]:
            curve = mean_curve(cond[name]["curves"])
            ax.plot([eval_every * (i + 1) for i in range(len(curve))], curve, label=name)
        ax.axhline(cond["base"], color="grey", linestyle=":", label="base")
        ax.set_title(f"{dataset}, {key.replace('noise_', 'noise ')}")
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel("Recall@10")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
