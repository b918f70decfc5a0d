"""Importance sampling versus uniform sampling at the same number of fine-tuning steps (issue 3).

Protocol (one run per dataset and noise level; CPU-sized; measured once with seed 0 unless told):

1. Replay the real log (Best Buy Xbox search→click; Amazon Office clicks) in time order. Each click
   carries its user's *prior events*: that user's searches and clicks before it in the whole stream
   (what the worker's profile ``n_events`` holds when the click arrives). Split the clicks by time:
   the first 80% are the training part, the last 20% the test part; nothing of the test part is used
   for training, for item texts or for importance scores.
2. Item text: Amazon = the product title; Best Buy (no titles) = the queries that led to clicks on
   the item in the training part, the 3 most frequent, joined. The catalog is the items known at the
   split point (Best Buy: items with learned text; Amazon: the whole title catalog). With noise
   ``s`` > 0, a share ``s`` of the *training* clicks get their item replaced by a uniformly drawn
   other catalog item before anything is derived from them (item texts, histories, importance).
3. Training samples (context → clicked item text): context = the query (Best Buy) or the user's
   previous 3 item titles, most recent first, joined by " ; " (Amazon); the most recent
   ``max_train`` training clicks with a context. Each is scored like the worker does, by the *base*
   model: ``catalog_loss`` over the split-point catalog in one batched pass, then
   ``importance_weight(loss, n_items, prior_events)``.
4. Conditions at the same ``steps`` and ``batch_size``: base model (no training), ``uniform``,
   ``importance`` (draws ∝ weight, loss times the normalised 1/(N p) correction), both through
   ``coldstart.trainer.rounds.fine_tune`` with the same seed and learning rate.
5. Test: test-part clicks whose user has 1–5 prior events, whose item is in the catalog and that
   have a context (same definitions as 3; evenly thinned to ``max_test``), ranked against the whole
   catalog by cosine with each encoder (``coldstart.trainer.gate.evaluate``): Recall@10 (and nDCG@10).

Figures: relative lift of importance over uniform (target ≥ +10% on clean logs) and the drop of each
from clean to 20% noise (target: importance loses at most a third as much as uniform).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from coldstart.settings import Settings

HISTORY_ITEMS = 3
TEXT_QUERIES = 3
TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class Click:
    """One click of the replayed stream; ``query`` is None where the log has none (Amazon)."""

    user: str
    ts: float
    item: str
    prior: int  # the user's events (searches and clicks) before this click, over the whole stream
    query: str | None = None
    noisy: bool = False  # its item was replaced by a random one


# --------------------------------------------------------------------------------- protocol helpers
def clicks_with_prior(events: Iterable[Any]) -> list[Click]:
    """Clicks of a time-ordered event stream, each with its user's count of earlier events.

    Searches and clicks both count (items do not), as in the worker's profile state.
    """
    seen: Counter[str] = Counter()
    out = []
    for e in events:
        if e.type not in ("search", "click"):
            continue
        v = e.value
        user = str(v["user_id"])
        if e.type == "click":
            out.append(Click(user=user, ts=float(v["ts"]), item=str(v["item_id"]), prior=seen[user],
                             query=(v.get("query") or None)))
        seen[user] += 1
    return out


def split_by_time(clicks: Sequence[Click], train_fraction: float = TRAIN_FRACTION) -> tuple[list[Click], list[Click]]:
    """(train, test): the first ``train_fraction`` of clicks by time, then the rest (stable on ties)."""
    ordered = sorted(clicks, key=lambda c: c.ts)
    cut = int(round(len(ordered) * train_fraction))
    return ordered[:cut], ordered[cut:]


def learned_item_texts(train: Iterable[Click], top: int = TEXT_QUERIES) -> dict[str, str]:
    """item -> its ``top`` most frequent queries among ``train`` clicks, joined (Best Buy item text).

    Ties go to the query seen first. Only the clicks given are read, so passing the training part
    keeps every test-period query out of the texts.
    """
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for c in train:
        if c.query:
            counts[c.item][c.query.strip().lower()] += 1
    return {item: " ; ".join(q for q, _ in cnt.most_common(top)) for item, cnt in counts.items()}


def inject_noise(clicks: Sequence[Click], share: float, catalog: Sequence[str], seed: int = 0) -> list[Click]:
    """A copy of ``clicks`` where exactly ``round(share * n)`` clicks have a random *other* catalog item.

    The query, user, time and prior count stay; replaced clicks are marked ``noisy``.
    """
    n = len(clicks)
    k = int(round(share * n))
    if k == 0 or not clicks:
        return list(clicks)
    if len(catalog) < 2:
        raise ValueError("noise needs a catalog of at least 2 items")
    rng = random.Random(seed)
    chosen = set(rng.sample(range(n), k))
    out = []
    for i, c in enumerate(clicks):
        if i in chosen:
            item = c.item
            while item == c.item:
                item = catalog[rng.randrange(len(catalog))]
            c = replace(c, item=item, noisy=True)
        out.append(c)
    return out


def history_contexts(clicks: Sequence[Click], titles: dict[str, str], n: int = HISTORY_ITEMS) -> list[str]:
    """Per click (time order): the user's previous ``n`` item titles, most recent first, " ; "-joined."""
    past: dict[str, list[str]] = defaultdict(list)
    out = []
    for c in clicks:
        prev = past[c.user]
        out.append(" ; ".join(titles[i] for i in reversed(prev[-n:]) if i in titles))
        prev.append(c.item)
        del prev[:-n]
    return out


