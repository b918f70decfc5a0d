"""Issue 11: the batch step runs off the event loop, so the HTTP API answers while a batch encodes."""

from __future__ import annotations

import json
import random
import threading
import time

import httpx
import pytest
from kafka import KafkaProducer

from coldstart.streams.metrics import BATCH_STAGES
from tests.streams.conftest import unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

WORDS = ("amber basalt cobalt dune ember fjord garnet harbor indigo juniper kelp lagoon meadow nectar "
         "onyx prairie quartz ravine sierra tundra umber violet willow xenon yarrow zephyr").split()


def test_api_answers_while_a_batch_encodes(worker, kafka_bootstrap):
    """Hundreds of never-seen queries make batches that encode for seconds on a CPU; requests sent
    meanwhile must not wait for them (before issue 11 a request waited for the whole batch)."""
    rng = random.Random(11)
    # 60 words fill the encoder's 64-token window: the longest (so slowest) batch a query can make,
    # so a fast CI machine still spends long enough in each forward pass to tell waiting from not.
    texts = [" ".join(rng.choice(WORDS) for _ in range(60)) + f" {i}" for i in range(400)]
    encode0 = worker.metric("coldstart_encode_seconds_sum")
    stage0 = {name: worker.metric("coldstart_batch_stage_seconds_sum", stage=name) for name in BATCH_STAGES}
    batch0 = worker.metric("coldstart_batch_seconds_sum")
    batches0 = worker.metric("coldstart_encode_seconds_count")
    in0 = worker.metric("coldstart_events_in_total")
    updates0 = worker.metric("coldstart_profile_updates_total")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    for text in texts:
        user = unique("rt")
        ev = {"event_id": unique("s"), "user_id": user, "ts": time.time(), "query": text}
        producer.send("events.search", key=user.encode(), value=json.dumps(ev).encode())
    producer.flush()
    producer.close()

    latencies: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            resp = httpx.get(worker.url + f"/users/{unique('nobody')}/recommendations?k=5", timeout=60)
            assert resp.status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    deadline = time.monotonic() + 300
    while worker.metric("coldstart_events_in_total") < in0 + len(texts):
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    # Events are counted in as their batch starts: wait until every one of them made its (new user's)
    # profile, so the encode figures below cover every batch, not just the first one that finished.
    while worker.metric("coldstart_profile_updates_total") < updates0 + len(texts):
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.2)
    time.sleep(1.0)
    done.set()
    poller.join(timeout=60)

    batches = worker.metric("coldstart_encode_seconds_count") - batches0
    mean_encode = (worker.metric("coldstart_encode_seconds_sum") - encode0) / max(batches, 1)
    print(f"{batches:.0f} batches, mean encode {mean_encode:.2f} s, slowest request {max(latencies, default=0):.3f} s")
    assert mean_encode > 0.5, f"batches encoded in {mean_encode:.2f} s on average: too fast to tell anything"
    assert len(latencies) >= 5
    # A request that had to wait for a batch would take about a whole encode; answered between the
    # GIL-free stretches of the forward pass, it takes a small fraction of one.
    assert max(latencies) < 0.5 * mean_encode, (max(latencies), mean_encode, sorted(latencies)[-5:])

    # The stage breakdown says where the time went: into the encoder, and the stages add up to the batch.
    stages = {name: worker.metric("coldstart_batch_stage_seconds_sum", stage=name) - stage0[name]
              for name in BATCH_STAGES}
    batch_total = worker.metric("coldstart_batch_seconds_sum") - batch0
    assert max(stages, key=stages.get) == "encode", stages
    assert 0.9 * batch_total <= sum(stages.values()) <= 1.01 * batch_total, (stages, batch_total)
