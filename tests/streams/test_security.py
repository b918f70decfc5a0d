"""The locked control plane against the real broker and a real worker: only announcements signed with
the shared secret switch the model (unsigned, forged and replayed ones are refused and counted while
the old version keeps serving); the recommendations API wants the bearer token; Faust's table views
are off; secrets and registry credentials appear in no announcement, log or metric."""

from __future__ import annotations

import dataclasses
import json
import time

import httpx
import pytest
from kafka import KafkaProducer

from coldstart.contract import ANNOUNCE_KEY, ModelAnnouncement
from coldstart.model.encoder import TextEncoder, default_model_path
from coldstart.model.registry import Registry
from coldstart.settings import Settings
from coldstart.trainer.publish import announcement
from tests.streams.conftest import WorkerProcess, unique
from tests.streams.test_swap import publish

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

SECRET = "announce-secret-for-tests-7f3a"
TOKEN = "api-token-for-tests-91c2"


@pytest.fixture(scope="module")
def locked_worker(kafka_bootstrap, tmp_path_factory):
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    root = tmp_path_factory.mktemp("locked")
    w = WorkerProcess(kafka_bootstrap, unique("cs-locked"), root / "data", extra_env={
        "COLDSTART_REGISTRY_URI": str(root / "registry"),
        "COLDSTART_ANNOUNCE_SECRET": SECRET,
        "COLDSTART_API_TOKEN": TOKEN,
    }).start()
    yield w, Registry(root / "registry")
    w.stop()


@pytest.fixture(scope="module")
def versions(locked_worker):
    """Two real registry versions (the base weights, slightly nudged) the worker could be pointed at."""
    _, registry = locked_worker
    encoder = TextEncoder(default_model_path(), device="cpu")
    return publish(registry, encoder, nudge=0.5), publish(registry, encoder, nudge=1.0)


