"""Writing a replay stream to Kafka: the only Kafka code in ``coldstart.replay``.

Topics must exist already (the caller creates them). Pacing is a pure :class:`Pacer`, so it is tested
without a broker: ``rate`` fixes events per second on an absolute schedule (a token bucket holding at
most one second of tokens, so no drift accumulates and a stall is not followed by an unbounded burst);
``speedup`` follows the log's own clock, X times faster; neither means as fast as the broker accepts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any
from dataclasses import dataclass, field

from coldstart.errors import KafkaUnavailable
from coldstart.replay.events import ReplayEvent, topic_for

_MAX_IN_FLIGHT = 2_000  # delivery futures awaited in chunks: bounded memory, no per-event round trip


@dataclass
class ReplaySummary:
    """What a replay wrote: events per type, wall seconds, events per second."""

    counts: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def events_per_s(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Pacer:
    """When each event may be sent, relative to the replay's start (seconds on a monotonic clock).

    >>> p = Pacer(rate=10.0)
    >>> [p.due(i, 0.0, now=0.0) for i in range(3)]
    [0.0, 0.1, 0.2]
    >>> p.wait(5, 0.0, now=0.2)  # event 5 is due at 0.5 s
    0.3
    >>> s = Pacer(speedup=60.0)  # log minutes become replay seconds
    >>> s.due(0, 120.0, now=0.0), s.due(1, 180.0, now=0.0)
    (0.0, 1.0)
    >>> Pacer().wait(10**6, 0.0, now=0.0)
    0.0
    """

    rate: float | None = None
    speedup: float | None = None
    _origin: float | None = None  # first event's log time (speedup) or schedule shift (rate)
    _shift: float = 0.0

    def __post_init__(self) -> None:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("give rate or speedup, not both")
        if (self.rate is not None and self.rate <= 0) or (self.speedup is not None and self.speedup <= 0):
            raise ValueError("rate and speedup must be positive")

    def due(self, index: int, event_ts: float, now: float) -> float:
        """The time the ``index``-th event (log time ``event_ts``) is due; ``now`` is time since start."""
        if self.rate is not None:
            due = self._shift + index / self.rate
            if now - due > 1.0:  # more than a second behind: drop the backlog of tokens
                self._shift += now - due - 1.0
                due = now - 1.0
            return round(max(due, 0.0), 9)
        if self.speedup is not None:
            if self._origin is None:
                self._origin = event_ts
            return round(max((event_ts - self._origin) / self.speedup, 0.0), 9)
        return 0.0

    def wait(self, index: int, event_ts: float, now: float) -> float:
        """Seconds to sleep before sending that event (0 when it is due already)."""
        return round(max(self.due(index, event_ts, now) - now, 0.0), 9)


def encode(event: ReplayEvent) -> tuple[bytes, bytes]:
    """Kafka key and value bytes: the raw utf-8 key and compact JSON.

    >>> encode(ReplayEvent("item", "i1", {"item_id": "i1", "title": "Lamp"}, 0.0))
    (b'i1', b'{"item_id":"i1","title":"Lamp"}')
    """
    value = json.dumps(event.value, separators=(",", ":"), ensure_ascii=False)
    return event.key.encode("utf-8"), value.encode("utf-8")


async def produce(
    events: Iterable[ReplayEvent],
    bootstrap: str,
    *,
    rate: float | None = None,
    speedup: float | None = None,
    progress: bool = True,
    client_options: Mapping[str, Any] | None = None,
) -> ReplaySummary:
    """Send ``events`` to their topics (see :func:`topic_for`) and wait until all are acknowledged.

    ``client_options``: the Kafka security keywords (:func:`coldstart.kafka_security.aiokafka_options`).
    Raises :class:`KafkaUnavailable` when no broker answers at ``bootstrap`` or a send fails.
    """
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    pacer = Pacer(rate=rate, speedup=speedup)
    summary = ReplaySummary()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **(client_options or {}))
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise KafkaUnavailable(
            f"no Kafka broker answered at {bootstrap} ({exc}); start one with `coldstart kafka start` "
            "or set COLDSTART_BOOTSTRAP"
        ) from exc

    bar = _progress_bar() if progress else None
    task = bar.add_task("replay", total=None) if bar else None
    started = time.monotonic()
    pending: list[asyncio.Future] = []
    try:
        if bar:
            bar.start()
        for index, event in enumerate(events):
            delay = pacer.wait(index, event.ts, time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            key, value = encode(event)
            pending.append(await producer.send(topic_for(event.type), value=value, key=key))
            summary.counts[event.type] += 1
            if len(pending) >= _MAX_IN_FLIGHT:
                await asyncio.gather(*pending)
                pending.clear()
            if bar and index % 200 == 0:
                bar.update(task, completed=index + 1)
        await asyncio.gather(*pending)
        await producer.flush()
    except KafkaError as exc:
        raise KafkaUnavailable(f"sending to Kafka at {bootstrap} failed ({exc})") from exc
    finally:
        summary.seconds = time.monotonic() - started
        if bar:
            bar.update(task, completed=summary.total)
            bar.stop()
        await producer.stop()
    return summary


def _progress_bar():
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
    )
