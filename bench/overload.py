"""Overload (issue 8): one worker fed at three times its measured capacity, then left to drain.

1. Capacity: the first ``capacity_events`` user events of the Best Buy log, replayed as fast as the
   producer goes to a worker whose encoder cache is warm (the log once beforehand): events/s consumed.
2. Overload: the log again and again under fresh user ids (so each pass is new users, as a traffic
   peak is), at ``factor`` x capacity for ``minutes``; then nothing, until the worker has consumed all.
3. Meanwhile every ``sample_s``: the worker's resident memory, the part of it RocksDB holds (the profile
   table's shared block cache and memtables, ``coldstart_rocksdb_memory_bytes``) and the backlog
   (sent - consumed).

Nothing lost is checked against a ground truth: every event sent is processed (``bench.stack.PROCESSED``),
none dead-lettered or doubled, and a random sample of users has exactly the events sent for them. The
anomaly guard is off here: a replayed log sends a heavy user's day in seconds, which it would rightly
flag; this run is about capacity, not bots. The curve goes to ``overload.png``.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from pathlib import Path

from coldstart.bench.stack import PROCESSED, counter_sum, rss_bytes, wait_total
from coldstart.local import LocalStack
from coldstart.settings import Settings


def _renamed_forever(base: list, suffix_of_pass, deadline: float, sent_per_user: Counter, tally: dict):
    """The log's user events pass after pass under new user ids, stamped now, until ``deadline``."""
    from coldstart.replay import ReplayEvent

    n = 0
    while True:
        suffix = suffix_of_pass(n)
        for event in base:
            if time.monotonic() >= deadline:
                return
            user = event.value["user_id"] + suffix
            value = {**event.value, "user_id": user, "event_id": event.value["event_id"] + suffix, "ts": time.time()}
            sent_per_user[user] += 1
            tally["sent"] += 1  # read by the sampler thread (the Counter is not safe to iterate there)
            yield ReplayEvent(event.type, user, value, value["ts"])
        n += 1


