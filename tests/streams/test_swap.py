"""Hot-swap against the real broker: a version published while events flow is picked up between
batches, every event still has exactly one effect, a corrupted artifact is refused while the old
version keeps serving, and rollback is one command."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from coldstart.settings import Settings
from coldstart.model.encoder import TextEncoder, default_model_path
from coldstart.model.registry import Registry
from tests.streams.conftest import WorkerProcess, unique
from coldstart.contract import ANNOUNCE_KEY
from coldstart.trainer.publish import announcement
from coldstart.trainer.service import rollback

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]


def publish(registry: Registry, encoder: TextEncoder, nudge: float = 0.0) -> str:
    """A real registry version: the base encoder's weights (optionally nudged), safetensors + manifest."""
    state = {k: (v + nudge * 1e-3 if v.is_floating_point() and "LayerNorm" not in k else v).clone()
             for k, v in encoder.module.state_dict().items()}
    ids = ["x1", "x2"]
    vecs = encoder.encode(["alpha", "beta"])
    return registry.publish(state, base_dir=encoder.path, item_ids=ids, item_vectors=vecs, parent=None,
                            base_model=encoder.version, data_window=[0.0, 1.0], metrics={})


def announce(bootstrap: str, registry: Registry, version: str, action: str = "publish") -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send("model.versions", key=ANNOUNCE_KEY, value=announcement(registry, version, action).dumps())
    producer.flush()
    producer.close()


def wait_version(worker: WorkerProcess, user: str, version: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        body = worker.recommendations(user)
        if body["model_version"] == version:
            return body
        time.sleep(0.5)
    raise AssertionError(f"still serving {body.get('model_version')}, expected {version}:\n{worker.log_tail()}")


@pytest.fixture(scope="module")
def swap_worker(kafka_bootstrap, tmp_path_factory):
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    root = tmp_path_factory.mktemp("swap")
    w = WorkerProcess(kafka_bootstrap, unique("cs-swap"), root / "data",
                      extra_env={"COLDSTART_REGISTRY_URI": str(root / "registry")}).start()
    yield w, Registry(root / "registry")
    w.stop()


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(default_model_path(), device="cpu")


def test_swap_during_stream_keeps_exactly_one_effect(swap_worker, kafka_bootstrap, encoder):
    worker, registry = swap_worker
    item_id = unique("hp")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    producer.send("catalog.items", key=item_id.encode(),
                  value=json.dumps({"item_id": item_id, "title": "Wireless noise cancelling headphones"}).encode())
    users = [unique("sw") for _ in range(60)]
    truth = {u: 0 for u in users}
    events = []
    for i in range(900):
        u = users[i % len(users)]
        truth[u] += 1
        events.append((u, {"event_id": unique("e"), "user_id": u, "ts": time.time(), "query": "headphones"}))

    def stream() -> None:
        for j, (u, ev) in enumerate(events):
            producer.send("events.search", key=u.encode(), value=json.dumps(ev).encode())
            if j % 50 == 0:
                producer.flush()
                time.sleep(0.05)  # a steady stream across the swap
        producer.flush()

    thread = threading.Thread(target=stream)
    thread.start()
    version = publish(registry, encoder)
    announce(kafka_bootstrap, registry, version)
    thread.join()
    producer.close()
    body = wait_version(worker, users[0], version)
    for u in users:
        body = worker.wait_for_events(u, truth[u], timeout=120)
        assert body["n_events"] == truth[u]
        assert body["model_version"] == version
    assert body["items"][0]["item_id"] == item_id  # items re-encoded in the new vector space
    metrics = worker.metrics_text()
    assert "coldstart_model_swaps_total 1.0" in metrics
    assert f'coldstart_model_version_info{{version="{version}"}} 1.0' in metrics


def test_corrupted_artifact_is_refused_and_old_version_serves(swap_worker, kafka_bootstrap, encoder):
    worker, registry = swap_worker
    serving = publish(registry, encoder, nudge=0.25)  # a good trained version in service first
    announce(kafka_bootstrap, registry, serving)
    wait_version(worker, unique("u"), serving)
    bad = publish(registry, encoder, nudge=1.0)
    weights = Path(registry.root) / "versions" / bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    announce(kafka_bootstrap, registry, bad)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if 'coldstart_model_swaps_refused_total{reason="verification"} 1.0' in worker.metrics_text():
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no refusal counted:\n{worker.log_tail()}")
    assert worker.recommendations(unique("u"))["model_version"] == serving
    assert worker.proc.poll() is None

    # A worker (re)started now finds the refused version announced: it serves the last good one, not
    # the base model (issue 8).
    restarted = WorkerProcess(kafka_bootstrap, unique("cs-swap-restart"), Path(registry.root).parent / "data2",
                              extra_env={"COLDSTART_REGISTRY_URI": registry.uri}).start()
    try:
        wait_version(restarted, unique("u"), serving)
        assert 'coldstart_model_swaps_refused_total{reason="verification"} 1.0' in restarted.metrics_text()
    finally:
        restarted.stop()


def test_rollback_restores_previous_version(swap_worker, kafka_bootstrap, encoder):
    worker, registry = swap_worker
    first = worker.recommendations(unique("u"))["model_version"]
    newer = publish(registry, encoder, nudge=0.5)
    announce(kafka_bootstrap, registry, newer)
    wait_version(worker, unique("u"), newer)
    settings = Settings(bootstrap_servers=kafka_bootstrap, registry_uri=registry.uri)
    rollback(settings, first)
    wait_version(worker, unique("u"), first)
    assert registry.current() == first


def test_a_new_version_builds_its_coarse_index_before_it_serves(tmp_path, encoder):
    """At scale (COLDSTART_ANN_MIN_ITEMS) a version's item index is in its own vector space and needs its
    own coarse index: built with the version, off the serving path, so it serves the coarse path from its
    first request; below the threshold none is built."""
    from coldstart.model.items import ItemIndex
    from coldstart.streams.swap import build_version

    registry = Registry(tmp_path / "registry")
    version = publish(registry, encoder)
    live = ItemIndex(encoder.dim, encoder.device)
    for i in range(300):
        live.upsert(f"sku{i}", f"product {i} of kind {i % 7}")
    above, below = live.copy_metadata(), live.copy_metadata()
    model = build_version(registry, version, Settings(device="cpu", ann_min_items=100), above)
    assert model.items.coarse is not None and model.items.coarse.complete(300)
    assert build_version(registry, version, Settings(device="cpu", ann_min_items=1_000), below).items.coarse is None


def test_the_swapper_reads_a_checkpointed_rankers_version_from_the_registry(tmp_path, encoder):
    """After a restart the ranker's checkpoint may name a version that is neither loaded nor announced:
    the swapper reads that version's item vectors from the registry (verified) to rescale the ranker's
    text weights, and a version the registry no longer holds gives None (the scale is kept)."""
    import types

    import torch
    from prometheus_client import CollectorRegistry

    from coldstart.streams.metrics import Metrics
    from coldstart.streams.swap import ModelSwapper

    registry = Registry(tmp_path / "registry")
    version = publish(registry, encoder)
    worker = types.SimpleNamespace(metrics=Metrics.create(CollectorRegistry()))
    swapper = ModelSwapper(Settings(registry_uri=str(tmp_path / "registry"), announce_secret="s"), worker)
    ids, vectors = swapper._item_vectors(version)
    assert ids == ["x1", "x2"]
    assert torch.allclose(vectors, encoder.encode(["alpha", "beta"]).float().cpu(), atol=1e-5)
    assert swapper._item_vectors("v0099") is None
