"""Cold-item augmentation at equal optimiser steps (issue 10, item 3), on both real logs.

Protocol (the data steps are :mod:`coldstart.bench.importance`'s: clicks in time order, split 80/20,
item texts and the catalog from the training part only, training samples = the last ``max_train``
training clicks with a context):

1. Catalog: Amazon = every titled item (never-clicked ones included); Best Buy has no titles, so an
   item's text is the queries that led to it in the training part and the catalog is the items with
   such text: an item never clicked before the split has no text and is not in the catalog at all.
2. Test: every test-part click with a context whose item is in the catalog (no user filter, no
   thinning). A test click is *cold* when its item had fewer than 3 clicks before it, counting the
   whole training part and the earlier test clicks (the test part's items are never used for
   training); the rest are *warm*.
3. Real samples weighted as the worker weights them (the default estimator, ``click_weights``), plus,
   per arm, :func:`coldstart.model.augment.augment_samples` for the items with < 3 of those samples:
   ``off``, ``pseudo``, ``neighbours``, ``both`` (one configuration, :class:`AugmentConfig`).
4. The adapter of :mod:`coldstart.bench.estimators` (linear map on frozen MiniLM vectors), trained
   with the trainer's ``draw_batch``/``info_nce`` under its default sampling for ``steps`` steps of
   32 per seed: equal steps, so augmented rows take draws from the real ones.
5. Recall@10 against the whole catalog on the cold, warm and all test clicks; mean ± sd over seeds and
   the ratio of the means to ``off``. Goal: ≥ 1.10x on cold clicks, no loss on all clicks, both logs.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from coldstart.settings import Settings

GOAL_COLD = 1.10
SUBSETS = ("cold", "warm", "all")


def earlier_clicks(clicks: Sequence[Any]) -> dict[int, int]:
    """id(click) -> clicks on its item before it in the time-ordered stream (train and test parts).

    >>> from coldstart.bench.importance import Click
    >>> cs = [Click("u", float(t), i, 0) for t, i in enumerate("aab")]
    >>> [earlier_clicks(cs)[id(c)] for c in cs]
    [0, 1, 0]
    """
    from coldstart.bench.importance import split_by_time

    train, test = split_by_time(clicks)
    seen: Counter[str] = Counter()
    out = {}
    for c in train + test:
        out[id(c)] = seen[c.item]
        seen[c.item] += 1
    return out


def prepare_log(encoder: Any, cache: Any, settings: Settings, name: str, *, max_train: int,
                log: Any = print) -> dict[str, Any]:
    """The protocol's steps 1–3 for one log: samples, their weights, the test clicks and which are cold."""
    import torch

    from coldstart.bench import estimators as est
    from coldstart.bench.importance import load_clicks, prepare, split_by_time
    from coldstart.model.augment import COLD_CLICKS

    clicks, titles = load_clicks(settings, name)
    prep = prepare(name, clicks, titles, max_train=max_train, max_test=10 ** 9, min_prior=0, max_prior=10 ** 9)
    before = earlier_clicks(clicks)
    data = est.encode_condition(encoder, cache, prep)
    cold = torch.tensor([before[id(c)] < COLD_CLICKS for c, _ in prep.test])
    weights = est.estimator_weights(settings.importance_estimator, data["ctx"], data["items"], data["target"],
                                    data["prior"]).float()
    # The catalog's click counts: every training-part click (the trainer's buffer holds more than the
    # last max_train samples), so "cold" for augmentation is the test's "cold" at the split point.
    train_counts = Counter(c.item for c in split_by_time(clicks)[0])
    ids = list(prep.catalog)
    stats = {**prep.stats, "test_cold": int(cold.sum()), "test_warm": int((~cold).sum()),
             "catalog_cold": sum(train_counts[i] < COLD_CLICKS for i in ids),
             "catalog_never_clicked": sum(train_counts[i] == 0 for i in ids),
             "cold_test_items_never_clicked_before": sum(1 for c, _ in prep.test if before[id(c)] == 0),
             "test_clicks_item_not_in_catalog": prep.stats["test_item_not_in_catalog"],
             "estimator": settings.importance_estimator}
    log(f"[{name}] {stats}")
    return {"prep": prep, "data": data, "subsets": {"cold": cold, "warm": ~cold, "all": torch.ones_like(cold)},
            "weights": weights, "contexts": [x for _, x in prep.train], "items": [c.item for c, _ in prep.train],
            "row": {i: r for r, i in enumerate(ids)}, "counts": train_counts, "stats": stats}


