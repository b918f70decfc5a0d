"""The trainer against the real broker: the buffer survives a restart without loss or duplicates, and
samples scored by a live worker come back to that worker as a new model version (freshness path)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from kafka import KafkaProducer

from coldstart.settings import Settings, TrainerSettings
from coldstart.contract import TrainingSample
from tests.streams.conftest import WorkerProcess, unique
from coldstart.trainer.service import Trainer

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


def sample(i: int, tag: str) -> TrainingSample:
    return TrainingSample(sample_id=f"{tag}-{i}", user_id=f"u{i % 7}", context=f"query {i % 5}",
                          item_id=f"item{i % 9}", item_text=f"item number {i % 9}", weight=1.0 + (i % 3),
                          loss=1.0, prior_events=i % 4, model_version="base", ts=1.7e9 + i)


def send(bootstrap: str, samples: list[TrainingSample]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for s in samples:
        producer.send("training.samples", key=s.user_id.encode(), value=s.dumps())
    producer.send("training.samples", key=b"x", value=b"{not a sample")  # counted and skipped
    producer.flush()
    producer.close()


async def drain(trainer: Trainer, want: int, timeout: float = 60.0) -> int:
    got = 0
    deadline = time.monotonic() + timeout
    while got < want and time.monotonic() < deadline:
        got += await trainer.poll_once(timeout_s=0.5)
    # a little more: nothing beyond `want` may arrive
    for _ in range(3):
        got += await trainer.poll_once(timeout_s=0.3)
    return got


def test_buffer_survives_restart_without_loss_or_duplicates(kafka_bootstrap, tmp_path):
    from coldstart.streams.topics import ensure_topics

    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=2, app_id=unique("cs-tr"),
                        buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"))
    ensure_topics(settings)
    tag = unique("s")
    first = [sample(i, tag) for i in range(40)]
    send(kafka_bootstrap, first + first[:10])  # 10 redelivered

    async def run_first() -> int:
        trainer = Trainer(settings, TrainerSettings(round_min_samples=10_000))
        await trainer.start()
        try:
            return await drain(trainer, 40)
        finally:
            await trainer.stop()  # a restart: a new process picks up from committed offsets

    assert asyncio.run(run_first()) == 40
    second = [sample(i, tag) for i in range(40, 60)]
    send(kafka_bootstrap, second + first[:5])

    async def run_second() -> tuple[int, int]:
        trainer = Trainer(settings, TrainerSettings(round_min_samples=10_000))
        assert trainer.buffer.n_samples == 40  # durable across the restart
        await trainer.start()
        try:
            added = await drain(trainer, 20)
        finally:
            await trainer.stop()
        return added, trainer.buffer.n_samples

    added, total = asyncio.run(run_second())
    assert (added, total) == (20, 60)
    ids = Trainer(settings, TrainerSettings()).buffer.read().column("sample_id").to_pylist()
    assert sorted(ids) == sorted(s.sample_id for s in first + second)



def test_flagged_bot_samples_leave_the_buffer_and_are_refused_later(kafka_bootstrap, tmp_path):
    # A bot's clicks scored before the guard flagged it are named on events.audit (FlaggedBack); the
    # trainer must take them out of its buffer, also when a sample arrives after its FlaggedBack record,
    # and keep refusing them after a restart.
    from coldstart.contract import FlaggedBack
    from coldstart.streams.topics import ensure_topics

    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=2, app_id=unique("cs-audit"),
                        buffer_dir=tmp_path / "buffer", registry_uri=str(tmp_path / "registry"))
    ensure_topics(settings)
    tag = unique("b")
    genuine, bot = [sample(i, tag) for i in range(20)], [sample(i, tag) for i in range(20, 30)]
    send(kafka_bootstrap, genuine + bot[:6])
    flagged = FlaggedBack("impossible_rate", "bot-user", tuple(s.sample_id for s in bot), time.time())

    async def run() -> Trainer:
        trainer = Trainer(settings, TrainerSettings(round_min_samples=10_000))
        await trainer.start()
        try:
            deadline = time.monotonic() + 30  # the topic also holds other tests' samples: wait for ours
            while not all(s.sample_id in trainer.buffer for s in genuine + bot[:6]) and time.monotonic() < deadline:
                await trainer.poll_once(timeout_s=0.5)
            producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
            producer.send("events.audit", key=b"bot-user", value=flagged.dumps())
            producer.flush()
            producer.close()
            deadline = time.monotonic() + 30
            while any(s.sample_id in trainer.buffer for s in bot[:6]) and time.monotonic() < deadline:
                await trainer.poll_once(timeout_s=0.5)
            send(kafka_bootstrap, bot[6:] + bot[:2])  # after the audit record, and redelivered ones
            await drain(trainer, 0, timeout=3.0)
        finally:
            await trainer.stop()
        return trainer

    trainer = asyncio.run(run())
    held = {sid for sid in trainer.buffer.read().column("sample_id").to_pylist() if sid.startswith(tag)}
    assert held == {s.sample_id for s in genuine}
    retracted = trainer.metrics.samples_in.labels("retracted")._value.get()
    assert retracted >= 6 + 4 + 2  # taken out, then refused on arrival (other tests' bots may add to it)
    restarted = Trainer(settings, TrainerSettings())
    assert all(restarted.buffer.was_retracted(s.sample_id) for s in bot) and restarted.buffer.add(bot) == 0
    assert all(s.sample_id in restarted.buffer for s in genuine)


def test_worker_samples_train_a_version_the_worker_then_serves(kafka_bootstrap, tmp_path):
    from coldstart.streams.topics import ensure_topics

    app_id = unique("cs-fresh")
    registry = tmp_path / "registry"
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=2, app_id=app_id, device="cpu",
                        buffer_dir=tmp_path / "buffer", registry_uri=str(registry))
    ensure_topics(settings)
    worker = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "data",
                           extra_env={"COLDSTART_REGISTRY_URI": str(registry)}).start()
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
        titles = {"tent": "Four person camping tent", "pan": "Non-stick frying pan", "mouse": "Wireless mouse",
                  "lamp": "LED desk lamp", "kettle": "Electric kettle", "chair": "Ergonomic office chair"}
        tag = unique("t")
        for item, title in titles.items():
            producer.send("catalog.items", key=f"{tag}-{item}".encode(),
                          value=json.dumps({"item_id": f"{tag}-{item}", "title": title}).encode())
        queries = {"tent": "camping shelter", "pan": "skillet", "mouse": "computer mouse",
                   "lamp": "reading light", "kettle": "boil water", "chair": "desk seat"}
        t0 = time.time()
        for i in range(120):
            item = list(titles)[i % len(titles)]
            u = unique("f")
            ev = {"event_id": unique("c"), "user_id": u, "ts": time.time(), "item_id": f"{tag}-{item}",
                  "query": queries[item]}
            producer.send("events.click", key=u.encode(), value=json.dumps(ev).encode())
        producer.flush()
        producer.close()
        config = TrainerSettings(round_min_samples=100, min_train_samples=32, steps=4, batch_size=8,
                               time_budget_s=60, tolerance=1.0, holdout_fraction=0.2)

        async def train() -> str | None:
            trainer = Trainer(settings, config)
            await trainer.start()
            try:
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    report = await trainer.step()
                    if report is not None:
                        return report.version
                return None
            finally:
                await trainer.stop()

        version = asyncio.run(train())
        assert version == "v0001"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            body = worker.recommendations(unique("anyone"))
            if body["model_version"] == version:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"worker never served {version}:\n{worker.log_tail()}")
        freshness = time.time() - t0
        print(f"freshness: first event -> served version trained on it: {freshness:.1f} s")
        assert freshness < 300
    finally:
        worker.stop()
