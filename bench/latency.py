"""Latency under a steady load: event->profile at a fixed event rate, and recommendation requests at a
fixed request rate while the worker ingests (the promise "a visitor's next page reflects what they did").

Event latency is the worker's own histogram (Kafka timestamp -> profile written), split at the start of
the batch (``coldstart_event_to_batch_seconds``: consumer fetch + batching wait) so the report says
where the time goes. Request latency is measured by the client (httpx), end to end.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from coldstart.bench.stack import (PROCESSED, gc_pauses, histogram_quantiles, machine_busy_seconds, merged_scrape,
                                   process_cpu_seconds, stage_breakdown, wait_total)
from coldstart.local import WorkerProcess


@dataclass
class PacedResult:
    rate: float
    events: int
    profile_p50_s: float
    profile_p99_s: float
    wait_p50_s: float  # Kafka timestamp -> batch start
    wait_p99_s: float
    batch_p50_s: float
    batch_p99_s: float
    requests: "RequestResult | None" = None
    # stage -> (mean, p99) seconds per batch (``coldstart_batch_stage_seconds``): where a batch goes
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Cores busy over the interval: the workers, this process (producer and request load), the machine.
    # A worker near 1.0 is held by its GIL; a machine near its core count is saturated whatever the worker.
    cpu: dict[str, float] = field(default_factory=dict)
    # generation -> (collections, seconds in all, p99 seconds) of the workers' garbage collections
    gc: dict[str, tuple[float, float, float]] = field(default_factory=dict)


@dataclass
class RequestResult:
    rate: float
    sent: int
    ok: int
    p50_s: float
    p99_s: float


def paced_latency(bootstrap: str, workers: list[WorkerProcess], events, rate: float,
                  request_users: list[str] | None = None, request_rate: float = 200.0,
                  base_count: float | None = None) -> PacedResult:
    """Produce ``events`` at ``rate``/s and read the workers' latency histograms over that interval;
    with ``request_users``, ask for their recommendations at ``request_rate``/s meanwhile."""
    from coldstart.replay.producer import produce

    before = merged_scrape(workers)
    cpu_before, t_before = cpu_seconds([w.proc.pid for w in workers]), time.monotonic()
    if base_count is None:
        from coldstart.bench.stack import counter_sum
        base_count = counter_sum(before, PROCESSED)

    async def both():
        duration = len(events) / rate
        load = None
        if request_users:
            load = asyncio.create_task(request_load([w.url for w in workers], request_users,
                                                    request_rate, duration))
        await produce(events, bootstrap, rate=rate, progress=False)
        return await load if load else None

    requests = asyncio.run(both())
    wait_total(workers, PROCESSED, base_count + len(events), timeout=600)
    # No settling sleep: a batch observes its latencies before its size, which is what PROCESSED sums.
    after = merged_scrape(workers)
    elapsed = max(time.monotonic() - t_before, 1e-9)
    cpu = {k: round((v - cpu_before[k]) / elapsed, 2) for k, v in cpu_seconds([w.proc.pid for w in workers]).items()}
    p = histogram_quantiles(before, after, "coldstart_event_to_profile_seconds")
    w = histogram_quantiles(before, after, "coldstart_event_to_batch_seconds")
    b = histogram_quantiles(before, after, "coldstart_batch_seconds")
    return PacedResult(rate, len(events), p[0], p[1], w[0], w[1], b[0], b[1], requests,
                       stage_breakdown(before, after), cpu, gc_pauses(before, after))


def cpu_seconds(worker_pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of the worker processes (together), of this process, and of the whole machine
    (every core's non-idle time)."""
    import os

    mine = os.times()
    return {"workers": sum(process_cpu_seconds(pid) for pid in worker_pids),
            "this_process": mine.user + mine.system, "machine": machine_busy_seconds()}


async def request_load(base_urls: list[str], users: list[str], rate: float, duration: float) -> RequestResult:
    """GET /users/{id}/recommendations for real user ids at ``rate``/s for ``duration`` s, round-robin
    over the workers (bench.load's open loop: latency from each request's scheduled time)."""
    from coldstart.bench.load import open_loop, quantile

    urls = [f"{base_urls[i % len(base_urls)]}/users/{user}/recommendations?k=10" for i, user in enumerate(users)]
    r = await open_loop(urls, rate, duration)
    latencies = sorted(r.scheduled)
    return RequestResult(rate, r.sent, r.ok, quantile(latencies, 0.5), quantile(latencies, 0.99))
