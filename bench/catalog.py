"""A large catalogue: the item index, scoring and top-k at 100k and 1M items (issue 11).

Vectors are synthesised (unit vectors; the encoder's title throughput is ``coldstart bench encode``),
items go through the real :class:`ItemIndex` (ids, rows, per-item texts, popularity), and one request
is what the recommendations view does for one user: blend cosine and popularity over the whole
catalogue, mask invalid rows, take the top 10. Reported: resident memory per item (measured as the
process's RSS growth), top-10 latency p50/p99 over single requests, and whether fp16 storage of the
vectors would keep the ranking (top-10 overlap with fp32, and score error) — it is only worth adopting
if it does (and bf16, the CPU's fast half-precision path). Beside the blend, in the same run, the
learned ranker's whole read path (``ranker_request_times``: every signal of every item, statistics from
50,000 clicks) at the same size, which is what a request costs, the cost of one ``learn_clicks`` call
(what every ingested click costs the writer thread) and the process's RSS. And the same read path over
the candidates of the coarse index (``COLDSTART_ANN_MIN_ITEMS``, model/coarse.py) on clustered and on
uniformly random vectors, with its top-10 overlap with the path over every item for the same users.
And what the coarse index does to a batch's importance (``importance_batch_times``): the stage scored
against every item beside the coarse path (the items near each context exactly, a uniform sample of the
rest), with the error of the sampled loss and rank percentile.
"""

from __future__ import annotations

import gc
import random
import time

import torch
import torch.nn.functional as F

from coldstart.bench.stack import rss_bytes
from coldstart.model.items import ItemIndex
from coldstart.model.profile import popularity_blend
from coldstart.model.retrieval import score_items, top_k

DIM = 384


# Clustered vectors: items around topic centres, as titles of similar products are (two items of a topic
# at cosine ~0.5, of two topics ~0; with MiniLM, titles of one product type sit at 0.5-0.8). Uniformly
# random unit vectors have no such structure, which no coarse index can use: both are reported.
TOPICS = 2_000
TOPIC_NOISE = 1.0 / DIM ** 0.5  # a noise vector of norm ~1 beside a unit centre


def synthetic_index(n_items: int, device: torch.device, seed: int = 0, clustered: bool = False) -> ItemIndex:
    """An index with ``n_items`` titled items whose vectors are random unit vectors (``clustered``: around
    :data:`TOPICS` random topic centres), popularity Zipf-like."""
    g = torch.Generator().manual_seed(seed)
    index = ItemIndex(DIM, device, max_items=n_items, capacity=n_items)
    for i in range(n_items):
        index.upsert(f"sku-{i}", f"item {i}")
    index._dirty.clear()  # vectors below stand in for the encoder's
    vecs = torch.randn(n_items, DIM, generator=g)
    if clustered:
        centres = F.normalize(torch.randn(TOPICS, DIM, generator=g), dim=1)
        vecs = centres[torch.randint(TOPICS, (n_items,), generator=g)] + TOPIC_NOISE * vecs
    index.vectors[:n_items] = F.normalize(vecs, dim=1).to(device)
    index.valid[:n_items] = True
    index.pop[:n_items] = (1.0 / torch.arange(1, n_items + 1, dtype=torch.float32)).to(device) * 1000
    return index