@dataclass
class Prepared:
    """Everything one (dataset, noise) condition needs, built by :func:`prepare`."""

    dataset: str
    noise: float
    catalog: dict[str, str]  # item -> text, the split-point catalog
    train: list[tuple[Click, str]]  # (click, context), the training samples (most recent last)
    test: list[tuple[Click, str]]  # (click, context), the evaluated test clicks
    stats: dict[str, Any]


def prepare(dataset: str, clicks: list[Click], titles: dict[str, str] | None, *, noise: float = 0.0,
            seed: int = 0, max_train: int = 4000, max_test: int = 1500, min_prior: int = 1,
            max_prior: int = 5) -> Prepared:
    """Split, inject noise into the training part, build item texts, contexts and the test set.

    ``titles`` is the item title catalog (Amazon); None means item text is learned from queries.
    """
    train, test = split_by_time(clicks)
    if titles is None:
        clean_texts = learned_item_texts(train)
    else:
        clean_texts = dict(titles)
    train = inject_noise(train, noise, sorted(clean_texts), seed=seed + 1000) if noise > 0 else train
    catalog = learned_item_texts(train) if titles is None else dict(titles)
    stream = train + test  # already in time order
    if titles is None:
        contexts = [c.query or "" for c in stream]
    else:
        contexts = history_contexts(stream, catalog)
    train_ctx = [(c, x) for c, x in zip(stream[:len(train)], contexts[:len(train)])
                 if x and c.item in catalog]
    train_ctx = train_ctx[-max_train:]
    eligible = [(c, x) for c, x in zip(stream[len(train):], contexts[len(train):])
                if min_prior <= c.prior <= max_prior and x]
    in_catalog = [(c, x) for c, x in eligible if c.item in catalog]
    if len(in_catalog) > max_test:  # evenly thinned: keeps the whole test period
        step = len(in_catalog) / max_test
        in_catalog = [in_catalog[int(i * step)] for i in range(max_test)]
    stats = {"clicks": len(clicks), "train_clicks": len(train), "test_clicks": len(test),
             "train_samples": len(train_ctx), "noisy_samples": sum(c.noisy for c, _ in train_ctx),
             "test_eligible": len(eligible), "test_item_not_in_catalog": len(eligible) - sum(
                 c.item in catalog for c, _ in eligible), "test_n": len(in_catalog),
             "catalog": len(catalog)}
    return Prepared(dataset, noise, catalog, train_ctx, in_catalog, stats)


# ------------------------------------------------------------------------------------------ loading
def load_clicks(settings: Settings, dataset: str) -> tuple[list[Click], dict[str, str] | None]:
    from coldstart.replay import open_dataset

    events = list(open_dataset(dataset, settings.shared_data))
    titles = {e.value["item_id"]: e.value["title"] for e in events if e.type == "item"} or None
    return clicks_with_prior(events), titles


