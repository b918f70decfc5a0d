"""What the stream benchmarks read from real worker processes: counters summed over workers, waits on
them, histogram quantiles between two scrapes, resident memory. The broker and the workers themselves come
from the local toolkit (``coldstart.local``), as for the evaluation.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from coldstart.local import WorkerProcess

__all__ = ["PROCESSED", "counter_sum", "histogram_quantiles", "merged_scrape", "rss_bytes", "stage_breakdown", "total_counter", "wait_total"]


# Events whose batch completed (profiles written, samples acknowledged): the sum of the batch-size
# histogram, observed at the end of each batch. ``coldstart_events_in_total`` is counted as a batch starts,
# so a wait on it returns with the last batch still in flight, and that batch's latencies then land in
# the next measurement's interval (the 60 s "p99" of a paced run right after a bulk replay).
PROCESSED = "coldstart_batch_events_sum"


def counter_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def total_counter(workers: list[WorkerProcess], name: str) -> float:
    total = 0.0
    for w in workers:
        w.alive()
        try:
            total += counter_sum(w.scrape(), name)
        except httpx.HTTPError:  # not listening yet
            pass
    return total


def wait_total(workers: list[WorkerProcess], name: str, target: float, timeout: float,
               poll_s: float = 0.2) -> tuple[tuple[float, float], tuple[float, float]]:
    """Poll until the sum of counter ``name`` over ``workers`` reaches ``target``; returns the first
    (time, value) with a non-zero value and the last one (perf_counter clock)."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        value = total_counter(workers, name)
        now = time.perf_counter()
        if first is None and value > 0:
            first = (now, value)
        if value >= target:
            return first or (now, value), (now, value)
        time.sleep(poll_s)
    raise TimeoutError(f"{name} did not reach {target} within {timeout} s")


def histogram_quantiles(before: dict, after: dict, name: str, qs=(0.5, 0.99), labels: str = "") -> list[float]:
    """Quantiles of a Prometheus histogram over the interval between two scrapes, interpolated
    linearly inside a bucket (the fine buckets of ``streams.metrics`` keep that error small).
    ``labels``: only the series whose labels include it (e.g. ``'stage="encode"'``).

    >>> b = {'h_bucket{le="0.1"}': 0.0, 'h_bucket{le="0.2"}': 0.0, 'h_bucket{le="+Inf"}': 0.0}
    >>> a = {'h_bucket{le="0.1"}': 50.0, 'h_bucket{le="0.2"}': 100.0, 'h_bucket{le="+Inf"}': 100.0}
    >>> [round(x, 3) for x in histogram_quantiles(b, a, "h")]
    [0.1, 0.198]
    """
    buckets: dict[float, float] = {}
    for key, value in after.items():
        if key.startswith(name + "_bucket{") and labels in key:
            le = key.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value - before.get(key, 0.0)
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    result = []
    for q in qs:
        want = q * total
        prev_bound, prev_count = 0.0, 0.0
        value = float("nan")
        for bound, count in ordered:
            if count >= want and total > 0:
                if bound == float("inf"):
                    value = prev_bound
                else:
                    frac = (want - prev_count) / max(count - prev_count, 1e-9)
                    value = prev_bound + frac * (bound - prev_bound)
                break
            prev_bound, prev_count = bound, count
        result.append(value)
    return result


def stage_breakdown(before: dict, after: dict, name: str = "coldstart_batch_stage_seconds"
                    ) -> dict[str, tuple[float, float]]:
    """Mean and p99 seconds per batch of each stage of a ``{stage=...}`` histogram between two scrapes.

    >>> b = {'h_sum{stage="a"}': 1.0, 'h_count{stage="a"}': 1.0}
    >>> a = {'h_sum{stage="a"}': 3.0, 'h_count{stage="a"}': 3.0, 'h_bucket{le="1.0",stage="a"}': 2.0,
    ...      'h_bucket{le="+Inf",stage="a"}': 2.0}
    >>> stage_breakdown(b, a, "h")
    {'a': (1.0, 0.99)}
    """
    out: dict[str, tuple[float, float]] = {}
    for key, total in after.items():
        if not key.startswith(name + '_sum{stage="'):
            continue
        stage = key.split('stage="')[1].split('"')[0]
        count = after.get(f'{name}_count{{stage="{stage}"}}', 0.0) - before.get(f'{name}_count{{stage="{stage}"}}', 0.0)
        if count <= 0:
            continue
        mean = (total - before.get(key, 0.0)) / count
        out[stage] = (mean, histogram_quantiles(before, after, name, (0.99,), labels=f'stage="{stage}"')[0])
    return out


def gc_pauses(before: dict, after: dict, name: str = "coldstart_gc_pause_seconds") -> dict[str, tuple[float, float, float]]:
    """Per generation, the worker's garbage collections between two scrapes: (count, seconds in all, p99
    seconds).

    >>> b = {}
    >>> a = {'g_count{generation="2"}': 4.0, 'g_sum{generation="2"}': 0.2, 'g_bucket{generation="2",le="0.1"}': 4.0,
    ...      'g_bucket{generation="2",le="+Inf"}': 4.0}
    >>> gc_pauses(b, a, "g")
    {'2': (4.0, 0.2, 0.099)}
    """
    out = {}
    for key, count in after.items():
        if not key.startswith(name + '_count{generation="'):
            continue
        gen = key.split('generation="')[1].split('"')[0]
        n = count - before.get(key, 0.0)
        if n <= 0:
            continue
        sum_key = f'{name}_sum{{generation="{gen}"}}'
        total = after.get(sum_key, 0.0) - before.get(sum_key, 0.0)
        p99 = histogram_quantiles(before, after, name, (0.99,), labels=f'generation="{gen}"')[0]
        out[gen] = (n, total, round(p99, 6))
    return dict(sorted(out.items()))


def merged_scrape(workers: list[WorkerProcess]) -> dict[str, float]:
    """The samples of all workers added up (histogram buckets and counters sum across processes)."""
    out: dict[str, float] = {}
    for w in workers:
        for k, v in w.scrape().items():
            out[k] = out.get(k, 0.0) + v
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def machine_busy_seconds() -> float:
    """Every core's non-idle CPU seconds so far (``/proc/stat``: all but idle and iowait; guest is in
    user)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