def top10(profile: torch.Tensor, vecs: torch.Tensor, valid: torch.Tensor, pop: torch.Tensor,
          n_events: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One user's top 10 as the recommendations view scores it (cosine + popularity, invalid masked)."""
    a = popularity_blend(torch.tensor([n_events], device=profile.device))
    scores = score_items(profile.to(vecs.dtype), vecs, pop.to(vecs.dtype), a).float()
    return top_k(scores, 10, (~valid)[None])


def bench_catalog(sizes=(100_000, 1_000_000), requests: int = 300, device: str = "cpu") -> dict:
    from coldstart.settings import Settings

    # As many torch threads as a worker uses (COLDSTART_TORCH_THREADS, 1 by default: on shared cores a
    # second OpenMP thread waits on a descheduled peer, and the ranker's many small ops took 40 ms at
    # 20k items with 2 threads, 7 ms with 1), for the blend and the ranker alike.
    threads = torch.get_num_threads()
    wanted = Settings().torch_threads
    if wanted > 0:
        torch.set_num_threads(wanted)
    try:
        return _bench_catalog(sizes, requests, torch.device(device))
    finally:
        torch.set_num_threads(threads)


def _bench_catalog(sizes, requests: int, dev: torch.device) -> dict:
    rows, out = [], {}
    for n in sizes:
        gc.collect()
        rss0 = rss_bytes_self()
        t0 = time.perf_counter()
        index = synthetic_index(n, dev)
        build_s = time.perf_counter() - t0
        gc.collect()
        per_item = (rss_bytes_self() - rss0) / n
        vecs, valid = index.matrix()
        pop = index.popularity()
        g = torch.Generator().manual_seed(1)
        profiles = F.normalize(torch.randn(requests, DIM, generator=g), dim=1).to(dev)
        top10(profiles[:1], vecs, valid, pop)  # warm-up
        times = []
        for u in range(requests):
            t = time.perf_counter()
            top10(profiles[u:u + 1], vecs, valid, pop)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        times.sort()
        p50, p99 = times[len(times) // 2], times[int(0.99 * (len(times) - 1))]
        # fp16 storage: half the bytes of the vectors; adopt only if the top 10 stays the top 10.
        # bf16 (the CPU's AVX512-BF16 path): as fast as fp32 reads are slow, but 8 bits of mantissa.
        mean_overlap, max_err, half_p50 = reduced_precision(vecs.half(), profiles, vecs, valid, pop, min(requests, 100))
        bf16_overlap, bf16_err, bf16_p50 = reduced_precision(vecs.bfloat16(), profiles, vecs, valid, pop,
                                                             min(requests, 100))
        out[n] = {"items": n, "build_s": build_s, "rss_bytes_per_item": per_item,
                  "vector_bytes_per_item_fp32": DIM * 4, "top10_p50_s": p50, "top10_p99_s": p99,
                  "fp16_top10_overlap": mean_overlap, "fp16_max_score_error": max_err,
                  "fp16_top10_p50_s": half_p50}
        ranker = ranker_request_times(index, min(requests, 100), dev)
        coarse = coarse_request_times(n, min(requests, 100), dev)
        out[n]["coarse"] = coarse
        importance = importance_batch_times(n, dev)
        out[n]["importance"] = importance
        out[n].update({"ranker_top10_p50_s": ranker["p50_s"], "ranker_top10_p99_s": ranker["p99_s"],
                       "ranker_top10_cpu_p50_s": ranker["cpu_p50_s"],
                       "learn_click_p50_s": ranker["learn_click_p50_s"], "rss_bytes": ranker["rss_bytes"],
                       "bf16_top10_overlap": bf16_overlap, "bf16_max_score_error": bf16_err,
                       "bf16_top10_p50_s": bf16_p50})
        rows += [(f"top-10 p50 / p99 at {n:,} items ({dev.type})", f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} ms", "-", "-",
                  "p99 <= 50 ms on CPU at 1M"),
                 (f"learned ranker's top-10 p50 / p99 at {n:,} items ({dev.type})",
                  f"{ranker['p50_s'] * 1e3:.1f} / {ranker['p99_s'] * 1e3:.1f} ms",
                  f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f} ms blend", f"{ranker['p50_s'] / p50:.1f}",
                  "p99 <= 50 ms on CPU at 1M"),
                 (f"one learn_clicks call (one click) at {n:,} items", f"{ranker['learn_click_p50_s'] * 1e3:.1f} ms",
                  f"{ranker['p50_s'] * 1e3:.1f} ms a request", f"{ranker['learn_click_p50_s'] / ranker['p50_s']:.1f}",
                  "-"),
                 *[(f"coarse index at {n:,} items, {kind} vectors: ranker top-10 p50 / p99, top-10 overlap",
                    f"{coarse[kind]['p50_s'] * 1e3:.1f} / {coarse[kind]['p99_s'] * 1e3:.1f} ms, "
                    f"{coarse[kind]['overlap']:.3f} ({coarse[kind]['candidates']:,.0f} candidates; "
                    f"built in {coarse[kind]['build_s']:.1f} s)",
                    f"{coarse[kind]['exact_p50_s'] * 1e3:.1f} / {coarse[kind]['exact_p99_s'] * 1e3:.1f} ms every item",
                    f"{coarse[kind]['p99_s'] / coarse[kind]['exact_p99_s']:.2f}", "p99 <= 50 ms on CPU at 1M")
                   for kind in ("clustered", "random")],
                 (f"coarse index at {n:,} items: a batch's importance ({importance['events']} events), p50 / max; "
                  "sampled loss |error| mean / max, rank percentile |error| max",
                  f"{importance['p50_s'] * 1e3:.0f} / {importance['max_s'] * 1e3:.0f} ms; "
                  f"{importance['loss_err_mean']:.3f} / {importance['loss_err_max']:.3f} nats, {importance['rank_err_max']:.4f}",
                  f"{importance['exact_p50_s'] * 1e3:.0f} / {importance['exact_max_s'] * 1e3:.0f} ms every item",
                  f"{importance['exact_p50_s'] / importance['p50_s']:.1f}", "-"),
                 (f"coarse index at {n:,} items: one whole batch ({importance['events']} events) p50; "
                  "its learn / importance / profile stages",
                  f"{importance['batch_p50_s'] * 1e3:.0f} ms; " + " / ".join(
                      f"{importance['stage_p50_s'].get(k, 0.0) * 1e3:.0f}" for k in ("learn", "importance", "profile")) + " ms",
                  f"{importance['exact_batch_p50_s'] * 1e3:.0f} ms every item",
                  f"{importance['exact_batch_p50_s'] / importance['batch_p50_s']:.1f}", "-"),
                 (f"coarse index at {n:,} items: one learn_clicks call (candidates + 1,024 sampled rows)",
                  f"{coarse['clustered']['learn_click_p50_s'] * 1e3:.1f} ms",
                  f"{coarse['clustered']['exact_learn_click_p50_s'] * 1e3:.1f} ms over every item",
                  f"{coarse['clustered']['learn_click_p50_s'] / coarse['clustered']['exact_learn_click_p50_s']:.2f}", "-"),
                 (f"memory per item at {n:,} items", f"{per_item:,.0f} B RSS", f"{DIM * 4} B fp32 vector",
                  f"{per_item / (DIM * 4):.2f}", "-"),
                 (f"process RSS at {n:,} items (index + statistics + ranker)", f"{ranker['rss_bytes'] / 2**20:,.0f} MiB",
                  "-", "-", "-"),
                 (f"fp16 vectors at {n:,} items: top-10 overlap / max score error",
                  f"{mean_overlap:.3f} / {max_err:.1e}", "fp32 ranking", "-", "overlap 1.0 to adopt"),
                 (f"bf16 vectors at {n:,} items: top-10 overlap / max score error / p50",
                  f"{bf16_overlap:.3f} / {bf16_err:.1e} / {bf16_p50 * 1e3:.1f} ms", f"fp32 ranking, {p50 * 1e3:.1f} ms",
                  "-", "overlap 1.0 to adopt")]
        del index, vecs, valid, pop
    return {"sizes": out, "rows": rows, "torch_threads": torch.get_num_threads()}