# -------------------------------------------------------------------------------------- measurement
def score_samples(encoder: Any, cache: Any, prep: Prepared) -> tuple[Any, Any]:
    """(samples table in the buffer SCHEMA, base catalog vectors): importance as the worker scores it."""
    import pyarrow as pa
    import torch

    from coldstart.model.importance import catalog_loss, importance_weight
    from coldstart.trainer.buffer import SCHEMA

    ids = list(prep.catalog)
    row = {i: r for r, i in enumerate(ids)}
    item_vecs = cache.encode(encoder, [prep.catalog[i] for i in ids])
    ctx = cache.encode(encoder, [x for _, x in prep.train])
    target = torch.tensor([row[c.item] for c, _ in prep.train], device=item_vecs.device)
    loss = catalog_loss(ctx, item_vecs, target)
    prior = torch.tensor([float(c.prior) for c, _ in prep.train], device=item_vecs.device)
    weight = importance_weight(loss, len(ids), prior)
    rows = [{"sample_id": f"{prep.dataset}-{k}", "user_id": c.user, "context": x, "item_id": c.item,
             "item_text": prep.catalog[c.item], "weight": float(w), "loss": float(lo),
             "prior_events": int(c.prior), "model_version": encoder.version, "ts": float(c.ts),
             "received_ts": float(c.ts)}
            for k, ((c, x), w, lo) in enumerate(zip(prep.train, weight.tolist(), loss.tolist()))]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    noisy = torch.tensor([c.noisy for c, _ in prep.train], device=weight.device)
    prep.stats.update({
        "weight_mean": float(weight.mean()),
        "weight_mean_clean": float(weight[~noisy].mean()) if (~noisy).any() else math.nan,
        "weight_mean_noisy": float(weight[noisy].mean()) if noisy.any() else math.nan,
        "norm_loss_mean_clean": float(loss[~noisy].mean() / math.log(len(ids))) if (~noisy).any() else math.nan,
        "norm_loss_mean_noisy": float(loss[noisy].mean() / math.log(len(ids))) if noisy.any() else math.nan,
    })
    return table, item_vecs


def holdout_table(prep: Prepared) -> Any:
    import pyarrow as pa

    return pa.table({"context": [x for _, x in prep.test], "item_id": [c.item for c, _ in prep.test],
                     "item_text": [prep.catalog[c.item] for c, _ in prep.test]})


def run_condition(encoder: Any, cache: Any, prep: Prepared, *, steps: int, batch_size: int, lr: float,
                  seeds: Sequence[int], log: Any = print) -> dict[str, Any]:
    """Recall@10 / nDCG@10 of base, uniform and importance for one prepared (dataset, noise)."""
    from coldstart.trainer.gate import evaluate
    from coldstart.trainer.rounds import fine_tune

    t0 = time.perf_counter()
    samples, base_items = score_samples(encoder, cache, prep)
    hold = holdout_table(prep)
    out: dict[str, Any] = {"stats": prep.stats, "score_s": time.perf_counter() - t0}
    out["base"] = evaluate(encoder, None, hold, prep.catalog, max_length=encoder.max_length,
                           item_vectors=base_items)
    log(f"[{prep.dataset} noise={prep.noise:.0%}] {prep.stats} base {out['base']}")
    for sampling in ("uniform", "importance"):
        runs = []
        for seed in seeds:
            r = fine_tune(encoder, samples, steps=steps, batch_size=batch_size, lr=lr, sampling=sampling,
                          time_budget_s=1e9, seed=seed)
            m = evaluate(r.module, encoder.tokenizer, hold, prep.catalog, max_length=encoder.max_length)
            runs.append({**m, "seed": seed, "train_s": r.seconds, "samples_per_s": r.samples_per_s,
                         "first_loss": r.first_loss, "last_loss": r.last_loss})
            log(f"[{prep.dataset} noise={prep.noise:.0%}] {sampling} seed {seed}: {runs[-1]}")
        out[sampling] = {"recall@10": sum(x["recall@10"] for x in runs) / len(runs),
                         "ndcg@10": sum(x["ndcg@10"] for x in runs) / len(runs), "n": runs[0]["n"],
                         "runs": runs}
    return out


