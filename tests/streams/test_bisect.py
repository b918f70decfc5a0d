"""What a worker does when the batch step itself raises (issue 8), without a broker.

Every input the parsers accept is applied by the real batch step, so no event on the wire makes it fail
today; these tests make ``Worker.apply`` fail on chosen events to check the control flow around it:
one retry, then bisection down to the events that fail alone, which go to the DLQ with an
``internal:<type>`` reason while the rest of the batch is applied; a failure of every event alone is
systemic and raises, dead-lettering nothing (the caller retries the batch with backoff).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import pytest

from coldstart import contract
from coldstart.model.serving import ServingModel
from coldstart.settings import Settings
from coldstart.streams.app import SystemicFailure, Worker

pytestmark = pytest.mark.model


@dataclass
class Message:  # the fields of a Faust message the worker reads
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: float


@dataclass
class Event:
    message: Message


def batch(*event_ids: str) -> list[Event]:
    now = time.time()
    return [Event(Message(contract.SEARCH, 0, offset, f"user-{eid}".encode(), json.dumps(
        {"event_id": eid, "user_id": f"user-{eid}", "ts": now, "query": f"query {eid}"}).encode(), now))
        for offset, eid in enumerate(event_ids)]


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Worker:
    root = tmp_path_factory.mktemp("bisect")
    return Worker(Settings(device="cpu", data_dir=root, anomaly_guard=False), model=ServingModel.load(device="cpu"))


@pytest.fixture
def recorded(worker, monkeypatch):
    """Replace the table-and-Kafka parts: ``apply`` fails per ``fails`` and records what it applied,
    ``dead_letter`` records (event id, reason)."""
    seen = {"applied": [], "dead": [], "tries": 0, "fails": lambda ids: None}

    async def apply(parsed):
        seen["tries"] += 1
        ids = [ev.event_id for ev, _ in parsed]
        seen["fails"](ids)
        seen["applied"].extend(ids)

    async def dead_letter(exc, event):
        seen["dead"].append((json.loads(event.message.value)["event_id"], exc.reason))

    monkeypatch.setattr(worker, "apply", apply)
    monkeypatch.setattr(worker, "dead_letter", dead_letter)
    return seen


def test_one_event_that_breaks_the_batch_step_is_dead_lettered_and_the_rest_applied(worker, recorded):
    def fails(ids):
        if "poison" in ids:
            raise OverflowError("int too large to convert")

    recorded["fails"] = fails
    asyncio.run(worker.handle_batch(batch("a", "b", "poison", "c", "d", "e", "f")))
    assert recorded["dead"] == [("poison", "internal:OverflowError")]
    assert sorted(recorded["applied"]) == ["a", "b", "c", "d", "e", "f"]  # each once
    # whole batch, its retry, then halves: logarithmic in the batch, not one try per event
    assert recorded["tries"] <= 2 + 2 * 3


def test_a_failure_that_passes_on_retry_dead_letters_nothing(worker, recorded):
    failed = []

    def fails(ids):
        if not failed:
            failed.append(ids)
            raise RuntimeError("CUDA error: unspecified launch failure")

    recorded["fails"] = fails
    asyncio.run(worker.handle_batch(batch("g", "h", "i")))
    assert recorded["dead"] == [] and sorted(recorded["applied"]) == ["g", "h", "i"]


def test_every_event_failing_alone_is_systemic_and_loses_nothing(worker, recorded):
    def fails(ids):
        raise RuntimeError("device lost")

    recorded["fails"] = fails
    with pytest.raises(SystemicFailure):
        asyncio.run(worker.handle_batch(batch("j", "k", "l")))
    assert recorded["dead"] == [] and recorded["applied"] == []  # retried by the caller, not dropped


def test_the_stream_retries_a_systemic_failure_until_it_clears(worker, recorded, monkeypatch):
    attempts = []

    def fails(ids):
        attempts.append(ids)
        if len(attempts) <= 8:  # two rounds of (batch, retry, each half alone) fail, then it clears
            raise RuntimeError("device lost")

    async def no_wait(_delay):
        return None

    recorded["fails"] = fails
    monkeypatch.setattr(asyncio, "sleep", no_wait)
    asyncio.run(worker.handle_batch_until_done(batch("m", "n")))
    assert recorded["dead"] == [] and sorted(recorded["applied"]) == ["m", "n"]
    assert worker.stream_failure is None  # /health is green again once the batch went through
