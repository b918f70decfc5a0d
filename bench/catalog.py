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
(what every ingested click costs the writer thread) and the process's RSS.
"""

from __future__ import annotations

import gc
import time

import torch
import torch.nn.functional as F

from coldstart.bench.stack import rss_bytes
from coldstart.model.items import ItemIndex
from coldstart.model.profile import popularity_blend
from coldstart.model.retrieval import score_items, top_k

DIM = 384


def synthetic_index(n_items: int, device: torch.device, seed: int = 0) -> ItemIndex:
    """An index with ``n_items`` titled items whose vectors are random unit vectors, popularity Zipf-like."""
    g = torch.Generator().manual_seed(seed)
    index = ItemIndex(DIM, device, max_items=n_items, capacity=n_items)
    for i in range(n_items):
        index.upsert(f"sku-{i}", f"item {i}")
    index._dirty.clear()  # vectors below stand in for the encoder's
    index.vectors[:n_items] = F.normalize(torch.randn(n_items, DIM, generator=g), dim=1).to(device)
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


def ranker_request_times(index: ItemIndex, requests: int, dev: torch.device) -> dict:
    """What ``GET /users/{id}/recommendations`` computes: the learned ranker over all 15 signals of every
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
    settings = Settings(device=str(dev))
    recommender = Recommender(settings, model)
    rng = random.Random(0)
    n = len(index.ids)
    hot = [index.ids[rng.randrange(min(n, 20_000))] for _ in range(2_000)]  # a head the clicks land on
    for i in range(50_000):
        recommender.stats.observe(f"b{i}", f"bu{i % 5_000}", rng.choice(hot), 1_700_000_000.0 + i)
    processor = BatchProcessor(settings, model)
    states = []
    for u in range(requests):
        events = [ClickEvent(f"r{u}-{j}", f"ru{u}", 1_700_100_000.0 + j, rng.choice(hot)) for j in range(3)]
        states.append(processor.process(events, {}).profiles[f"ru{u}"])
    recommender.recommend(states[0], k=10)  # warm-up (the first read fills the row statistics)
    times, cpu = [], []
    for state in states:
        t, c = time.perf_counter(), time.thread_time()
        recommender.recommend(state, k=10)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    learn = []
    for u, state in enumerate(states[: min(len(states), 30)]):
        click = ClickEvent(f"l{u}", state.user_id, 1_700_100_010.0, rng.choice(hot))
        t = time.perf_counter()
        recommender.learn_clicks([click], {state.user_id: state})
        learn.append(time.perf_counter() - t)
    return {"p50_s": _pct(times, 0.5), "p99_s": _pct(times, 0.99), "cpu_p50_s": _pct(cpu, 0.5),
            "learn_click_p50_s": _pct(learn, 0.5), "rss_bytes": rss_bytes_self()}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[len(values) // 2] if q == 0.5 else values[int(q * (len(values) - 1))]


def rss_bytes_self() -> int:
    import os

    return rss_bytes(os.getpid())
