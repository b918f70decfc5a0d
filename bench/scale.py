"""``coldstart bench scale``: one app scaled out to 1, 2 and 4 workers on one local broker (issue 11, item 6).

The workers of a ``LocalStack`` are one Faust app, so k of them split the user topics' partitions through
the consumer group (co-partitioned: a worker owns all of a user's events and that user's table shard). The
topics get ``partitions`` (default 8, at least 2 x the largest k) so that 1, 2 and 4 workers each get an
equal share.

Protocol, for each k, on a fresh broker (``LocalStack``; every k starts from the same state: empty topics,
an empty group, new data directories):

1. start k workers together and wait until all are ready and stay ready (the last one to join triggers a
   rebalance the others go through);
2. warm-up, not measured: the first ``events`` records of the Best Buy log under new users
   (``renamed(e, "~w")``). Each new worker starts with a cold embedding cache; after this pass each one
   holds the texts of its own share of users, as in steady state. The clicks also fill every worker's
   item index (every worker reads all of ``events.click``, see below);
3. throughput: the same records under other new users (``"~t"``) produced as fast as possible; the
   interval runs from the first send to the moment the events whose batch completed (``PROCESSED``),
   summed over the k workers, reach the target. Aggregate events/s = events / interval; per-worker events/s
   = that worker's own ``PROCESSED`` delta / the same interval (the producer runs inside the interval, on
   the same cores, as in ``bench stream``'s warm pass);
4. latency: the first ``paced_events`` of them under new users (``"~p"``) at a fixed aggregate ``rate``
   (``paced_latency``): event->profile p50/p99 merged over the workers (their histograms summed), and each
   worker's own p99.

Scaling efficiency at k = aggregate_k / (k x aggregate_1). The capacity table (:func:`capacity_table`) is
derived from the mean per-worker rate at the largest k whose efficiency is at least ``efficient`` (0.7):
beyond it the machine, not the worker, is what was measured.

Caveats that the rows repeat:

- one machine: the broker, the producer and the k workers share ``os.cpu_count()`` cores (recorded). A
  worker runs torch with one thread (``COLDSTART_TORCH_THREADS=1``), so on 2 cores k=2 can still use a core
  each, but k=4 workers share 2 cores with the broker: the per-worker rate at k=4 is a CPU-bound floor,
  not what a worker with its own core does;
- every worker reads every partition of ``events.click`` for its item index (popularity, learned item
  texts: a worker must recommend every item), on the same writer thread as its batches. That part of a
  worker's work grows with the aggregate click rate, not with its share, so the capacity table (linear in
  workers) is optimistic at 100k events/s; the "CPU s per 1k events" row shows how the total work grows
  with k;
- the machine may be shared: each k's throughput pass records how many cores the workers, the broker,
  this process (the producer) and everything else (``foreign``: from ``/proc/stat``) kept busy, so a
  figure measured beside someone else's job says so.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path

from coldstart.bench.events import bestbuy_events, renamed
from coldstart.settings import Settings

__all__ = ["bench_scale", "capacity_table", "cost_per_worker"]

CPU = "process_cpu_seconds_total"
HITS = 'coldstart_embedding_cache_lookups_total{result="hit"}'
MISSES = 'coldstart_embedding_cache_lookups_total{result="miss"}'


def capacity_table(per_worker_rate: float, targets=(1_000, 10_000, 100_000), headroom: float = 0.7) -> list[dict]:
    """Workers and partitions for each target rate (events/s), from a measured per-worker rate.

    ``workers = ceil(target / (per_worker_rate * headroom))``: each worker is planned at ``headroom`` of
    what it was measured to do, leaving room for bursts, a rebalance's catch-up and a lost worker's
    partitions. ``partitions`` = the smallest power of two >= 2 x workers, because partitions bound the
    parallelism and cannot be cheaply increased later:

    - a partition is consumed by one worker of the group, so workers beyond the partition count sit idle;
    - a user's partition is ``hash(user_id) % partitions`` (the user topics are co-partitioned and the
      profile table's changelog follows them): more partitions later move users to other partitions, and
      their profiles with them (new topics, a re-keying replay, rebuilt tables), so it is a migration;
    - 2 x leaves room to double the workers without one; a power of two makes any later doubling a split
      (``h % 2n`` is ``h % n`` or ``h % n + n``: each old partition's users go to exactly two new ones)
      and lets 1, 2, 4, ... workers share the partitions evenly.

    >>> [(r["target"], r["workers"], r["partitions"]) for r in capacity_table(1_000)]
    [(1000, 2, 4), (10000, 15, 32), (100000, 143, 512)]
    >>> capacity_table(0)
    Traceback (most recent call last):
    ...
    ValueError: per_worker_rate must be a positive number of events/s, got 0
    """
    if not (isinstance(per_worker_rate, (int, float)) and math.isfinite(per_worker_rate) and per_worker_rate > 0):
        raise ValueError(f"per_worker_rate must be a positive number of events/s, got {per_worker_rate!r}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom must be in (0, 1], got {headroom!r}")
    rows = []
    for target in targets:
        if not target > 0:
            raise ValueError(f"a target rate must be positive, got {target!r}")
        workers = max(1, math.ceil(target / (per_worker_rate * headroom)))
        partitions = 1 << max(0, (2 * workers - 1).bit_length())  # smallest power of two >= 2 * workers
        rows.append({"target": target, "workers": workers, "partitions": partitions,
                     "per_worker_rate": per_worker_rate, "headroom": headroom})
    return rows


def cost_per_worker(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares line through (k workers, CPU ms per event summed over the workers): (the cost that
    does not grow with k, the cost each added worker adds). The second is the work every worker does for
    every event of the whole stream (following all of ``events.click`` for its item index) plus each
    process's fixed overhead; with it, k workers of one core each top out near ``1000 / slope`` events/s
    however large k gets (their share of the batch path shrinks, the duplicated part does not).

    >>> [round(x, 3) for x in cost_per_worker({1: 0.65, 2: 0.75, 4: 0.93})]
    [0.56, 0.093]
    """
    if len(points) < 2:
        return (next(iter(points.values()), float("nan")), float("nan"))
    ks, ys = list(points), list(points.values())
    mk, my = sum(ks) / len(ks), sum(ys) / len(ys)
    slope = sum((k - mk) * (y - my) for k, y in zip(ks, ys)) / sum((k - mk) ** 2 for k in ks)
    return my - slope * mk, slope


def bench_scale(settings: Settings, workers=(1, 2, 4), events: int | None = 20_000, rate: float = 500.0,
                paced_events: int = 5_000, partitions: int = 8, efficient: float = 0.7,
                headroom: float = 0.7) -> dict:
    """k workers of one app on one broker for each k in ``workers``: aggregate and per-worker events/s,
    event->profile p50/p99 at ``rate``/s, scaling efficiency against k=1 and a capacity table (see the
    module docstring for the protocol and its caveats). ``events``: the Best Buy log prefix per pass."""
    from coldstart.bench.stack import PROCESSED, counter_sum, histogram_quantiles, merged_scrape, wait_total
    from coldstart.bench.latency import paced_latency
    from coldstart.local import LocalStack
    from coldstart.replay.producer import produce

    workers = tuple(sorted(set(workers)))
    if not workers or workers[0] < 1:
        raise ValueError(f"workers must be positive counts, got {workers!r}")
    base = [e for e in bestbuy_events(settings, events) if e.type != "item"]
    paced_base = base[:paced_events]
    parts = max(settings.partitions, partitions, 2 * workers[-1])
    s = settings.replace(partitions=parts)
    load_before = os.getloadavg()
    runs: dict[int, dict] = {}
    t_all = time.perf_counter()
    for k in workers:
        with LocalStack(s) as stack:
            t0 = time.perf_counter()
            ws = [stack.start_worker() for _ in range(k)]
            settle(stack, ws)
            startup_s = time.perf_counter() - t0
            # 2. warm-up (not measured)
            count0 = counter_sum(merged_scrape(ws), PROCESSED)
            asyncio.run(produce([renamed(e, "~w") for e in base], stack.bootstrap, progress=False))
            wait_total(ws, PROCESSED, count0 + len(base), timeout=1800)
            settle(stack, ws)
            # 3. throughput
            before = [w.scrape() for w in ws]
            count0 = sum(counter_sum(m, PROCESSED) for m in before)
            cpu0 = cpu_snapshot(stack)
            t0 = time.perf_counter()
            asyncio.run(produce([renamed(e, "~t") for e in base], stack.bootstrap, progress=False))
            _, (t_end, _) = wait_total(ws, PROCESSED, count0 + len(base), timeout=1800)
            cpu1 = cpu_snapshot(stack)
            after = [w.scrape() for w in ws]
            interval = max(t_end - t0, 1e-9)
            done = [counter_sum(a, PROCESSED) - counter_sum(b, PROCESSED) for a, b in zip(after, before)]
            cpu_s = sum(a.get(CPU, 0.0) - b.get(CPU, 0.0) for a, b in zip(after, before))
            cpu = {name: (cpu1[name] - cpu0[name]) / interval for name in cpu0}  # cores busy, on average
            # What the rest of the machine did meanwhile: neither the broker, this process (the producer)
            # nor the workers (another engineer's job on a shared machine shows up here).
            cpu["foreign"] = max(0.0, cpu["machine"] - cpu["broker"] - cpu["bench"] - cpu_s / interval)
            hits = sum(a.get(HITS, 0.0) - b.get(HITS, 0.0) for a, b in zip(after, before))
            misses = sum(a.get(MISSES, 0.0) - b.get(MISSES, 0.0) for a, b in zip(after, before))
            # 4. latency at a fixed aggregate rate
            p_before = [w.scrape() for w in ws]
            paced = paced_latency(stack.bootstrap, ws, [renamed(e, "~p") for e in paced_base], rate)
            p_after = [w.scrape() for w in ws]
            per_worker_p = [histogram_quantiles(b, a, "coldstart_event_to_profile_seconds")
                            for b, a in zip(p_before, p_after)]
            paced_done = [counter_sum(a, PROCESSED) - counter_sum(b, PROCESSED) for a, b in zip(p_after, p_before)]
        runs[k] = {"workers": k, "events": len(base), "startup_s": startup_s, "interval_s": interval,
                   "aggregate_per_s": sum(done) / interval, "per_worker_per_s": [d / interval for d in done],
                   "share": [d / max(sum(done), 1.0) for d in done],
                   "cpu_s_per_1k_events": 1000.0 * cpu_s / max(sum(done), 1.0),
                   "cpu_utilisation": cpu_s / interval / (os.cpu_count() or 1),
                   "cache_hit_rate": hits / max(hits + misses, 1.0),
                   "cores_busy": {**cpu, "workers": cpu_s / interval}, "load_avg": os.getloadavg(),
                   "paced_rate": rate, "paced_events": len(paced_base),
                   "profile_p50_s": paced.profile_p50_s, "profile_p99_s": paced.profile_p99_s,
                   "wait_p99_s": paced.wait_p99_s, "batch_p99_s": paced.batch_p99_s,
                   "per_worker_p50_s": [p[0] for p in per_worker_p], "per_worker_p99_s": [p[1] for p in per_worker_p],
                   "per_worker_paced_events": paced_done}
    one = runs[workers[0]]
    agg1 = one["aggregate_per_s"] / workers[0]  # per worker at the smallest k (k=1 by default)
    for k, r in runs.items():
        r["efficiency"] = r["aggregate_per_s"] / (k * agg1)
    sized_k = max([k for k, r in runs.items() if r["efficiency"] >= efficient] or [workers[0]])
    per_worker_rate = runs[sized_k]["aggregate_per_s"] / sized_k
    capacity = capacity_table(per_worker_rate, headroom=headroom)
    fixed_ms, per_worker_ms = cost_per_worker({k: r["cpu_s_per_1k_events"] for k, r in runs.items()})
    load_after = os.getloadavg()
    cpus = os.cpu_count()
    rows = [("machine", f"{cpus} CPUs; load avg {load_before[0]:.2f} -> {load_after[0]:.2f}",
             "broker, producer and all k workers share them", "-",
             f"per-worker rate at k > {cpus} is a CPU-bound floor")]
    for k, r in runs.items():
        ms = lambda xs: " / ".join(f"{x * 1e3:,.0f}" for x in xs)  # noqa: E731
        rows += [
            (f"{k} worker(s): events/s aggregate", f"{r['aggregate_per_s']:,.0f}",
             f"{k} x {agg1:,.0f} (linear from k={workers[0]})", f"{r['efficiency']:.2f}",
             f"efficiency >= {efficient} while k <= cores"),
            (f"{k} worker(s): events/s per worker", " / ".join(f"{x:,.0f}" for x in r["per_worker_per_s"]),
             f"{agg1:,.0f} at k={workers[0]}", f"{r['aggregate_per_s'] / k / agg1:.2f}",
             "CPU-bound floor" if k > (cpus or 1) else "-"),
            (f"{k} worker(s): event->profile p50 / p99 at {rate:,.0f}/s", f"{r['profile_p50_s'] * 1e3:,.0f} / "
             f"{r['profile_p99_s'] * 1e3:,.0f} ms", f"p99 per worker {ms(r['per_worker_p99_s'])} ms; k={workers[0]} "
             f"p99 {one['profile_p99_s'] * 1e3:,.0f} ms", f"{r['profile_p99_s'] / one['profile_p99_s']:.2f}",
             "p99 <= 100 ms"),
            (f"{k} worker(s): CPU s per 1k events (all workers)", f"{r['cpu_s_per_1k_events']:.2f}",
             f"{one['cpu_s_per_1k_events']:.2f} at k={workers[0]}; cache hits {r['cache_hit_rate']:.0%}; "
             f"machine CPU {r['cpu_utilisation']:.0%} by workers",
             f"{r['cpu_s_per_1k_events'] / one['cpu_s_per_1k_events']:.2f}", "-"),
            (f"{k} worker(s): cores busy during the throughput pass", f"workers {r['cores_busy']['workers']:.2f}, "
             f"broker {r['cores_busy']['broker']:.2f}, producer {r['cores_busy']['bench']:.2f}",
             f"other processes {r['cores_busy']['foreign']:.2f} of {cpus}", "-",
             "other processes ~0 for a clean figure"),
        ]
    if per_worker_ms == per_worker_ms:  # not NaN: two or more k measured
        ceiling = 1000.0 / per_worker_ms if per_worker_ms > 0 else float("inf")
        rows.append(("CPU ms per event = a + b x workers", f"a {fixed_ms:.2f}, b {per_worker_ms:.3f}",
                     "b: every worker follows every click (item index) + per-process overhead", "-",
                     f"one core per worker tops out near {ceiling:,.0f} events/s at any k"))
    for c in capacity:
        rows.append((f"capacity: {c['target']:,} events/s", f"{c['workers']} workers, {c['partitions']} partitions",
                     f"{per_worker_rate:,.0f}/s per worker (k={sized_k}) x {headroom} headroom", "-",
                     "partitions: power of two >= 2 x workers"))
    return {"cpus": cpus, "partitions": parts, "load_avg_before": load_before, "load_avg_after": load_after,
            "runtime_s": time.perf_counter() - t_all, "runs": {str(k): r for k, r in runs.items()},
            "cpu_ms_per_event_fixed": fixed_ms, "cpu_ms_per_event_per_worker": per_worker_ms,
            "sized_from_workers": sized_k, "per_worker_rate": per_worker_rate, "capacity": capacity,
            "rows": rows}


def cpu_snapshot(stack) -> dict[str, float]:
    """CPU seconds so far: the whole machine (busy, from /proc/stat), the broker (its pid file) and this
    process (the producer and the polling)."""
    import resource

    from coldstart.bench.stack import machine_busy_seconds, process_cpu_seconds

    machine = machine_busy_seconds()
    broker = 0.0
    if stack.kafka is not None:
        try:
            broker = process_cpu_seconds(int((Path(stack.kafka.data_dir) / "broker.pid").read_text().strip()))
        except (OSError, ValueError, IndexError):
            pass
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"machine": machine, "broker": broker, "bench": own.ru_utime + own.ru_stime}


def settle(stack, workers, stable_s: float = 3.0, timeout: float = 600.0) -> None:
    """Until every worker is ready twice in a row ``stable_s`` apart: the last worker to join the group
    triggers a rebalance that the others, already found ready, go through."""
    deadline = time.monotonic() + timeout
    while True:
        stack.wait_ready(max(1.0, deadline - time.monotonic()))
        time.sleep(stable_s)
        if all(_healthy(w) for w in workers):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers)} workers did not settle within {timeout:.0f} s")


def _healthy(worker) -> bool:
    import httpx

    try:
        return worker.get("/health", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False
