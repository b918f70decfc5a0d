"""Benchmarks for the streaming core. Each prints its figure beside a baseline measured in the same run.

- ``encode``: the encode path (tokenise, forward, pool, normalise) vs a bare forward pass of the same
  model at the same batch size, on the distinct Best Buy queries.
- ``batch``: the in-process batch path (decode -> encode -> score -> profile update -> retrieval) fed
  the Best Buy log in batches, events/s and batch latency p50/p99 (the path a GPU worker runs).
- ``stream``: one real worker on a real local broker: events/s over the whole Best Buy log vs a raw
  aiokafka consumer that only decodes the same messages; event->profile latency at a fixed 500
  events/s; the worker's resident memory after the replay.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coldstart.settings import Settings

console = Console()


def run_benchmarks(settings: Settings, which: str, out: Path) -> dict:
    results: dict = {"machine": machine()}
    if which in ("encode", "all"):
        results["encode"] = bench_encode(settings)
    if which in ("batch", "all"):
        results["batch"] = bench_batch(settings)
    if which in ("stream", "all"):
        results["stream"] = bench_stream(settings)
    if which in ("importance",):
        from coldstart.bench.importance import bench_importance, print_table

        results["importance"] = bench_importance(settings, out_dir=out.parent)
        print_table(results["importance"])  # its own columns (issue 10)
        console.print(f"learning curves written to {out.parent / 'importance_curves.png'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table = Table(title="coldstart benchmarks")
    for col in ("benchmark", "figure", "value", "baseline", "ratio", "target"):
        table.add_column(col)
    for name, rows in results.items():
        if name in ("machine", "importance"):
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


def bestbuy_events(settings: Settings, limit: int | None = None):
    from coldstart.replay import open_dataset

    events = open_dataset("bestbuy", settings.shared_data)
    return list(itertools.islice(events, limit) if limit else events)


# ------------------------------------------------------------------------------------------ encode
def bench_encode(settings: Settings, batch_size: int = 256) -> dict:
    import torch

    from coldstart.model.encoder import TextEncoder

    queries = sorted({e.value["query"] for e in bestbuy_events(settings) if e.type == "search"})
    enc = TextEncoder(settings.model_path or None, device=settings.device)
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
    return {"texts": len(queries), "batch_size": batch_size, "path_per_s": path_rate, "bare_per_s": bare_rate,
            "rows": [("sentences/s", f"{path_rate:,.0f}", f"{bare_rate:,.0f} bare forward",
                      f"{path_rate / bare_rate:.2f}", ">= 0.9")]}


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
    model = ServingModel.load(path=settings.model_path or None, device=settings.device)
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


def renamed(event, suffix: str):
    """The same event under another user and event id (same texts and items)."""
    from coldstart.replay import ReplayEvent

    value = {**event.value, "user_id": event.value["user_id"] + suffix, "event_id": event.value["event_id"] + suffix,
             "ts": time.time()}
    return ReplayEvent(event.type, event.key + suffix, value, value["ts"])


def quantiles(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[min(len(xs) - 1, int(0.99 * len(xs)))]


# ------------------------------------------------------------------------------------------ stream
def bench_stream(settings: Settings, latency_events: int = 5000, latency_rate: float = 500.0) -> dict:
    from coldstart.kafka_local import LocalKafka, free_port
    from coldstart.replay.producer import produce
    from coldstart.streams.topics import ensure_topics

    tmp = Path(tempfile.mkdtemp(prefix="coldstart-bench-"))
    kafka = LocalKafka(version=settings.kafka_version, port=free_port(), data_dir=tmp / "kafka")
    bootstrap = kafka.start()
    s = settings.replace(bootstrap_servers=bootstrap)
    ensure_topics(s)
    events = bestbuy_events(s)
    user_events = sum(1 for e in events if e.type != "item")
    worker = None
    try:
        asyncio.run(produce(events, bootstrap, progress=False))
        raw_rate = asyncio.run(raw_consumer_rate(bootstrap, user_events))
        port = free_port()
        env = {**os.environ, "COLDSTART_BOOTSTRAP_SERVERS": bootstrap, "COLDSTART_WEB_PORT": str(port),
               "COLDSTART_DATA_DIR": str(tmp / "worker"), "COLDSTART_APP_ID": f"bench-{uuid.uuid4().hex[:6]}"}
        worker = subprocess.Popen([sys.executable, "-m", "coldstart.cli", "worker", "--loglevel", "warning"],
                                  env=env, stdout=open(tmp / "worker.log", "wb"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/metrics"
        t_first, t_last = wait_counter(url, "coldstart_events_in_total", user_events, worker, timeout=1500)
        rate = (user_events - t_first[1]) / max(t_last[0] - t_first[0], 1e-9)
        rss = rss_bytes(worker.pid)
        # Warm pass: the same log under new users and event ids. Every text is in the embedding cache
        # now, as in steady state (95% of Best Buy events repeat a text seen before).
        warm = [renamed(e, "~2") for e in events if e.type != "item"]
        t0 = time.perf_counter()
        asyncio.run(produce(warm, bootstrap, progress=False))
        _, t_end = wait_counter(url, "coldstart_events_in_total", 2 * user_events, worker, timeout=900)
        warm_rate = len(warm) / max(t_end[0] - t0, 1e-9)
        # Latency at a fixed rate, timed by the worker's own histogram (Kafka timestamp -> profile written).
        before = scrape(url)
        paced = [renamed(e, "~3") for e in events if e.type != "item"][:latency_events]
        asyncio.run(produce(paced, bootstrap, rate=latency_rate, progress=False))
        wait_counter(url, "coldstart_events_in_total", 2 * user_events + len(paced), worker, timeout=300)
        after = scrape(url)
        p50, p99 = histogram_quantiles(before, after, "coldstart_event_to_profile_seconds")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        kafka.stop()
    return {"events": user_events, "worker_events_per_s": rate, "warm_events_per_s": warm_rate,
            "raw_consumer_events_per_s": raw_rate,
            "latency_p50_s": p50, "latency_p99_s": p99, "rss_bytes": rss,
            "rows": [("events/s, one worker, cold cache", f"{rate:,.0f}", f"{raw_rate:,.0f} raw aiokafka decode",
                      f"{rate / raw_rate:.3f}", ">= 3,000/s"),
                     ("events/s, one worker, warm cache", f"{warm_rate:,.0f}",
                      f"{raw_rate:,.0f} raw aiokafka decode", f"{warm_rate / raw_rate:.3f}", ">= 3,000/s"),
                     (f"event->profile p50 / p99 at {latency_rate:.0f}/s", f"{p50 * 1e3:.0f} / {p99 * 1e3:.0f} ms",
                      "-", "-", "p99 <= 100 ms"),
                     ("worker RSS after replay", f"{rss / 2**20:,.0f} MiB", "-", "-", "<= 1.5 GB")]}


async def raw_consumer_rate(bootstrap: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    from coldstart.streams.catalog import assign_all_partitions

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        await assign_all_partitions(consumer, ("events.search", "events.click"))
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


def scrape(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


def counter_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def wait_counter(url, name, target, proc, timeout):
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            value = counter_sum(scrape(url), name)
        except OSError:
            time.sleep(0.5)
            continue
        now = time.perf_counter()
        if first is None and value > 0:
            first = (now, value)
        if value >= target:
            return first or (now, value), (now, value)
        time.sleep(0.2)
    raise TimeoutError(f"{name} did not reach {target} within {timeout} s")


def histogram_quantiles(before: dict, after: dict, name: str) -> tuple[float, float]:
    buckets = []
    for key, value in after.items():
        if key.startswith(name + "_bucket{"):
            le = key.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    result = []
    for q in (0.5, 0.99):
        want = q * total
        prev_bound, prev_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= want:
                if bound == float("inf"):
                    result.append(prev_bound)
                else:
                    frac = (want - prev_count) / max(count - prev_count, 1e-9)
                    result.append(prev_bound + frac * (bound - prev_bound))
                break
            prev_bound, prev_count = bound, count
    return result[0], result[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
