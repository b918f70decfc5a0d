"""``coldstart bench serve``: GET /users/{id}/recommendations at a fixed request rate while one worker
ingests a steady event rate, beside the same request rate against the same worker idle (issue 11).

One local broker and one worker. The first ``ingest_rate * seconds`` Best Buy events are replayed and
consumed first, so the requests go to users the replay has already produced (real profiles) and every
text of the steady phase is in the embedding cache, as in steady state (the stream benchmark's warm
pass). Then, with the same user ids (shuffled once, round-robin) and the open-loop generator of
``bench/load.py``:

1. idle: ``rate`` requests/s for ``seconds``, no events (the baseline);
2. ingest: the same requests while the log's same events under new users (``renamed``) are produced at
   ``ingest_rate``/s, paced as the stream benchmark's steady phase (``produce(rate=...)``); the worker's
   own histograms give event->profile latency over that phase.

Latency is reported from each request's scheduled time (the figure against the target) and from its
send time; the worker's own ``recommendation_seconds`` histogram says how much of it is the view itself.
The producer runs in a thread of this process (its own event loop), so it does not share the generator's
loop; the client, the producer, the worker and the broker share this machine's cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import time
from pathlib import Path
from urllib.parse import quote

from coldstart.bench.events import bestbuy_events, renamed
from coldstart.bench.load import LoadResult, open_loop
from coldstart.settings import Settings

TARGET_P99_MS = 20.0


def wait_replica_caught_up(replica, worker, n_users: int, timeout: float = 300.0) -> None:
    """Until the replica holds the replay's profiles (95% of its users: the anomaly guard may have kept a
    bot-like one out) and the worker's latest ranker checkpoint (its /health ``ranker_steps`` equal to the
    worker's ``coldstart_ranker_steps``), so that it answers as the worker would."""
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        health = replica.get("/health").json()
        steps = worker.scrape().get("coldstart_ranker_steps", -1)
        if health.get("profiles", 0) >= 0.95 * n_users and health.get("ranker_steps") == steps:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the replica did not catch up with the worker within {timeout:.0f} s: {health}")


def produce_when_told(events, bootstrap: str, rate: float, go, results) -> None:
    """The ingest phase's producer, in a child process: say "ready", wait for ``go``, send ``events`` at
    ``rate``/s, put ``(summary, CPU seconds it took)`` (or the exception) on ``results``."""
    from coldstart.replay.producer import produce

    results.put("ready")
    go.wait()
    try:
        started = os.times()
        summary = asyncio.run(produce(events, bootstrap, rate=rate, progress=False))
        done = os.times()
        results.put((summary, done.user + done.system - started.user - started.system))
    except BaseException as exc:  # reported by the parent, not lost in the child
        results.put(exc)


