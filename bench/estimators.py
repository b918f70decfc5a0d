"""Importance estimators side by side at equal optimiser steps (issue 10), on both real logs.

Protocol (the data steps are those of :mod:`coldstart.bench.importance`: time split 80/20, item texts
from the training part only, 20% of training clicks replaced by random catalog items for the noise
condition, test = clicks of users with 1–5 prior events):

1. Encode the catalog, the training contexts and the test contexts once with the base MiniLM.
2. Score every training sample with each estimator of :data:`coldstart.model.importance.ESTIMATORS`
   through :func:`coldstart.model.importance.click_weights`, the function the worker applies (cold
   factor, bounds and running state with the worker's defaults included), in worker-sized batches
   of 512 in time order; ``reducible_loss``'s reference is trained 2-fold: a model trained on one
   half of the samples scores the other half, so no sample is scored by a model that saw it. An
   ``oracle`` that knows which clicks were replaced (weight floor for them) is the ceiling of what
   any weight can do; it is a reference, not an estimator.
3. Train, for each estimator and seed, the same *adapter* (a 384×384 linear map on both towers,
   initialised to the identity, on top of the frozen base embeddings) with the trainer's own
   ``draw_batch`` and ``info_nce``, for ``steps`` steps of ``batch_size``, under each of the trainer's
   weighted sampling modes (``importance``: draws ∝ weight with the 1/(Np) correction, unbiased, so a
   weight changes the variance and not the objective; ``weighted_loss``: uniform draws, loss × weight,
   the only one of the two where a low weight removes a sample's pull); ``uniform`` is the control. The adapter stands in for the full encoder so that 5 estimators × 3 seeds ×
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

from coldstart.model.importance import (ESTIMATORS, NoiseLines, bounded, catalog_loss, click_weights,
                                        cold_factor)
from coldstart.trainer.rounds import draw_batch, info_nce

SCORING_BATCH = 512  # the worker's default batch size
REFERENCE_STEPS = 150
SAMPLINGS = ("importance", "weighted_loss")


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
                      prior: torch.Tensor, reference: torch.Tensor | None = None,
                      noisy: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights of estimator ``name`` as the worker records them (``click_weights``, one
    ``NoiseLines`` carried over batches), scored in time order in worker-sized batches.

    ``oracle`` (bench only) knows ``noisy``: genuine clicks score 1, replaced ones 0, then the same
    bounds and cold factor as every estimator.
    """
    loss = catalog_loss(ctx, item_vecs, target)
    lines = NoiseLines()
    out = []
    for start in range(0, loss.numel(), SCORING_BATCH):
        part = slice(start, start + SCORING_BATCH)
        if name == "oracle":
            assert noisy is not None, "the oracle needs the injected-noise labels"
            w = (bounded((~noisy[part]).float()) * cold_factor(prior[part])).clamp(0.1, 4.0)
        else:
            w = click_weights(name, loss[part], prior[part], item_vecs.shape[0], context=ctx[part],
                              item_vecs=item_vecs, target=target[part], lines=lines,
                              reference_loss=None if reference is None else reference[part])
        out.append(w)
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
            "prior": torch.tensor([float(c.prior) for c, _ in prep.train]),
            "noisy": torch.tensor([c.noisy for c, _ in prep.train], dtype=torch.bool)}


def weight_summary(w: torch.Tensor, noisy: torch.Tensor) -> dict[str, Any]:
    """Mean and deciles of the weights of injected-noise vs genuine samples."""
    def describe(x: torch.Tensor) -> dict[str, float]:
        if not x.numel():
            return {}
        q = torch.quantile(x.float(), torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9])).tolist()
        return {"mean": float(x.mean()), "p10": q[0], "p25": q[1], "p50": q[2], "p75": q[3], "p90": q[4]}
    return {"genuine": describe(w[~noisy]), "noisy": describe(w[noisy])}


def arms(estimators: Sequence[str] = ESTIMATORS, samplings: Sequence[str] = SAMPLINGS,
         oracle: bool = True) -> list[tuple[str, str]]:
    """(estimator, sampling) pairs measured: uniform once (its own sampling), every other estimator
    (and the oracle) under each weighted sampling mode.

    >>> arms(("uniform", "loss"), ("importance",))
    [('uniform', 'uniform'), ('loss', 'importance'), ('oracle', 'importance')]
    """
    out = [("uniform", "uniform")] if "uniform" in estimators else []
    names = [e for e in estimators if e != "uniform"] + (["oracle"] if oracle else [])
    return out + [(e, s) for e in names for s in samplings]


def arm_label(estimator: str, sampling: str) -> str:
    return estimator if sampling == "uniform" else f"{estimator} ({sampling})"


def run_estimators(data: dict[str, torch.Tensor], *, steps: int, seeds: Sequence[int], batch_size: int = 32,
                   eval_every: int = 50, estimators: Sequence[str] = ESTIMATORS,
                   samplings: Sequence[str] = SAMPLINGS, oracle: bool = True, log: Any = print,
                   label: str = "") -> dict[str, Any]:
    """Recall@10 curves (per seed) and weight distributions of every arm on one condition."""
    items = data["items"]

    def evaluate(adapter: torch.Tensor) -> float:
        return recall_at(adapter, data["test_ctx"], items, data["test_target"])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster than two fighting on shared cores
    try:
        return _run_estimators(data, evaluate, steps=steps, seeds=seeds, batch_size=batch_size,
                               eval_every=eval_every, arms_=arms(estimators, samplings, oracle), log=log,
                               label=label)
    finally:
        torch.set_num_threads(threads)


