"""Batches of stream events whose window is counted from the oldest waiting event.

Faust's ``Stream.take_events(max_, within)`` starts its window when the previous batch is handed back
and refuses new events while a batch is processed, so an event that arrives while a batch runs waits
for that batch, then a *whole* window, then its own batch: about 2 × batch + window (issue 11: at 500
events/s and a 50 ms window, p99 ≈ 140–170 ms, most of it waiting). ``take_batches`` keeps filling
the next batch while one is processed and dates the window from the oldest waiting event, as a serving
system's dynamic batcher does (a request waits at most ``within`` for company): an event waits at
most ``within`` or the batch ahead of it, whichever is longer, then its own batch. Under a backlog
the batch fills to ``max_`` while the previous one is processed, so throughput is what it was; when the
batch step is slower than the window the batches grow with the load instead of queueing.

Acknowledgement is unchanged: a batch's events are acknowledged only after the consumer of the batch
has finished with it (or raised), so their offsets are committed after their effect is written; the
events that wait for the next batch are not acknowledged, and are redelivered after a crash.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchWindow(Generic[T]):
    """The waiting events and when to hand them over: a plain object over a clock, tested without Faust.

    >>> w = BatchWindow(max_size=3, within_s=0.05)
    >>> w.wait_s(now=0.0) is None  # nothing waits: wait for an event, however long
    True
    >>> w.add("a", now=0.00); w.add("b", now=0.03)
    >>> round(w.wait_s(now=0.03), 3)  # 50 ms counted from "a", not from now
    0.02
    >>> w.wait_s(now=0.06), w.take()
    (0.0, ['a', 'b'])
    >>> for i, name in enumerate("cdef"): w.add(name, now=1.0)
    >>> w.wait_s(now=1.0), w.full, w.take(), w.take()  # full: at once, and never more than max_size
    (0.0, True, ['c', 'd', 'e'], ['f'])
    """

    def __init__(self, max_size: int, within_s: float) -> None:
        if max_size < 1 or within_s < 0:
            raise ValueError(f"a batch needs max_size >= 1 and within_s >= 0, not {max_size}, {within_s}")
        self.max_size = max_size
        self.within_s = within_s
        self._waiting: deque[tuple[T, float]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def full(self) -> bool:
        return len(self._waiting) >= self.max_size

    def add(self, item: T, now: float) -> None:
        self._waiting.append((item, now))

    def wait_s(self, now: float) -> float | None:
        """Seconds until the next batch is due (0.0: now); None while nothing waits."""
        if not self._waiting:
            return None
        if self.full:
            return 0.0
        return max(0.0, self._waiting[0][1] + self.within_s - now)

    def take(self) -> list[T]:
        """The oldest ``max_size`` waiting items, in arrival order."""
        n = min(len(self._waiting), self.max_size)
        return [self._waiting.popleft()[0] for _ in range(n)]


async def take_batches(stream, max_: int, within: float,
                       clock: Callable[[], float] = time.monotonic) -> AsyncIterator[list]:
    """Lists of a Faust stream's events (``Stream.take_events``'s contract, ``BatchWindow``'s timing).

    Built from the same parts as ``take_events`` (a processor that buffers each event, the stream
    drained passively, acknowledgement turned off and done here after each batch), so it relies on
    nothing that one does not.
    """
    window: BatchWindow = BatchWindow(max_, within)
    due = asyncio.Event()   # set when the first event arrives or the window fills: the loop recomputes
    room = asyncio.Event()  # set when a batch leaves the window: a full window holds the stream back
    room.set()

    async def add_to_window(value):
        while window.full:  # backpressure, as take_events does: never more than max_ waiting
            room.clear()
            await stream.wait(room)
            if stream.should_stop:
                return value
        event = stream.current_event
        if event is None:
            raise RuntimeError("take_batches found no current event")
        window.add(event, clock())
        if len(window) == 1 or window.full:
            due.set()
        return value

    acks_were_enabled = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add_to_window)
    stream._enable_passive(stream.channel.__aiter__())
    try:
        while not stream.should_stop:
            wait = window.wait_s(clock())
            if wait is None or wait > 0:
                due.clear()
                await stream.wait_for_stopped(due, timeout=wait)
                continue
            batch = window.take()
            room.set()
            try:
                yield batch
            finally:
                for event in batch:
                    await stream.ack(event)
    finally:
        stream.enable_acks = acks_were_enabled
        stream._processors.remove(add_to_window)