def augmented(cond: dict[str, Any], mode: str) -> list[Any]:
    from coldstart.model.augment import augment_samples

    return augment_samples(cond["contexts"], cond["items"], cond["weights"].tolist(), cond["prep"].catalog, mode,
                           item_vectors=cond["data"]["items"], click_counts=cond["counts"])


def summarise_arm(aug: Sequence[Any], per_seed: list[dict[str, float]], real_weights: Any) -> dict[str, Any]:
    arm: dict[str, Any] = {"rows_added": len(aug), "kinds": dict(Counter(a.kind for a in aug)),
                           "items_augmented": len({a.item_id for a in aug}),
                           "mean_weight_added": statistics.fmean([a.weight for a in aug]) if aug else None,
                           "mean_weight_real": float(real_weights.mean()), "runs": per_seed}
    for s in SUBSETS:
        vals = [r[s] for r in per_seed]
        arm[s] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return arm


def add_ratios(arms: dict[str, Any]) -> None:
    off = arms.get("off")
    for arm in arms.values():
        for s in SUBSETS:
            arm[s]["ratio"] = arm[s]["mean"] / off[s]["mean"] if off and off[s]["mean"] > 0 else float("nan")


def run_log(encoder: Any, cache: Any, settings: Settings, name: str, *, steps: int, seeds: Sequence[int],
            modes: Sequence[str], max_train: int, log: Any = print) -> dict[str, Any]:
    """Every arm on one log with the linear adapter (the protocol's step 4)."""
    import torch

    from coldstart.bench import estimators as est

    cond = prepare_log(encoder, cache, settings, name, max_train=max_train, log=log)
    data, subsets, weights, row = cond["data"], cond["subsets"], cond["weights"], cond["row"]
    out: dict[str, Any] = {"stats": cond["stats"], "arms": {}}

    def recall(adapter: torch.Tensor, mask: torch.Tensor) -> float:
        if not bool(mask.any()):
            return float("nan")
        return est.recall_at(adapter, data["test_ctx"][mask], data["items"], data["test_target"][mask])

    eye = torch.eye(data["ctx"].shape[1])
    out["base"] = {s: recall(eye, m) for s, m in subsets.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread beats two fighting on shared cores
    try:
        for mode in modes:
            t0 = time.perf_counter()
            aug = augmented(cond, mode)
            ctx, target, w = data["ctx"], data["target"], weights
            if aug:
                ctx = torch.cat([ctx, cache.encode(encoder, [a.context for a in aug]).float().cpu()])
                target = torch.cat([target, torch.tensor([row[a.item_id] for a in aug])])
                w = torch.cat([w, torch.tensor([a.weight for a in aug])])
            per_seed = []
            for seed in seeds:
                adapter, _ = est.train_adapter(ctx, data["items"], target, w, steps=steps, seed=seed,
                                               sampling=settings.trainer.sampling)
                per_seed.append({s: recall(adapter, m) for s, m in subsets.items()})
            arm = summarise_arm(aug, per_seed, weights)
            out["arms"][mode] = arm
            log(f"[{name}] {mode:10s} +{len(aug)} rows  " + "  ".join(
                f"{s} {arm[s]['mean']:.4f} ± {arm[s]['sd']:.4f}" for s in SUBSETS)
                + f" ({time.perf_counter() - t0:.0f} s)")
    finally:
        torch.set_num_threads(threads)
    add_ratios(out["arms"])
    return out


def run_log_full_encoder(encoder: Any, cache: Any, settings: Settings, name: str, *, steps: int,
                         seeds: Sequence[int], modes: Sequence[str], max_train: int,
                         log: Any = print) -> dict[str, Any]:
    """Every arm on one log with the trainer's own round (``fine_tune`` of the whole encoder, the
    trainer section's learning rate and sampling), scored like the gate (``evaluate``)."""
    import pyarrow as pa

    from coldstart.trainer.gate import evaluate
    from coldstart.trainer.rounds import encode_texts, fine_tune

    cond = prepare_log(encoder, cache, settings, name, max_train=max_train, log=log)
    prep, subsets, weights = cond["prep"], cond["subsets"], cond["weights"]
    ids = list(prep.catalog)
    texts = [prep.catalog[i] for i in ids]

    def scores(model: Any, tokenizer: Any) -> dict[str, float]:
        vecs = encode_texts(model, tokenizer, texts, max_length=encoder.max_length)
        out = {}
        for s, mask in subsets.items():
            keep = [t for t, m in zip(prep.test, mask.tolist()) if m]
            hold = pa.table({"context": [x for _, x in keep], "item_id": [c.item for c, _ in keep],
                             "item_text": [prep.catalog[c.item] for c, _ in keep]})
            out[s] = evaluate(model, tokenizer, hold, prep.catalog, max_length=encoder.max_length,
                              item_vectors=vecs)["recall@10"]
        return out

    out: dict[str, Any] = {"stats": cond["stats"], "arms": {}, "base": scores(encoder, None)}
    cfg = settings.trainer
    for mode in modes:
        t0 = time.perf_counter()
        aug = augmented(cond, mode)
        table = pa.table({"context": cond["contexts"] + [a.context for a in aug],
                          "item_id": cond["items"] + [a.item_id for a in aug],
                          "item_text": [prep.catalog[i] for i in cond["items"]] + [prep.catalog[a.item_id] for a in aug],
                          "weight": weights.tolist() + [a.weight for a in aug]})
        per_seed = []
        for seed in seeds:
            r = fine_tune(encoder, table, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, sampling=cfg.sampling,
                          time_budget_s=1e9, seed=seed)
            per_seed.append(scores(r.module, encoder.tokenizer))
        arm = summarise_arm(aug, per_seed, weights)
        out["arms"][mode] = arm
        log(f"[{name} full encoder] {mode:10s} +{len(aug)} rows  " + "  ".join(
            f"{s} {arm[s]['mean']:.4f}" for s in SUBSETS) + f" ({time.perf_counter() - t0:.0f} s)")
    add_ratios(out["arms"])
    return out


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """Per arm: does it meet the goal (≥ 1.10x off on cold clicks, all clicks not below off) on every log?"""
    modes = [m for m in result["modes"] if m != "off"]
    out = {}
    for mode in modes:
        per_log = {}
        for name in result["datasets"]:
            arm = result[name]["arms"][mode]
            per_log[name] = {"cold_ratio": arm["cold"]["ratio"], "all_ratio": arm["all"]["ratio"],
                             "met": arm["cold"]["ratio"] >= GOAL_COLD and arm["all"]["ratio"] >= 1.0}
        out[mode] = {"logs": per_log, "met": all(v["met"] for v in per_log.values())}
    return out


def bench_augment(settings: Settings, *, steps: int = 600, seeds: Sequence[int] = (0, 1, 2),
                  datasets: Sequence[str] = ("bestbuy", "amazon"),
                  modes: Sequence[str] = ("off", "pseudo", "neighbours", "both"), max_train: int = 4000,
                  max_length: int = 32, full_encoder: bool = False, log: Any = print) -> dict[str, Any]:
    """``coldstart bench augment``: Recall@10 on cold / warm / all test clicks per augmentation arm
    (``full_encoder``: the trainer's round on the whole encoder instead of the adapter; slow on a CPU)."""
    import dataclasses

    import torch

    from coldstart.model.augment import AugmentConfig
    from coldstart.model.encoder import EmbeddingCache, TextEncoder

    t0 = time.perf_counter()
    encoder = TextEncoder(settings.model_path or None, device=settings.device, max_length=max_length)
    cache = EmbeddingCache(200_000)

    result: dict[str, Any] = {"datasets": list(datasets), "modes": list(modes),
                              "protocol": {"steps": steps, "batch_size": 32, "seeds": list(seeds),
                                           "max_train": max_train, "sampling": settings.trainer.sampling,
                                           "config": dataclasses.asdict(AugmentConfig()),
                                           "model": "full encoder (trainer round)" if full_encoder
                                           else "linear adapter on frozen base MiniLM embeddings",
                                           "device": str(encoder.device), "threads": torch.get_num_threads()}}
    for name in datasets:
        result[name] = (run_log_full_encoder if full_encoder else run_log)(encoder, cache, settings, name, steps=steps, seeds=seeds, modes=modes,
                               max_train=max_train, log=log)
    if "off" in modes:
        result["verdict"] = verdict(result)
    result["seconds"] = time.perf_counter() - t0
    result["columns"] = COLUMNS
    result["rows"] = rows(result)
    return result


COLUMNS = ("log", "arm", "rows added", "R@10 cold (mean ± sd)", "× off", "R@10 warm", "R@10 all", "× off")


def rows(result: dict[str, Any]) -> list[tuple]:
    out = []
    for name in result["datasets"]:
        r = result[name]
        st = r["stats"]
        out.append((f"{name} (n cold {st['test_cold']}, all {st['test_n']})", "base (no training)", "-",
                    f"{r['base']['cold']:.4f}", "-", f"{r['base']['warm']:.4f}", f"{r['base']['all']:.4f}", "-"))
        for mode, arm in r["arms"].items():
            out.append((name, mode, str(arm["rows_added"]), f"{arm['cold']['mean']:.4f} ± {arm['cold']['sd']:.4f}",
                        f"{arm['cold']['ratio']:.3f}", f"{arm['warm']['mean']:.4f} ± {arm['warm']['sd']:.4f}",
                        f"{arm['all']['mean']:.4f} ± {arm['all']['sd']:.4f}", f"{arm['all']['ratio']:.3f}"))
    return out


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"cold-item augmentation at equal steps (goal: cold ≥ {GOAL_COLD}x off, all ≥ 1.00x)")
    for col in result["columns"]:
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(*[str(v) for v in r])
    console = Console()
    console.print(table)
    for mode, v in result.get("verdict", {}).items():
        console.print(f"{mode}: goal {'met' if v['met'] else 'NOT met'} ("
                      + ", ".join(f"{n} cold {x['cold_ratio']:.3f}x, all {x['all_ratio']:.3f}x" for n, x in v["logs"].items())
                      + ")")


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m coldstart.bench.augment``: the cold-item augmentation benchmark with its sizes as options."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m coldstart.bench.augment", description=main.__doc__)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--max-train", type=int, default=4000)
    ap.add_argument("--datasets", default="bestbuy,amazon")
    ap.add_argument("--modes", default="off,pseudo,neighbours,both")
    ap.add_argument("--full-encoder", action="store_true",
                    help="train the whole encoder with the trainer's round (its lr, sampling) instead of the adapter")
    ap.add_argument("--out", type=Path, default=Path("reports/bench_augment.json"))
    a = ap.parse_args(argv)
    res = bench_augment(Settings.from_env(), steps=a.steps, seeds=tuple(range(a.seeds)),
                        datasets=a.datasets.split(","), modes=a.modes.split(","), max_train=a.max_train,
                        full_encoder=a.full_encoder)
    print_table(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=str))
    print(f"figures in {a.out}")
    return res


if __name__ == "__main__":
    main()
