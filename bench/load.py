"""An open-loop HTTP load generator: requests on a fixed clock, latency from the scheduled time.

Request ``i`` is due at ``start + i / rate``. It is dispatched at that time whatever happened to the
requests before it (a slow answer does not delay the next one, so latency is not hidden by coordinated
omission), and two latencies are recorded for it:

- from the scheduled time (what a visitor arriving at that moment waits: includes any lag of the client
  in dispatching it, e.g. a stalled event loop or a full connection pool), the figure to report;
- from the send time (the moment ``client.get`` is called), to tell the server's share from the client's.

A request that raises (connection refused, timeout) or answers anything but 200 is an error; its latency
is still recorded (up to the failure), so errors do not make the distribution look better.
``classify`` sees each 200's JSON body (e.g. its ``strategy``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

# aiohttp's client, not httpx's: at 200 requests/s httpx.AsyncClient took 1.7-1.8 ms of CPU a request
# here against aiohttp's 0.4-0.6 (README, Measured), and on a 2-core machine the generator's cores are
# the server's: the benchmark measured its own client.
import aiohttp

__all__ = ["LoadResult", "open_loop", "quantile"]


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted sequence (nan when empty).

    >>> quantile([1.0, 2.0, 3.0, 4.0], 0.5), quantile([1.0, 2.0, 3.0, 4.0], 0.99), quantile([], 0.5)
    (3.0, 4.0, nan)
    """
    if not sorted_xs:
        return float("nan")
    return sorted_xs[min(len(sorted_xs) - 1, int(q * len(sorted_xs)))]


@dataclass
class LoadResult:
    rate: float  # requests/s asked for
    seconds: float  # the schedule's length
    sent: int
    ok: int
    errors: int  # exceptions + non-200 answers
    statuses: dict[str, int]  # "200", "503", "ConnectError", ...
    scheduled: list[float] = field(repr=False)  # per request, completion - scheduled time, s
    service: list[float] = field(repr=False)  # per request, completion - send time, s
    dispatch_lag_max_s: float = 0.0  # the latest a request was sent after its scheduled time
    elapsed_s: float = 0.0  # first scheduled time -> last completion
    classes: dict[str, int] = field(default_factory=dict)  # classify(response) counts, 200s only

    def summary(self) -> dict[str, float]:
        s, v = sorted(self.scheduled), sorted(self.service)
        out: dict[str, float] = {"rate": self.rate, "achieved_rate": self.sent / max(self.seconds, 1e-9),
                                 "sent": self.sent, "ok": self.ok, "errors": self.errors,
                                 "dispatch_lag_max_ms": self.dispatch_lag_max_s * 1e3}
        for name, xs in (("", s), ("service_", v)):
            for q, label in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
                out[f"{name}{label}_ms"] = quantile(xs, q) * 1e3
            out[f"{name}max_ms"] = (xs[-1] if xs else float("nan")) * 1e3
        return out


async def open_loop(urls: Sequence[str], rate: float, seconds: float, *, headers: dict | None = None,
                    timeout: float = 10.0, max_connections: int = 256,
                    classify: Callable[[Any], str] | None = None) -> LoadResult:
    """GET ``urls[i % len(urls)]`` for ``i`` in ``range(round(rate * seconds))``, request ``i`` scheduled at
    ``i / rate`` s after the start; waits for every answer (or ``timeout``) before returning."""
    if rate <= 0 or seconds <= 0 or not urls:
        raise ValueError("rate and seconds must be positive and urls non-empty")
    n = max(1, round(rate * seconds))
    scheduled = [0.0] * n
    service = [0.0] * n
    statuses: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    lag_max = 0.0
    connector = aiohttp.TCPConnector(limit=max_connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=timeout)) as client:
        async def one(i: int, due: float) -> None:
            nonlocal lag_max
            sent_at = time.perf_counter()
            lag_max = max(lag_max, sent_at - due)
            try:
                async with client.get(urls[i % len(urls)]) as resp:
                    body = await resp.read()
                    statuses[str(resp.status)] += 1
                    if resp.status == 200 and classify is not None:
                        classes[classify(json.loads(body))] += 1
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
            done = time.perf_counter()
            scheduled[i] = done - due
            service[i] = done - sent_at

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ok = statuses.get("200", 0)
    return LoadResult(rate, seconds, n, ok, n - ok, dict(statuses), scheduled, service, lag_max, elapsed,
                      dict(classes))