def reduced_precision(low: torch.Tensor, profiles: torch.Tensor, vecs: torch.Tensor, valid: torch.Tensor,
                      pop: torch.Tensor, requests: int) -> tuple[float, float, float]:
    """(mean top-10 overlap with fp32, max score error, p50 seconds) of the blend over ``low``, the item
    vectors stored at a lower precision, for the first ``requests`` profiles."""
    overlaps, max_err, times = [], 0.0, []
    for u in range(requests):
        v32, i32 = top10(profiles[u:u + 1], vecs, valid, pop)
        t = time.perf_counter()
        v_low, i_low = top10(profiles[u:u + 1], low, valid, pop)
        times.append(time.perf_counter() - t)
        overlaps.append(len(set(i32[0].tolist()) & set(i_low[0].tolist())) / 10)
        max_err = max(max_err, float((v32 - v_low).abs().max()))
    return sum(overlaps) / len(overlaps), max_err, _pct(times, 0.5)


def coarse_request_times(n: int, requests: int, dev: torch.device, clicks: int = 50_000) -> dict:
    """The learned ranker's read path over the coarse index's candidates (``COLDSTART_ANN_MIN_ITEMS``,
    model/coarse.py) beside the same path over every item, for the same users, on clustered and on
    uniformly random vectors: p50 / p99 of each, the time to build the index (train + assign every row),
    the mean candidates per request and the mean top-10 overlap with every item's ranking."""
    from coldstart.settings import Settings

    out = {}
    for kind in ("clustered", "random"):
        index = synthetic_index(n, dev, seed=2, clustered=kind == "clustered")
        t = time.perf_counter()
        while index.maintain_coarse(1, budget=65_536):
            pass
        build_s = time.perf_counter() - t
        exact = ranker_request_times(index, requests, dev, settings=Settings(device=str(dev), ann_min_items=0),
                                     clicks=clicks)
        approx = ranker_request_times(index, requests, dev, settings=Settings(device=str(dev), ann_min_items=1),
                                      clicks=clicks)
        overlap = [len(set(a) & set(b)) / max(len(a), 1) for a, b in zip(exact["tops"], approx["tops"])]
        out[kind] = {"p50_s": approx["p50_s"], "p99_s": approx["p99_s"], "exact_p50_s": exact["p50_s"],
                     "exact_p99_s": exact["p99_s"], "overlap": sum(overlap) / len(overlap),
                     "candidates": approx["candidates"], "build_s": build_s, "lists": index.coarse.lists,
                     "learn_click_p50_s": approx["learn_click_p50_s"], "exact_learn_click_p50_s": exact["learn_click_p50_s"]}
        del index
        gc.collect()
    return out


