"""Benchmarks for the streaming core. Each prints its figure beside a baseline measured in the same run.

- ``encode``: the encode path (tokenise, forward, pool, normalise) vs a bare forward pass of the same
  model at the same batch size, on the distinct Best Buy queries.
- ``batch``: the in-process batch path (decode -> encode -> score -> profile update -> retrieval) fed
  the Best Buy log in batches, events/s and batch latency p50/p99 (the path a GPU worker runs).
- ``stream``: one real worker on a real local broker: events/s over the whole Best Buy log vs a raw
  aiokafka consumer that only decodes the same messages (cold and warm embedding cache);
  event->profile latency at a fixed 500 events/s (alone, then with 200 recommendation requests/s) and
  1,000 events/s, split into waiting and the batch's stages; the requests' latency; worker RSS.
- ``serve``: recommendation requests at a fixed rate (open loop, latency from the scheduled time) while
  the worker ingests a steady event rate, beside the same requests to the idle worker (``bench/serve.py``).
- ``bots``: a fixed set of bots merged into both real logs, through the worker's anomaly guard: share of
  bot and genuine events flagged, popularity and co-clicks against the clean log's (``bench/bots.py``).
- ``learn``: the worker's ``learn`` stage per batch, alone and beside a thread that holds the GIL part of
  the time, and torch calls per ranker step (``bench/learn.py``; no broker).
- ``catalog``: the item index, scoring and top-10 at 100k and 1M synthetic items (``bench/catalog.py``).
- ``scale``: 1, 2 and 4 workers of one app on one broker (the group spreads the partitions): aggregate and
  per-worker events/s, event->profile p50/p99 at a fixed rate, scaling efficiency and a capacity table
  (workers and partitions for 1k, 10k and 100k events/s) (``bench/scale.py``; long, not in ``all``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coldstart.bench.events import bestbuy_events, renamed
from coldstart.settings import Settings

console = Console()


def run_benchmarks(settings: Settings, which: str, out: Path, limit: int | None = None,
                   minutes: float = 10.0, serve: dict | None = None) -> dict:
    if out.is_dir():  # a folder for --out: the figures go in it, decided before minutes of measuring
        out = out / "bench.json"
    results: dict = {"machine": machine()}
    if which in ("encode", "all"):
        results["encode"] = bench_encode(settings)
    if which in ("batch", "all"):
        results["batch"] = bench_batch(settings)
    if which in ("stream", "all"):
        results["stream"] = bench_stream(settings, limit)
    if which in ("catalog", "all"):
        from coldstart.bench.catalog import bench_catalog

        results["catalog"] = bench_catalog()
    if which in ("serve",):  # issue 11: requests while ingesting vs idle (bench/serve.py); not in "all"
        from coldstart.bench.serve import bench_serve

        results["serve"] = bench_serve(settings, **(serve or {}))
    if which in ("scale",):  # issue 11, item 6: scale-out on one broker (bench/scale.py); long, not in "all"
        from coldstart.bench.scale import bench_scale

        results["scale"] = bench_scale(settings)
    if which in ("learn",):  # issue 11: the learn stage alone and beside a GIL contender (no broker)
        from coldstart.bench.learn import bench_learn

        results["learn"] = bench_learn(settings)
    if which in ("shed",):  # issue 11: what the opt-in cap on ranker steps costs under a backlog (no broker)
        from coldstart.bench.shed import bench_shed

        results["shed"] = bench_shed(settings)
    if which in ("train",):  # issue 10, item 4: trainer samples/s by precision, both logs (no broker)
        from coldstart.bench.train import bench_train

        results["train"] = bench_train(settings)
    if which in ("bots",):  # issue 10: injected bots against the guard, both real logs (no broker)
        from coldstart.bench.bots import bench_bots

        results["bots"] = bench_bots(settings)
    if which in ("overload",):  # issue 8: long (minutes of overload, then the drain); not in "all"
        from coldstart.bench.overload import bench_overload

        results["overload"] = bench_overload(settings, minutes=minutes, out_dir=out.parent)
        console.print(f"memory and backlog curve written to {results['overload']['plot']}")
    if which in ("importance",):
        from coldstart.bench.importance import bench_importance, print_table

        results["importance"] = bench_importance(settings, out_dir=out.parent)
        print_table(results["importance"])  # its own columns (issue 10)
        console.print(f"learning curves written to {out.parent / 'importance_curves.png'}")
    if which in ("augment",):
        from coldstart.bench.augment import bench_augment, print_table as print_augment

        results["augment"] = bench_augment(settings)
        print_augment(results["augment"])  # its own columns (issue 10, item 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table = Table(title="coldstart benchmarks")
    for col in ("benchmark", "figure", "value", "baseline", "ratio", "target"):
        table.add_column(col)
    for name, rows in results.items():
        if name in ("machine", "importance", "augment"):
            continue
        for row in rows["rows"]:
            table.add_row(name, *[str(v) for v in row])
    console.print(table)
    console.print(f"figures written to {out}")
    return results


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ------------------------------------------------------------------------------------------ encode
def bench_encode(settings: Settings, batch_size: int = 256) -> dict:
    import torch

    from coldstart.model.encoder import PRECISIONS, TextEncoder

    queries = sorted({e.value["query"] for e in bestbuy_events(settings) if e.type == "search"})
    enc = TextEncoder(settings.model_path or None, device=settings.device)  # float32: the reference
    enc.encode(queries[:batch_size])  # warm-up
    t0 = time.perf_counter()
    enc.encode(queries, batch_size=batch_size)
    path_s = time.perf_counter() - t0
    # Baseline: the bare forward pass over the same batches, tokenised beforehand (not timed).
    batches = [enc.tokenizer(queries[i:i + batch_size], padding=True, truncation=True, max_length=64,
                             return_tensors="pt").to(enc.device) for i in range(0, len(queries), batch_size)]
    with torch.inference_mode():
        enc.module(**batches[0])
        t0 = time.perf_counter()
        for b in batches:
            enc.module(**b)
        if enc.device.type == "cuda":
            torch.cuda.synchronize()
        bare_s = time.perf_counter() - t0
    path_rate, bare_rate = len(queries) / path_s, len(queries) / bare_s
    rows = [("sentences/s", f"{path_rate:,.0f}", f"{bare_rate:,.0f} bare forward",
             f"{path_rate / bare_rate:.2f}", ">= 0.9")]
    # Every other precision on the same texts, against the float32 path above: speed and how far its
    # vectors are from float32's (the shipped-vector check refuses below cos 0.999).
    reference = enc.encode(queries, batch_size=batch_size)
    precisions = {}
    for precision in PRECISIONS[1:]:
        other = TextEncoder(settings.model_path or None, device=settings.device, precision=precision)
        other.encode(queries[:batch_size])
        t0 = time.perf_counter()
        vecs = other.encode(queries, batch_size=batch_size)
        rate = len(queries) / (time.perf_counter() - t0)
        min_cos = float((vecs * reference).sum(dim=1).min())
        precisions[precision] = {"per_s": rate, "speedup": rate / path_rate, "min_cos": min_cos}
        rows.append((f"sentences/s, {precision}", f"{rate:,.0f}", f"{path_rate:,.0f} float32",
                     f"{rate / path_rate:.2f} (min cos {min_cos:.4f})", "cos >= 0.999"))
    return {"texts": len(queries), "batch_size": batch_size, "path_per_s": path_rate, "bare_per_s": bare_rate,
            "precisions": precisions, "rows": rows}


# ------------------------------------------------------------------------------------------- batch
def bench_batch(settings: Settings, batch_size: int = 512) -> dict:
    import torch

    from coldstart.model.profile import popularity_blend
    from coldstart.model.retrieval import score_items, top_k
    from coldstart.model.serving import ServingModel
    from coldstart.streams.processor import BatchProcessor
    from coldstart.contract import PARSERS
    from coldstart.streams.state import ProfileState

    events = [e for e in bestbuy_events(settings) if e.type in ("search", "click")]
    raw = [(f"events.{e.type}", e.key.encode(), json.dumps(e.value).encode()) for e in events]
    model = ServingModel.load(path=settings.model_path or None, device=settings.device,
                              precision=settings.encoder_precision)
    proc = BatchProcessor(settings, model)
    profiles: dict[str, ProfileState] = {}
    times = []
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    t_all = time.perf_counter()
    for i in range(0, len(raw), batch_size):
        t0 = time.perf_counter()
        parsed = [PARSERS[topic](value, key) for topic, key, value in raw[i:i + batch_size]]
        out = proc.process(parsed, profiles)
        # Stored as bytes like the table does, then retrieval for every user the batch touched.
        for uid, st in out.profiles.items():
            profiles[uid] = ProfileState.loads(st.dumps())
        states = list(out.profiles.values())
        vecs = torch.stack([torch.from_numpy(st.vector) for st in states]).to(model.device)
        n = torch.tensor([float(st.n_events) for st in states], device=model.device)
        item_vecs, valid = model.items.matrix()
        scores = score_items(vecs, item_vecs, model.items.popularity(), popularity_blend(n))
        top_k(scores, 10, (~valid)[None].expand_as(scores))
        sync()
        times.append(time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    rate = len(raw) / total
    p50, p99 = quantiles(times)
    return {"events": len(raw), "batch_size": batch_size, "events_per_s": rate, "batch_p50_s": p50,
            "batch_p99_s": p99, "device": str(model.device),
            "rows": [("events/s (in-process)", f"{rate:,.0f}", "-", "-", ">= 30,000 on one H100"),
                     ("batch p50 / p99 ms", f"{p50 * 1e3:.1f} / {p99 * 1e3:.1f}", "-", "-",
                      "p99 <= 25 ms on one H100")]}


def stage_text(stages: dict[str, tuple[float, float]]) -> str:
    """``parse 0.4/1.2 · read ...`` in the order the stages run.

    >>> stage_text({"send": (0.0121, 0.03), "parse": (0.0004, 0.0012)})
    'parse 0.4/1.2 · send 12.1/30.0'
    """
    from coldstart.streams.metrics import BATCH_STAGES

    order = {name: i for i, name in enumerate(BATCH_STAGES)}
    return " · ".join(f"{name} {mean * 1e3:.1f}/{p99 * 1e3:.1f}"
                      for name, (mean, p99) in sorted(stages.items(), key=lambda kv: order.get(kv[0], 99)))


def quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(0.99 * len(xs)))]


# ------------------------------------------------------------------------------------------ stream
def bench_stream(settings: Settings, limit: int | None = None, latency_events: int = 5000,
                 request_rate: float = 200.0) -> dict:
    """One worker on a local broker: cold and warm replay rates beside a raw decoding consumer, latency
    at 500 events/s alone, at 500 events/s with ``request_rate`` recommendation requests/s, and at 1,000
    events/s (texts cached, as in steady state), each split into waiting (fetch + batching) and the
    batch's stages; the requests' own latency; RSS."""
    from coldstart.bench.latency import paced_latency
    from coldstart.bench.stack import PROCESSED, rss_bytes, wait_total
    from coldstart.local import LocalStack
    from coldstart.replay.producer import produce

    events = bestbuy_events(settings, limit)
    user_events = sum(1 for e in events if e.type != "item")
    with LocalStack(settings) as stack:
        bootstrap = stack.bootstrap
        asyncio.run(produce(events, bootstrap, progress=False))
        raw_rate = asyncio.run(raw_consumer_rate(bootstrap, user_events))
        worker = stack.start_worker()
        t_first, t_last = wait_total([worker], PROCESSED, user_events, timeout=3000)
        rate = (user_events - t_first[1]) / max(t_last[0] - t_first[0], 1e-9)
        rss = rss_bytes(worker.proc.pid)
        ranker_cold = ranker_counts(worker)
        # Warm pass: the same log under new users and event ids. Every text is in the embedding cache
        # now, as in steady state (95% of Best Buy events repeat a text seen before).
        warm = [renamed(e, "~2") for e in events if e.type != "item"]
        t0 = time.perf_counter()
        asyncio.run(produce(warm, bootstrap, progress=False))
        _, t_end = wait_total([worker], PROCESSED, 2 * user_events, timeout=1500)
        warm_rate = len(warm) / max(t_end[0] - t0, 1e-9)
        stack.wait_ready()
        base = [e for e in events if e.type != "item"][:latency_events]
        users = sorted({e.value["user_id"] for e in events if e.type != "item"})
        paced = {}
        # 500/s alone, then with the request load: the two differ by what the requests cost the stream
        # (both run on the worker's one event loop and one GIL).
        for key, suffix, rate_s, req in (("500", "~3", 500.0, 0.0), ("500+requests", "~5", 500.0, request_rate),
                                         ("1000", "~4", 1000.0, 0.0)):
            paced[key] = paced_latency(bootstrap, [worker], [renamed(e, suffix) for e in base], rate_s,
                                       request_users=users if req else None, request_rate=req)
        rss_end = rss_bytes(worker.proc.pid)
        time.sleep(settings.gauges_every_s)  # the ranker's counts reach /metrics with the gauges
        ranker_end = ranker_counts(worker)
    req = paced["500+requests"].requests
    rows = [("events/s, one worker, cold cache", f"{rate:,.0f}", f"{raw_rate:,.0f} raw aiokafka decode",
             f"{rate / raw_rate:.3f}", ">= 3,000/s"),
            ("events/s, one worker, warm cache", f"{warm_rate:,.0f}", f"{raw_rate:,.0f} raw aiokafka decode",
             f"{warm_rate / raw_rate:.3f}", ">= 10,000/s")]
    for key, target in (("500", "p99 <= 100 ms"), ("500+requests", "p99 <= 100 ms"), ("1000", "p99 <= 250 ms")):
        r = paced[key]
        at = f"{r.rate:,.0f}/s" + (f" with {r.requests.rate:,.0f} requests/s" if r.requests else "")
        rows.append((f"event->profile p50 / p99 at {at}", f"{r.profile_p50_s * 1e3:,.0f} / "
                     f"{r.profile_p99_s * 1e3:,.0f} ms", f"of which waiting (fetch + batching) "
                     f"{r.wait_p50_s * 1e3:,.0f} / {r.wait_p99_s * 1e3:,.0f} ms; batch {r.batch_p50_s * 1e3:,.0f}"
                     f" / {r.batch_p99_s * 1e3:,.0f} ms", "-", target))
        rows.append((f"batch stages at {at}, mean / p99 ms", stage_text(r.stages), "-", "-", "-"))
        rows.append((f"cores busy at {at}", f"worker {r.cpu['workers']:.2f}",
                     f"load generator {r.cpu['this_process']:.2f}; machine {r.cpu['machine']:.2f} of "
                     f"{os.cpu_count()}", "-", "-"))
        rows.append((f"garbage collections at {at} (each holds the worker's GIL): count, ms in all, p99 ms",
                     "; ".join(f"gen {g}: {n:,.0f}, {t * 1e3:,.0f}, {q * 1e3:,.1f}" for g, (n, t, q) in r.gc.items())
                     or "none", "-", "-", "-"))
    if req is not None:
        rows.append((f"GET recommendations p50 / p99 at {req.rate:.0f}/s while ingesting 500/s (open loop, "
                     "from the scheduled time)",
                     f"{req.p50_s * 1e3:,.1f} / {req.p99_s * 1e3:,.1f} ms", f"{req.ok}/{req.sent} answered 200",
                     "-", "p99 <= 20 ms"))
    rows.append(("ranker steps taken / shed (the per-batch cap under a backlog): after the cold replay; "
                 "in the warm replay and paced phases", f"{ranker_cold[0]:,.0f} / {ranker_cold[1]:,.0f}; "
                 f"{ranker_end[0] - ranker_cold[0]:,.0f} / {ranker_end[1] - ranker_cold[1]:,.0f}",
                 "counted up to 5 s late (the gauges' cadence)", "-", "-"))
    rows += [("worker RSS after the cold replay", f"{rss / 2**20:,.0f} MiB", "-", "-", "<= 1,430 MiB"),
             ("worker RSS at the end", f"{rss_end / 2**20:,.0f} MiB", "-", "-", "<= 1,430 MiB")]
    return {"events": user_events, "worker_events_per_s": rate, "warm_events_per_s": warm_rate,
            "raw_consumer_events_per_s": raw_rate, "rss_bytes": rss, "rss_end_bytes": rss_end,
            "ranker_steps_shed": {"cold": ranker_cold, "end": ranker_end},
            "paced": {k: dataclasses.asdict(v) for k, v in paced.items()}, "rows": rows}


def ranker_counts(worker) -> tuple[float, float]:
    """``(ranker steps, steps shed)`` as the worker's /metrics show them."""
    from coldstart.bench.stack import counter_sum

    scraped = worker.scrape()
    return counter_sum(scraped, "coldstart_ranker_steps"), counter_sum(scraped, "coldstart_ranker_steps_shed_total")


async def raw_consumer_rate(bootstrap: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    from coldstart.contract import USER_TOPICS
    from coldstart.streams.catalog import assign_all_partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        await assign_all_partitions(consumer, USER_TOPICS)
        seen = 0
        t0 = time.perf_counter()
        while seen < n:
            batch = await consumer.getmany(timeout_ms=200, max_records=5000)
            for msgs in batch.values():
                for m in msgs:
                    json.loads(m.value)
                    seen += 1
        return seen / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