def _rel(a: float, b: float) -> float:
    return a / b - 1.0 if b > 0 else math.nan


def bench_importance(settings: Settings, *, steps: int = 600, seeds: Sequence[int] = (0, 1, 2, 3, 4),
                     noise: Sequence[float] = (0.0, 0.2), datasets: Sequence[str] = ("bestbuy", "amazon"),
                     max_train: int = 4000, max_test: int = 1500, max_length: int = 32, eval_every: int = 100,
                     samplings: Sequence[str] | None = None, estimators: Sequence[str] | None = None,
                     noise_seed: int = 0, out_dir: Any = "reports", log: Any = print) -> dict:
    """``coldstart bench importance``: every estimator side by side (``coldstart.bench.estimators``),
    under each weighted sampling mode of the trainer, with uniform sampling as the control.

    Writes the learning curves to ``out_dir/importance_curves.png``; returns ``{"rows": [...], ...}``.
    About 15 minutes on two shared CPU cores with the defaults (encoding included).
    """
    from pathlib import Path

    import torch

    from coldstart.bench import estimators as est
    from coldstart.model.encoder import EmbeddingCache, TextEncoder

    samplings = tuple(samplings or est.SAMPLINGS)
    estimators = tuple(estimators or est.ESTIMATORS)
    t_start = time.perf_counter()
    encoder = TextEncoder(settings.model_path or None, device=settings.device, max_length=max_length)
    cache = EmbeddingCache(200_000)
    result: dict[str, Any] = {"datasets": list(datasets), "estimators": list(estimators),
                              "samplings": list(samplings),
                              "protocol": {"steps": steps, "seeds": list(seeds), "noise": list(noise),
                                           "eval_every": eval_every, "noise_seed": noise_seed,
                                           "max_train": max_train, "max_test": max_test,
                                           "model": "linear adapter on frozen base MiniLM embeddings",
                                           "device": str(encoder.device), "threads": torch.get_num_threads()}}
    rows: list[tuple] = []
    for name in datasets:
        clicks, titles = load_clicks(settings, name)
        per: dict[str, Any] = {}
        for s in noise:
            prep = prepare(name, clicks, titles, noise=s, seed=noise_seed, max_train=max_train,
                           max_test=max_test)
            data = est.encode_condition(encoder, cache, prep)
            per[f"noise_{s:g}"] = est.run_estimators(data, steps=steps, seeds=seeds, eval_every=eval_every,
                                                     estimators=estimators, samplings=samplings,
                                                     log=log, label=f"{name} noise={s:.0%}")
            per[f"noise_{s:g}"]["stats"] = prep.stats
        result[name] = per
        rows += est.summarise(per, name, eval_every)
    result["seconds"] = time.perf_counter() - t_start
    result["columns"] = est.COLUMNS
    result["rows"] = rows
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    est.plot_curves(result, out / "importance_curves.png", eval_every)
    return result