def bench_serve(settings: Settings, rate: float = 200.0, seconds: float = 30.0, ingest_rate: float = 500.0,
                warmup_s: float = 2.0, replica: bool = False) -> dict:
    from coldstart.bench.stack import (PROCESSED, counter_sum, gc_pauses, histogram_quantiles, machine_busy_seconds,
                                       merged_scrape, process_cpu_seconds, wait_total)
    from coldstart.local import LocalStack
    from coldstart.replay.producer import produce

    n_ingest = max(1, round(ingest_rate * seconds))
    seed = [e for e in bestbuy_events(settings, n_ingest) if e.type != "item"]
    users = sorted({e.value["user_id"] for e in seed})
    random.Random(0).shuffle(users)
    headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else None

    def strategy(body) -> str:
        return body.get("strategy", "?")

    with LocalStack(settings) as stack:
        asyncio.run(produce(seed, stack.bootstrap, progress=False))
        worker = stack.start_worker()
        wait_total([worker], PROCESSED, len(seed), timeout=1800)
        stack.wait_ready()
        server = worker
        if replica:  # the requests go to a serving replica instead (coldstart serve, streams/replica.py)
            server = stack.start_replica(worker)
            stack.wait_ready()
            wait_replica_caught_up(server, worker, len(users))
        serving = [worker] if server is worker else [worker, server]
        urls = [f"{server.url}/users/{quote(u, safe='')}/recommendations?k=10" for u in users]

        def load(secs: float) -> LoadResult:
            return asyncio.run(open_loop(urls, rate, secs, headers=headers, classify=strategy))

        load(warmup_s)  # connections, the view's first calls: not counted

        def cpu() -> dict[str, float]:  # CPU seconds so far of each process on this machine's cores
            mine = os.times()
            out = {"worker": process_cpu_seconds(worker.proc.pid)}
            if server is not worker:
                out["replica"] = process_cpu_seconds(server.proc.pid)
            if stack.kafka is not None:
                out["broker"] = process_cpu_seconds(int((Path(stack.kafka.data_dir) / "broker.pid").read_text()))
            return {**out, "this process (load generator)": mine.user + mine.system,
                    "machine": machine_busy_seconds()}

        before = merged_scrape(serving)
        cpu0, t0 = cpu(), time.perf_counter()
        idle = load(seconds)
        cpu1, t1 = cpu(), time.perf_counter()
        mid = merged_scrape(serving)

        steady = [renamed(e, "~serve") for e in seed]
        base_count = counter_sum(mid, PROCESSED)
        # The producer in a process of its own: in a thread of this one it shared the load generator's
        # GIL, and the generator fell seconds behind its own schedule (it measured itself).
        ctx = multiprocessing.get_context("spawn")
        go, results = ctx.Event(), ctx.Queue()
        producer = ctx.Process(target=produce_when_told, args=(steady, stack.bootstrap, ingest_rate, go, results),
                               name="bench-serve-ingest", daemon=True)
        producer.start()
        if results.get(timeout=300) != "ready":
            raise RuntimeError("the ingest producer did not start")
        cpu_go, t_go = cpu(), time.perf_counter()
        go.set()
        busy = load(seconds)
        cpu2, t2 = cpu(), time.perf_counter()
        outcome = results.get(timeout=1800)
        producer.join(timeout=60)
        if isinstance(outcome, BaseException):
            raise outcome
        produced = {"summary": outcome[0]}
        cpu_go["producer"], cpu2["producer"] = 0.0, outcome[1]
        t_sent = time.perf_counter()
        _, (t_done, _) = wait_total([worker], PROCESSED, base_count + len(steady), timeout=1800)
        # A batch observes its latencies before its size (PROCESSED): nothing left to settle.
        after = merged_scrape(serving)

    view_idle = histogram_quantiles(before, mid, "coldstart_recommendation_seconds")
    view_busy = histogram_quantiles(mid, after, "coldstart_recommendation_seconds")
    profile = histogram_quantiles(mid, after, "coldstart_event_to_profile_seconds")
    gc_idle, gc_busy = gc_pauses(before, mid), gc_pauses(mid, after)

    def gcs(found: dict) -> str:
        return ", ".join(f"gen {g}: {n:,.0f} for {t * 1e3:,.0f} ms (p99 {p * 1e3:,.1f} ms)"
                         for g, (n, t, p) in found.items()) or "none"
    cores_idle = {k: (cpu1[k] - cpu0[k]) / (t1 - t0) for k in cpu0}  # cores busy, on average
    cores_busy = {k: (cpu2[k] - cpu_go[k]) / (t2 - t_go) for k in cpu_go}

    def cores(found: dict) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in found.items())
    summary = produced["summary"]
    achieved_ingest = len(steady) / max(summary.seconds, 1e-9)
    i, b = idle.summary(), busy.summary()
    met = b["p99_ms"] <= TARGET_P99_MS and b["errors"] == 0

    def lat(s: dict, prefix: str = "") -> str:
        return " / ".join(f"{s[f'{prefix}{q}_ms']:,.1f}" for q in ("p50", "p90", "p99", "max")) + " ms"

    who = "the replica" if replica else "the worker"
    rows = [
        (f"GET recommendations p50 / p90 / p99 / max at {rate:.0f}/s while ingesting {ingest_rate:.0f}/s "
         f"(from the scheduled time; served by {who})", lat(b), f"idle worker {lat(i)}", f"{b['p99_ms'] / i['p99_ms']:.2f}",
         f"p99 <= {TARGET_P99_MS:.0f} ms: {'met' if met else 'not met'}"),
        ("  same, from the send time", lat(b, "service_"), f"idle {lat(i, 'service_')}", "-", "-"),
        (f"  {who}'s view itself p50 / p99", f"{view_busy[0] * 1e3:,.1f} / {view_busy[1] * 1e3:,.1f} ms",
         f"idle {view_idle[0] * 1e3:,.1f} / {view_idle[1] * 1e3:,.1f} ms", "-", "-"),
        ("  requests sent / errors (ingest; idle)", f"{busy.sent:,} / {busy.errors}",
         f"{idle.sent:,} / {idle.errors}", "-", "0 errors"),
        ("  answered/s (ingest; idle): below the rate, the worker or client is saturated and queues",
         f"{busy.ok / max(busy.elapsed_s, 1e-9):,.0f}/s over {busy.elapsed_s:,.0f} s",
         f"{idle.ok / max(idle.elapsed_s, 1e-9):,.0f}/s over {idle.elapsed_s:,.0f} s", "-", f"{rate:.0f}/s"),
        ("  strategy of the 200s (ingest)", ", ".join(f"{k} {v:,}" for k, v in sorted(busy.classes.items())),
         ", ".join(f"{k} {v:,}" for k, v in sorted(idle.classes.items())), "-", "-"),
        ("  generator's worst dispatch lag (ingest; idle)", f"{b['dispatch_lag_max_ms']:,.1f} ms",
         f"{i['dispatch_lag_max_ms']:,.1f} ms", "-", "-"),
        (f"  event->profile p50 / p99 in that phase ({achieved_ingest:,.0f} events/s produced)",
         f"{profile[0] * 1e3:,.0f} / {profile[1] * 1e3:,.0f} ms",
         f"last event consumed {t_done - t_sent:,.1f} s after the last send", "-", "p99 <= 100 ms"),
        (f"  cores busy (ingest; idle), of this machine's {os.cpu_count()}", cores(cores_busy), cores(cores_idle), "-", "-"),
        (f"  garbage collections of {'the worker and the replica' if replica else 'the worker'} (ingest; idle): "
         "each holds its process's GIL", gcs(gc_busy), gcs(gc_idle),
         "-", "-"),
    ]
    for row in rows:  # one line each: the shared table wraps these long labels at 80 columns
        print(f"{row[0].strip()}: {row[1]}  [baseline: {row[2]}; ratio {row[3]}; target {row[4]}]")
    return {"rate": rate, "seconds": seconds, "ingest_rate": ingest_rate, "replica": replica, "achieved_ingest_rate": achieved_ingest,
            "users": len(users), "seed_events": len(seed), "target_met": met,
            "ingest": {**b, "elapsed_s": busy.elapsed_s, "statuses": busy.statuses, "classes": busy.classes},
            "idle": {**i, "elapsed_s": idle.elapsed_s, "statuses": idle.statuses, "classes": idle.classes},
            "view_p50_p99_s": {"ingest": view_busy, "idle": view_idle},
            "event_to_profile_p50_p99_s": profile, "drain_after_last_send_s": t_done - t_sent,
            "gc_pauses": {"ingest": gc_busy, "idle": gc_idle},
            "cores_busy": {"ingest": cores_busy, "idle": cores_idle}, "rows": rows}