def _run_estimators(data: dict[str, torch.Tensor], evaluate: Any, *, steps: int, seeds: Sequence[int],
                    batch_size: int, eval_every: int, arms_: Sequence[tuple[str, str]], log: Any,
                    label: str) -> dict[str, Any]:
    ctx, items, target = data["ctx"], data["items"], data["target"]
    prior = data.get("prior", torch.zeros(target.numel()))
    out: dict[str, Any] = {"base": evaluate(torch.eye(ctx.shape[1]))}
    names = list(dict.fromkeys(e for e, _ in arms_))
    reference = reference_losses(ctx, items, target) if "reducible_loss" in names else None
    weights = {e: estimator_weights(e, ctx, items, target, prior, reference, data["noisy"]) for e in names}
    for name, sampling in arms_:
        t0 = time.perf_counter()
        w = weights[name]
        curves = [train_adapter(ctx, items, target, w, steps=steps, seed=s, batch_size=batch_size,
                                sampling=sampling, evaluate=evaluate, eval_every=eval_every)[1] for s in seeds]
        finals = [c[-1] for c in curves]
        key = arm_label(name, sampling)
        out[key] = {"estimator": name, "sampling": sampling, "curves": curves, "final": finals,
                    "mean": statistics.fmean(finals),
                    "sd": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                    "weights": weight_summary(w, data["noisy"])}
        wn, wg = out[key]["weights"]["noisy"], out[key]["weights"]["genuine"]
        log(f"[{label}] {key:30s} R@10 {out[key]['mean']:.4f} ± {out[key]['sd']:.4f}  mean weight "
            f"noisy {wn.get('mean', math.nan):.2f} / genuine {wg['mean']:.2f} ({time.perf_counter() - t0:.0f} s)")
    out["arms"] = [arm_label(e, s) for e, s in arms_]
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


def summarise(per: dict[str, dict[str, Any]], dataset: str, eval_every: int) -> list[tuple]:
    """Table rows, one per arm: clean Recall@10 and its ratio to uniform, steps to uniform's final
    recall, the noisy Recall@10, the drop (± its standard error over seeds) and its ratio to uniform's
    drop, and the mean weight of injected-noise vs genuine clicks."""
    clean, dirty = per.get("noise_0"), per.get("noise_0.2")
    rows = []
    u_clean = clean["uniform"]["mean"]
    u_drop = u_clean - dirty["uniform"]["mean"] if dirty else math.nan
    for key in clean["arms"]:
        c = clean[key]
        lift = c["mean"] / u_clean if u_clean > 0 else math.nan
        reach = steps_to_reach(mean_curve(c["curves"]), u_clean, eval_every)
        row = [f"{dataset} {key}", f"{c['mean']:.4f} ± {c['sd']:.4f}", f"{lift:.3f}",
               f"{reach:g}" if math.isfinite(reach) else "never"]
        if dirty:
            d = dirty[key]
            drop = c["mean"] - d["mean"]
            se = math.sqrt(c["sd"] ** 2 / len(c["final"]) + d["sd"] ** 2 / len(d["final"]))
            ratio = drop / u_drop if u_drop > 0 else math.nan
            wn, wg = d["weights"]["noisy"], d["weights"]["genuine"]
            row += [f"{d['mean']:.4f} ± {d['sd']:.4f}", f"{drop:+.4f} ± {se:.4f}",
                    f"{ratio:.2f}" if math.isfinite(ratio) else "n/a",
                    f"{wn['mean']:.2f} / {wg['mean']:.2f}"]
        rows.append(tuple(row))
    return rows


COLUMNS = ("arm (estimator, sampling)", "R@10 clean (mean ± sd)", "× uniform", "steps to uniform's final",
           "R@10 20% noise", "drop (± se)", "drop / uniform's drop", "mean weight noisy / genuine")


def plot_curves(result: dict[str, Any], path: Any, eval_every: int) -> None:
    """One panel per (dataset, noise): mean Recall@10 against steps, one line per estimator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, k) for d in result["datasets"] for k in result[d] if k.startswith("noise_")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (dataset, condition) in zip(axes[0], panels):
        cond = result[dataset][condition]
        names = list(dict.fromkeys(cond[arm]["estimator"] for arm in cond["arms"]))
        for arm in cond["arms"]:  # colour = estimator, dashed = importance sampling, solid = weighted_loss
            curve = mean_curve(cond[arm]["curves"])
            style = "--" if cond[arm]["sampling"] == "importance" else "-"
            ax.plot([eval_every * (i + 1) for i in range(len(curve))], curve, style, label=arm, linewidth=1,
                    color=colours(names.index(cond[arm]["estimator"]) % 10))
        ax.axhline(cond["base"], color="grey", linestyle=":", label="base")
        ax.set_title(f"{dataset}, {condition.replace('noise_', 'noise ')}")
        ax.set_xlabel("optimiser steps")
        ax.set_ylabel("Recall@10")
    axes[0][0].legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