def bench_full_encoder(settings: Settings, *, steps: int = 100, batch_size: int = 32, lr: float = 5e-5,
                     seeds: Sequence[int] = (0,), noise: Sequence[float] = (0.0, 0.2),
                     datasets: Sequence[str] = ("bestbuy", "amazon"), max_train: int = 4000,
                     max_test: int = 1500, max_length: int = 32, log: Any = print) -> dict:
    """The benchmark of the module docstring (full encoder, uniform vs importance; long on a CPU)."""
    import torch

    from coldstart.model.encoder import EmbeddingCache, TextEncoder

    t_start = time.perf_counter()
    encoder = TextEncoder(settings.model_path or None, device=settings.device, max_length=max_length)
    cache = EmbeddingCache(200_000)
    result: dict[str, Any] = {"protocol": {"steps": steps, "batch_size": batch_size, "lr": lr,
                                           "seeds": list(seeds), "noise": list(noise),
                                           "max_train": max_train, "max_test": max_test,
                                           "max_length": max_length, "device": str(encoder.device),
                                           "threads": torch.get_num_threads()}}
    rows: list[tuple] = []
    for name in datasets:
        clicks, titles = load_clicks(settings, name)
        per: dict[str, Any] = {}
        for s in noise:
            prep = prepare(name, clicks, titles, noise=s, seed=seeds[0], max_train=max_train, max_test=max_test)
            per[f"noise_{s:g}"] = run_condition(encoder, cache, prep, steps=steps, batch_size=batch_size,
                                                lr=lr, seeds=seeds, log=log)
        figures: dict[str, Any] = {"conditions": per}
        for s in noise:
            c = per[f"noise_{s:g}"]
            b, u, i = c["base"]["recall@10"], c["uniform"]["recall@10"], c["importance"]["recall@10"]
            lift = _rel(i, u)
            figures[f"lift_noise_{s:g}"] = lift
            rows.append((f"{name} R@10, {s:.0%} noise (n={c['base']['n']})", f"importance {i:.4f}",
                         f"uniform {u:.4f} · base {b:.4f}", f"{1 + lift:.3f}",
                         ">= 1.10 (clean)" if s == 0 else "-"))
        if 0.0 in noise and any(s > 0 for s in noise):
            s = max(noise)
            clean, dirty = per["noise_0"], per[f"noise_{s:g}"]
            drops = {k: clean[k]["recall@10"] - dirty[k]["recall@10"] for k in ("base", "uniform", "importance")}
            ratio = drops["importance"] / drops["uniform"] if drops["uniform"] > 0 else math.nan
            figures.update({"drop": drops, "drop_ratio": ratio,
                            "target_lift_met": figures["lift_noise_0"] >= 0.10,
                            "target_noise_met": drops["uniform"] > 0 and drops["importance"] <= drops["uniform"] / 3})
            rows.append((f"{name} R@10 drop clean→{s:.0%} noise", f"importance {drops['importance']:+.4f}",
                         f"uniform {drops['uniform']:+.4f} · base {drops['base']:+.4f}",
                         f"{ratio:.2f}" if math.isfinite(ratio) else "n/a (uniform did not drop)", "<= 0.33"))
            st = dirty["stats"]
            rows.append((f"{name} mean weight, injected noise vs genuine",
                         f"{st['weight_mean_noisy']:.2f} vs {st['weight_mean_clean']:.2f}",
                         f"norm. loss {st['norm_loss_mean_noisy']:.2f} vs {st['norm_loss_mean_clean']:.2f}",
                         f"{st['weight_mean_noisy'] / st['weight_mean_clean']:.2f}", "< 1 (noise damped)"))
        result[name] = figures
    result["seconds"] = time.perf_counter() - t_start
    rows.append(("runtime (one seed, CPU)" if len(seeds) == 1 and encoder.device.type == "cpu" else "runtime",
                 f"{result['seconds']:.0f} s", f"{steps} steps x {batch_size}", "-", "-"))
    result["rows"] = rows
    return result


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="importance estimators vs uniform at equal steps")
    for col in result.get("columns", ("figure", "value", "baseline", "ratio", "target")):
        table.add_column(col)
    for row in result["rows"]:
        table.add_row(*[str(v) for v in row])
    Console().print(table)


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m coldstart.bench.importance``: the estimator benchmark with its sizes as options."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m coldstart.bench.importance", description=main.__doc__)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--max-train", type=int, default=4000)
    ap.add_argument("--datasets", default="bestbuy,amazon")
    ap.add_argument("--estimators", default=None, help="comma-separated; default: all")
    ap.add_argument("--samplings", default=None, help="comma-separated; default: importance,weighted_loss")
    ap.add_argument("--noise-seed", type=int, default=0, help="which clicks are replaced by random items")
    ap.add_argument("--out", type=Path, default=Path("reports/bench_importance.json"))
    a = ap.parse_args(argv)
    res = bench_importance(Settings.from_env(), steps=a.steps, seeds=tuple(range(a.seeds)),
                           eval_every=a.eval_every, max_train=a.max_train, datasets=a.datasets.split(","),
                           estimators=a.estimators.split(",") if a.estimators else None,
                           samplings=a.samplings.split(",") if a.samplings else None,
                           noise_seed=a.noise_seed, out_dir=a.out.parent)
    print_table(res)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=str))
    print(f"figures in {a.out}, learning curves in {a.out.parent / 'importance_curves.png'}")
    return res


if __name__ == "__main__":
    main()
