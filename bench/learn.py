"""``coldstart bench learn``: what the worker's ``learn`` stage (the ranker's steps and the stream
statistics) costs a batch, alone and beside a thread that holds the GIL part of the time (issue 11).

In a worker the batch thread shares one GIL with the event loop and aiokafka's fetcher, and every torch
call hands the GIL over and waits to get it back: py-spy on a worker at 500 events/s found the batch
thread holding the GIL for only a third of its time in ``learn``. This benchmark measures that effect
without a broker: the worker's code objects (:class:`~coldstart.evaluation.inprocess.InProcessPipeline`)
warmed on the start of the Best Buy log, then ``learn_clicks`` timed batch by batch, alternately alone
and while a second thread runs pure Python for ``duty`` of every 2 ms (a stand-in for the event loop),
so both arms see the same state of the ranker. Also counted: torch calls per ranker step (each one a
GIL handover). The ratio beside / alone is what contention multiplies a step's cost by.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from coldstart.settings import Settings

__all__ = ["LearnCost", "bench_learn", "count_torch_calls"]


@dataclass(frozen=True)
class LearnCost:
    batches: int
    steps: int  # ranker steps taken in the timed batches
    alone_mean_s: float
    alone_p99_s: float
    beside_mean_s: float
    beside_p99_s: float
    torch_calls_per_step: float


class count_torch_calls:
    """Counts the torch functions and tensor methods called inside the ``with`` block.

    >>> import torch
    >>> with count_torch_calls() as c:
    ...     x = torch.zeros(2)
    ...     _ = x.add(1).sum(), x.device, x.shape
    >>> c.calls
    3
    """

    def __enter__(self) -> "count_torch_calls":
        from torch.overrides import TorchFunctionMode

        counter = self

        class _Count(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                # Attribute reads (``t.device``, ``t.shape``) come through here too but run no kernel
                # and keep the GIL: only calls are counted.
                if getattr(func, "__name__", "") != "__get__":
                    counter.calls += 1
                return func(*args, **(kwargs or {}))

        self.calls = 0
        self._mode = _Count()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


class _Contender:
    """A thread that, while switched on, runs pure Python for ``duty`` of every 2 ms and sleeps the rest."""

    def __init__(self, duty: float) -> None:
        self.duty = duty
        self.on = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-contender", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        busy, idle = 0.002 * self.duty, 0.002 * (1.0 - self.duty)
        while not self.stop.is_set():
            if not self.on.wait(0.05):
                continue
            t = time.perf_counter()
            while time.perf_counter() - t < busy:
                d = {}
                for i in range(50):
                    d[i] = i
            time.sleep(idle)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def measure(settings: Settings, warm: int = 20_000, batches: int = 120, batch_size: int = 50,
            duty: float = 0.6) -> LearnCost:
    import torch

    from coldstart.bench.events import bestbuy_events
    from coldstart.contract import parse_click, parse_search
    from coldstart.evaluation.inprocess import InProcessPipeline
    from coldstart.replay.producer import encode

    events = [e for e in bestbuy_events(settings) if e.type in ("search", "click")]
    needed = warm + (batches + 4) * batch_size
    if len(events) < needed:
        raise ValueError(f"the log has {len(events)} events, fewer than the {needed} asked for")
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)  # as a worker runs
    pipe = InProcessPipeline(settings)
    for e in events[:warm]:
        pipe.learn_one(e)
    recommender, processor = pipe.recommender, pipe.processor
    processor.click_hook = None  # learn is timed on its own below, then the batch is applied

    def parsed(e):
        key, value = encode(e)
        return (parse_search if e.type == "search" else parse_click)(value, key, now=time.time())

    def run_batch(batch, timed: list[float] | None = None, counter: count_torch_calls | None = None) -> None:
        profiles = {u: pipe.profiles[u] for u in {ev.user_id for ev in batch} if u in pipe.profiles}
        t = time.perf_counter()
        if counter is not None:
            with counter:
                recommender.learn_clicks(batch, profiles)
        else:
            recommender.learn_clicks(batch, profiles)
        if timed is not None:
            timed.append(time.perf_counter() - t)
        pipe.profiles.update(processor.process(batch, profiles).profiles)

    tail = [parsed(e) for e in events[warm:needed]]
    chunks = [tail[i:i + batch_size] for i in range(0, len(tail), batch_size)]
    # Calls per step first (counting slows the calls down, so these batches are not timed).
    steps0, calls = recommender.ranker.steps, 0
    for batch in chunks[:4]:
        counter = count_torch_calls()
        run_batch(batch, counter=counter)
        calls += counter.calls
    per_step = calls / max(recommender.ranker.steps - steps0, 1)
    alone: list[float] = []
    beside: list[float] = []
    contender = _Contender(duty)
    steps0 = recommender.ranker.steps
    try:
        for i, batch in enumerate(chunks[4:]):  # alternately, so both arms see the same stretch of stream
            if i % 2:
                contender.on.set()
                time.sleep(0.004)  # the contender is running when the batch starts
                run_batch(batch, beside)
                contender.on.clear()
            else:
                run_batch(batch, alone)
    finally:
        contender.close()
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return LearnCost(batches=len(chunks) - 4, steps=recommender.ranker.steps - steps0,
                     alone_mean_s=mean(alone), alone_p99_s=_quantile(alone, 0.99),
                     beside_mean_s=mean(beside), beside_p99_s=_quantile(beside, 0.99),
                     torch_calls_per_step=per_step)


def bench_learn(settings: Settings, **sizes) -> dict:
    c = measure(settings, **sizes)
    ratio = c.beside_mean_s / c.alone_mean_s if c.alone_mean_s > 0 else float("nan")
    duty = sizes.get("duty", 0.6)
    return {**c.__dict__, "rows": [
        (f"learn per batch, alone, mean / p99 ms ({c.batches // 2} batches, {c.steps} ranker steps in all)",
         f"{c.alone_mean_s * 1e3:.1f} / {c.alone_p99_s * 1e3:.1f}", "-", "-", "-"),
        (f"learn per batch beside a thread running Python {duty:.0%} of the time, mean / p99 ms",
         f"{c.beside_mean_s * 1e3:.1f} / {c.beside_p99_s * 1e3:.1f}",
         f"alone {c.alone_mean_s * 1e3:.1f} ms", f"{ratio:.2f}", "-"),
        ("torch calls per ranker step (each hands the GIL over)", f"{c.torch_calls_per_step:.1f}", "-", "-", "-"),
    ]}