def bench_overload(settings: Settings, *, minutes: float = 10.0, factor: float = 3.0, capacity_events: int = 3000,
                   sample_s: float = 2.0, check_users: int = 300, out_dir: Path = Path("reports")) -> dict:
    from coldstart.bench.events import bestbuy_events, renamed
    from coldstart.replay.producer import produce

    events = bestbuy_events(settings)
    base = [e for e in events if e.type != "item"]
    items = [e for e in events if e.type == "item"]
    with LocalStack(settings) as stack:
        asyncio.run(produce(items + base[:capacity_events], stack.bootstrap, progress=False))  # warms the cache
        worker = stack.start_worker(anomaly_guard=False)
        wait_total([worker], PROCESSED, capacity_events, timeout=3000)
        stack.wait_ready()

        probe = [renamed(e, "~cap") for e in base[:capacity_events]]
        t0 = time.perf_counter()  # wait_total's clock
        asyncio.run(produce(probe, stack.bootstrap, progress=False))
        _, (t_end, _) = wait_total([worker], PROCESSED, 2 * capacity_events, timeout=3000)
        capacity = capacity_events / max(t_end - t0, 1e-9)
        consumed0 = 2 * capacity_events

        rate = factor * capacity
        sent_per_user: Counter = Counter()
        tally = {"sent": 0}
        # (seconds since start, RSS MiB, backlog events, RocksDB MiB)
        samples: list[tuple[float, float, float, float]] = []
        stop = threading.Event()
        started = time.perf_counter()

        def sample() -> None:
            while not stop.is_set():
                metrics = worker.scrape()
                consumed = counter_sum(metrics, PROCESSED) - consumed0
                samples.append((time.perf_counter() - started, rss_bytes(worker.proc.pid) / 2**20,
                                max(0.0, tally["sent"] - consumed),
                                counter_sum(metrics, "coldstart_rocksdb_memory_bytes") / 2**20))
                stop.wait(sample_s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stream = _renamed_forever(base, lambda n: f"~ov{n}", time.monotonic() + minutes * 60, sent_per_user,
                                  tally)
        summary = asyncio.run(produce(stream, stack.bootstrap, rate=rate, progress=False))
        produced_s = time.perf_counter() - started
        sent = sum(sent_per_user.values())
        _, (t_drained, _) = wait_total([worker], PROCESSED, consumed0 + sent,
                                       timeout=max(600.0, 4 * factor * minutes * 60), poll_s=1.0)
        drain_s = t_drained - started - produced_s
        time.sleep(sample_s)
        stop.set()
        sampler.join(timeout=10)

        metrics = worker.scrape()
        dead = counter_sum(metrics, "coldstart_dlq_total")
        duplicates = counter_sum(metrics, "coldstart_duplicate_events_total")
        rng = random.Random(0)
        checked = rng.sample(sorted(sent_per_user), min(check_users, len(sent_per_user)))
        wrong = {}
        for user in checked:
            n = worker.get(f"/users/{user}/recommendations?k=1", timeout=30).json()["n_events"]
            if n != sent_per_user[user]:
                wrong[user] = (n, sent_per_user[user])

    rss = [s[1] for s in samples]
    backlog = [s[2] for s in samples]
    at_stop = max((s[2] for s in samples if s[0] <= produced_s), default=0.0)  # grows until then
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = out_dir / "overload.png"
    _plot(samples, produced_s, plot, rate, capacity)
    rows = [
        ("capacity, one worker, warm cache", f"{capacity:,.0f} events/s", "-", "-", "-"),
        (f"overload: {factor:g} x capacity for {minutes:g} min", f"{summary.total:,} events at {rate:,.0f}/s",
         f"{sent / produced_s:,.0f}/s achieved", "-", "-"),
        ("backlog when the overload stops / at the end", f"{at_stop:,.0f} / {backlog[-1] if backlog else 0:,.0f} events",
         "-", "-", "grows, then drains to 0"),
        ("drain time after the overload", f"{drain_s:,.0f} s", f"overload lasted {produced_s:,.0f} s", "-", "-"),
        ("worker RSS start / max / end", f"{rss[0]:,.0f} / {max(rss):,.0f} / {rss[-1]:,.0f} MiB" if rss else "-",
         f"RocksDB max {max(s[3] for s in samples):,.0f} MiB" if samples else "-", "-", "bounded"),
        ("events lost / dead-lettered / doubled", f"{sent + consumed0 - counter_sum(metrics, PROCESSED):,.0f}"
         f" / {dead:,.0f} / {duplicates:,.0f}", f"{len(checked) - len(wrong)}/{len(checked)} sampled users exact",
         "-", "0 / 0 / 0"),
    ]
    return {"capacity_events_per_s": capacity, "rate": rate, "sent": sent, "produced_s": produced_s,
            "drain_s": drain_s, "samples": samples, "dead_letters": dead, "duplicates": duplicates,
            "users_checked": len(checked), "users_wrong": wrong, "plot": str(plot), "rows": rows}


def _plot(samples: list[tuple[float, float, float, float]], produced_s: float, path: Path, rate: float,
          capacity: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    top.plot(t, [s[1] for s in samples], label="worker RSS")
    top.plot(t, [s[3] for s in samples], label="of which RocksDB (cache + memtables)")
    top.legend(loc="lower right")
    top.set_ylabel("MiB")
    top.set_ylim(bottom=0)
    bottom.plot(t, [s[2] for s in samples])
    bottom.set_ylabel("backlog (events)")
    bottom.set_xlabel("minutes")
    for ax in (top, bottom):
        ax.axvline(produced_s / 60, color="grey", linestyle="--")
    top.set_title(f"one worker fed {rate:,.0f} events/s ({rate / capacity:.1f} x its capacity) until the dashed line")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