def send(bootstrap: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send("model.versions", key=ANNOUNCE_KEY, value=value)
    producer.flush()
    producer.close()


def refused(worker: WorkerProcess, reason: str) -> float:
    return worker.metric("coldstart_model_swaps_refused_total", reason=reason)


def wait_refused(worker: WorkerProcess, reason: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if refused(worker, reason) >= 1:
            return
        time.sleep(0.3)
    raise AssertionError(f"no refusal counted for {reason}:\n{worker.log_tail()}")


def serving(worker: WorkerProcess) -> str:
    return worker.get("/health")["model_version"]


def test_only_signed_fresh_announcements_switch_the_model(locked_worker, versions, kafka_bootstrap):
    worker, registry = locked_worker
    first, second = versions
    base = serving(worker)

    # A producer that does not know the secret: no signature at all (an old-style record) ...
    unsigned = json.dumps({"version": first, "uri": registry.version_uri(first), "action": "rollback",
                           "announced_ts": time.time()}).encode()
    send(kafka_bootstrap, unsigned)
    wait_refused(worker, "unsigned")
    assert serving(worker) == base
    # ... or signed with a guessed secret (the public development key among them).
    send(kafka_bootstrap, announcement(registry, first, "rollback", secret="guess").dumps())
    wait_refused(worker, "bad_signature")
    send(kafka_bootstrap, announcement(registry, first, "rollback").dumps())  # dev key
    deadline = time.monotonic() + 30
    while refused(worker, "bad_signature") < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert refused(worker, "bad_signature") == 2
    assert serving(worker) == base

    # Tampering with a valid record (pointing it at another version) breaks its signature.
    genuine = announcement(registry, first, secret=SECRET, now=time.time())
    send(kafka_bootstrap, dataclasses.replace(genuine, version=second).dumps())
    deadline = time.monotonic() + 30
    while refused(worker, "bad_signature") < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert refused(worker, "bad_signature") == 3
    assert serving(worker) == base

    # The genuine record is applied.
    send(kafka_bootstrap, genuine.dumps())
    deadline = time.monotonic() + 120
    while serving(worker) != first and time.monotonic() < deadline:
        time.sleep(0.5)
    assert serving(worker) == first, worker.log_tail()

    # A genuine but older record, produced again by someone who captured it, is a replay.
    send(kafka_bootstrap, announcement(registry, second, secret=SECRET, now=genuine.announced_ts - 60).dumps())
    wait_refused(worker, "replayed")
    assert serving(worker) == first
    assert worker.metric("coldstart_model_swaps_total") == 1.0


def test_api_wants_the_bearer_token(locked_worker):
    worker, _ = locked_worker
    url = f"{worker.url}/users/{unique('u')}/recommendations?k=3"
    missing = httpx.get(url, timeout=10)
    assert missing.status_code == 401
    assert "COLDSTART_API_TOKEN" in missing.json()["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = httpx.get(url, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
    assert wrong.status_code == 401
    ok = httpx.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["strategy"] == "popular"
    # Probes and Prometheus keep working without the token.
    assert httpx.get(f"{worker.url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{worker.url}/metrics", timeout=10).status_code == 200


def test_faust_table_and_router_views_are_off(locked_worker, produce):
    worker, _ = locked_worker
    user = unique("u")
    produce("events.search", user, {"event_id": unique("e"), "user_id": user, "ts": time.time(),
                                    "query": "private medical question"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.get(f"{worker.url}/users/{user}/recommendations",
                         headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
        if body.get("n_events") == 1:
            break
        time.sleep(0.3)
    for path in ("/table/user_to_profile/", f"/table/user_to_profile/{user}/", "/router/"):
        response = httpx.get(worker.url + path, timeout=10)
        assert response.status_code == 404, path
        assert "private medical" not in response.text


def test_no_secret_in_announcements_logs_or_metrics(locked_worker, tmp_path):
    worker, _ = locked_worker
    remote = Registry(tmp_path / "registry")
    remote.uri = "s3://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/registry"  # as pyarrow accepts it
    record = announcement(remote, "v0001", secret=SECRET).dumps()
    assert b"wJalrXUtn" not in record and b"AKIAEXAMPLE" not in record and SECRET.encode() not in record
    assert json.loads(record)["uri"] == "s3://***@bucket/registry/versions/v0001"
    ModelAnnouncement.loads(record).verify(SECRET.encode())
    shown = repr(Settings(announce_secret=SECRET, api_token=TOKEN))
    assert SECRET not in shown and TOKEN not in shown
    seen = worker.log_tail(10_000) + worker.metrics_text()
    assert SECRET not in seen and TOKEN not in seen


# ------------------------------------------------------------------------------- Kafka with SASL
SASL_USER, SASL_PASSWORD = "coldstart", "sasl-password-for-tests-5e1d"
SASL_ENV = {"COLDSTART_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "COLDSTART_KAFKA_SASL_MECHANISM": "PLAIN",
            "COLDSTART_KAFKA_SASL_USERNAME": SASL_USER, "COLDSTART_KAFKA_SASL_PASSWORD": SASL_PASSWORD}


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory):
    """A real broker whose only client listener wants SASL/PLAIN (deploy/kafka/kafka.sh with credentials)."""
    import os
    import subprocess

    from coldstart.kafka_local import SCRIPT, free_port

    port, root = free_port(), tmp_path_factory.mktemp("sasl-kafka")
    env = {**os.environ, "COLDSTART_KAFKA_SASL_USERNAME": SASL_USER, "COLDSTART_KAFKA_SASL_PASSWORD": SASL_PASSWORD}
    args = ["--port", str(port), "--dir", str(root)]
    done = subprocess.run(["bash", str(SCRIPT), "start", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run(["bash", str(SCRIPT), "stop", *args], env=env, capture_output=True, timeout=120)


def test_every_client_authenticates_with_sasl(sasl_bootstrap, tmp_path):
    import asyncio
    import os
    import subprocess
    import sys

    from coldstart.errors import KafkaUnavailable
    from coldstart.evaluation.prequential import DeadLetterWatch
    from coldstart.kafka_security import aiokafka_options
    from coldstart.streams.topics import ensure_topics

    plain = Settings(bootstrap_servers=sasl_bootstrap, partitions=2)
    with pytest.raises(KafkaUnavailable):  # the listener refuses a client without credentials
        ensure_topics(plain, timeout_s=5)
    secured = Settings.from_env(SASL_ENV, bootstrap_servers=sasl_bootstrap, partitions=2)
    assert SASL_PASSWORD not in repr(secured)
    ensure_topics(secured)  # kafka-python admin

    # Faust's consumer group and producer, and the aiokafka catalog and model readers: /health is 200
    # only once all of them are connected and caught up.
    worker = WorkerProcess(sasl_bootstrap, unique("cs-sasl"), tmp_path / "data", extra_env=SASL_ENV).start()
    try:
        # `coldstart replay` (aiokafka producer) takes the same settings from the environment
        user = unique("u")
        log = tmp_path / "events.jsonl"
        log.write_text(json.dumps({"type": "search", "event_id": unique("e"), "user_id": user,
                                   "ts": time.time(), "query": "headphones"}) + "\n")
        replay = [sys.executable, "-m", "coldstart.cli", "replay", str(log), "--bootstrap-servers", sasl_bootstrap]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("COLDSTART_KAFKA_S")}
        refused = subprocess.run(replay, env=base_env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "Kafka" in refused.stdout + refused.stderr  # a clear error
        done = subprocess.run(replay, env={**base_env, **SASL_ENV}, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert SASL_PASSWORD not in done.stdout + done.stderr
        assert worker.wait_for_events(user, 1, timeout=120)["n_events"] == 1

        # the evaluation's dead-letter reader against a shop's broker
        async def read_dead_letters() -> None:
            watch = DeadLetterWatch(sasl_bootstrap, client_options=aiokafka_options(secured))
            await watch.start()
            await watch.stop()

        asyncio.run(asyncio.wait_for(read_dead_letters(), 60))
        seen = worker.log_tail(10_000) + worker.metrics_text()
        assert SASL_PASSWORD not in seen
    finally:
        worker.stop()