def importance_batch_times(n: int, dev: torch.device, batches: int = 5, events: int = 32, clicks: int = 20_000) -> dict:
    """A batch's importance stage (``BatchProcessor.process``, ``stages["importance"]``) over every item
    and, the coarse index built, over its columns (streams/processor.py ``_sampled_columns``), on the
    same ``batches`` batches of ``events`` events (half searches, half clicks after that search, on
    clustered vectors: a search's query is a noisy copy of an item's vector, as a title-like query
    is, and one click in 4 is on a random item instead): p50 and max seconds of each, the p50 of the
    whole batch and of each of its stages (the ranker's steps included), and the per-click |error| of
    the sampled loss (mean, max) and of the rank percentile the default estimator reads (max), against
    every item."""
    from coldstart.contract import ClickEvent, SearchEvent
    from coldstart.model.encoder import EmbeddingCache, TextEncoder
    from coldstart.model.importance import catalog_loss, rank_percentile
    from coldstart.model.serving import ServingModel
    from coldstart.settings import Settings
    from coldstart.streams.processor import BatchProcessor
    from coldstart.streams.recommender import Recommender

    index = synthetic_index(n, dev, seed=3, clustered=True)
    while index.maintain_coarse(1, budget=65_536):
        pass
    encoder = TextEncoder(None, device=str(dev))
    g = torch.Generator().manual_seed(4)
    cache = EmbeddingCache(10 * batches * events)
    vecs, valid = index.matrix()
    plan = []  # per batch: (events, the query vectors, the clicked rows)
    for b in range(batches):
        rows = torch.randint(n, (events // 2,), generator=g)
        queries = F.normalize(vecs[rows] + TOPIC_NOISE * torch.randn(rows.numel(), DIM, generator=g), dim=1)
        rows[3::4] = torch.randint(n, (rows[3::4].numel(),), generator=g)  # one click in 4 on a random item
        texts = [f"query {b}-{j}" for j in range(rows.numel())]
        cache.seed(encoder.version, texts, queries)  # stand-ins for the encoder's vectors of these texts
        batch = []
        for j, (text, row) in enumerate(zip(texts, rows.tolist())):
            batch.append(SearchEvent(f"s{b}-{j}", f"iu{b}-{j}", 1_700_000_000.0 + j, text))
            batch.append(ClickEvent(f"c{b}-{j}", f"iu{b}-{j}", 1_700_000_000.5 + j, index.ids[row], query=text))
        plan.append((batch, queries, rows))
    model = ServingModel(encoder, cache, index)
    rng = random.Random(5)
    hot = [index.ids[rng.randrange(min(n, 20_000))] for _ in range(2_000)]
    out: dict = {"events": events}
    for name, ann in (("exact", 0), ("coarse", 1)):
        # the whole batch as a worker runs it: the ranker's steps and statistics (learn) included, one
        # click in 4 teaching as after the ranker's first 1,000 steps
        settings = Settings(device=str(dev), ann_min_items=ann, ranker_dense_steps=0)
        recommender = Recommender(settings, model)
        for i in range(clicks):  # statistics for the hot items: transitions, co-clicks, popularity
            recommender.stats.observe(f"ib{i}", f"ibu{i % 2_000}", rng.choice(hot), 1_699_990_000.0 + i / 10)
        processor = BatchProcessor(settings, model)
        processor.click_hook = recommender.learn_clicks
        times, batch_s, stages = [], [], {}
        for batch, _, _ in plan:
            t = time.perf_counter()
            result = processor.process(batch, {})
            batch_s.append(time.perf_counter() - t)
            times.append(result.stage_seconds["importance"])
            for stage, sec in result.stage_seconds.items():
                stages.setdefault(stage, []).append(sec)
        out[f"{name}_times"] = times
        out[f"{name}_batch_p50_s"] = _pct(batch_s, 0.5)
        out[f"{name}_stage_p50_s"] = {stage: _pct(v, 0.5) for stage, v in stages.items()}
    loss_err, rank_err = [], []
    probe = BatchProcessor(Settings(device=str(dev), ann_min_items=1), model)
    for batch, queries, rows in plan:  # the sampled columns' estimates against every item's, per click
        positions = list(range(len(queries)))
        sampled = probe._sampled_columns(batch, positions, queries, dict(enumerate(rows.tolist())), vecs, valid, n)
        cols, log_w, target = sampled.vecs, sampled.log_weights, sampled.column_of(rows)
        loss_err.append((catalog_loss(queries, cols, target, log_weights=log_w) - catalog_loss(queries, vecs, rows)).abs())
        rank_err.append((rank_percentile(queries, cols, target, log_w) - rank_percentile(queries, vecs, rows)).abs())
    loss_err, rank_err = torch.cat(loss_err), torch.cat(rank_err)
    return {"events": events, "p50_s": _pct(out["coarse_times"], 0.5), "max_s": max(out["coarse_times"]),
            "batch_p50_s": out["coarse_batch_p50_s"], "exact_batch_p50_s": out["exact_batch_p50_s"],
            "stage_p50_s": out["coarse_stage_p50_s"], "exact_stage_p50_s": out["exact_stage_p50_s"],
            "exact_p50_s": _pct(out["exact_times"], 0.5), "exact_max_s": max(out["exact_times"]),
            "loss_err_mean": float(loss_err.mean()), "loss_err_max": float(loss_err.max()),
            "rank_err_max": float(rank_err.max())}


def ranker_request_times(index: ItemIndex, requests: int, dev: torch.device, settings=None,
                         clicks: int = 50_000) -> dict:
    """What ``GET /users/{id}/recommendations`` computes: the learned ranker over all 21 signals of every
    item, for users with 3 clicks on items with stream statistics (transitions, co-clicks, popularity
    for 50,000 clicks), top 10 with an explanation: p50 / p99 wall time, p50 of this thread's CPU time
    (less sensitive to other jobs on the cores) and the median cost of one ``learn_clicks`` call of one
    click (the same signals plus one learning step, on the writer thread for every click ingested)."""
    import random

    from coldstart.contract import ClickEvent
    from coldstart.model.encoder import EmbeddingCache, TextEncoder
    from coldstart.model.serving import ServingModel
    from coldstart.settings import Settings
    from coldstart.streams.processor import BatchProcessor
    from coldstart.streams.recommender import Recommender

    encoder = TextEncoder(None, device=str(dev))
    model = ServingModel(encoder, EmbeddingCache(10_000), index)
    settings = settings or Settings(device=str(dev))
    recommender = Recommender(settings, model)
    rng = random.Random(0)
    n = len(index.ids)
    hot = [index.ids[rng.randrange(min(n, 20_000))] for _ in range(2_000)]  # a head the clicks land on
    for i in range(clicks):
        recommender.stats.observe(f"b{i}", f"bu{i % 5_000}", rng.choice(hot), 1_700_000_000.0 + i)
    processor = BatchProcessor(settings, model)
    states = []
    for u in range(requests):
        events = [ClickEvent(f"r{u}-{j}", f"ru{u}", 1_700_100_000.0 + j, rng.choice(hot)) for j in range(3)]
        states.append(processor.process(events, {}).profiles[f"ru{u}"])
    recommender.recommend(states[0], k=10)  # warm-up (the first read fills the row statistics)
    times, cpu, tops, candidates = [], [], [], []
    for state in states:
        t, c = time.perf_counter(), time.thread_time()
        recs = recommender.recommend(state, k=10)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        tops.append([r.item_id for r in recs])
        sig = recommender.signals(state)
        candidates.append(sig.features.shape[0])
    learn = []
    for u, state in enumerate(states[: min(len(states), 30)]):
        click = ClickEvent(f"l{u}", state.user_id, 1_700_100_010.0, rng.choice(hot))
        t = time.perf_counter()
        recommender.learn_clicks([click], {state.user_id: state})
        learn.append(time.perf_counter() - t)
    return {"p50_s": _pct(times, 0.5), "p99_s": _pct(times, 0.99), "cpu_p50_s": _pct(cpu, 0.5),
            "learn_click_p50_s": _pct(learn, 0.5), "rss_bytes": rss_bytes_self(), "tops": tops,
            "candidates": sum(candidates) / len(candidates)}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[len(values) // 2] if q == 0.5 else values[int(q * (len(values) - 1))]


def rss_bytes_self() -> int:
    import os

    return rss_bytes(os.getpid())
