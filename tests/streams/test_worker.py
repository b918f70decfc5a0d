"""The streaming core end to end, against the real broker and the real model: events in, profiles and
recommendations out through the HTTP API."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from kafka import KafkaConsumer

from tests.streams.conftest import WorkerProcess, unique

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

NOW = time.time()


def item(item_id, title):
    return {"item_id": item_id, "title": title, "ts": NOW}


def search(user, query, ts=None, event_id=None):
    return {"event_id": event_id or unique("s"), "user_id": user, "ts": ts or time.time(), "query": query}


def click(user, item_id, query=None, ts=None, event_id=None):
    body = {"event_id": event_id or unique("c"), "user_id": user, "ts": ts or time.time(), "item_id": item_id}
    if query:
        body["query"] = query
    return body


@pytest.fixture(scope="module")
def catalog(worker, kafka_bootstrap):
    from kafka import KafkaProducer

    tag = uuid.uuid4().hex[:6]
    items = {
        f"hp-{tag}": "Wireless noise cancelling over-ear headphones",
        f"kb-{tag}": "Mechanical gaming keyboard with RGB backlight",
        f"st-{tag}": "Heavy duty office stapler, 40 sheets",
        f"pan-{tag}": "Non-stick frying pan for the kitchen, 28 cm",
    }
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for item_id, title in items.items():
        producer.send("catalog.items", key=item_id.encode(), value=json.dumps(item(item_id, title)).encode())
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = worker.recommendations(unique("nobody"), k=1000)
        if set(items) <= {i["item_id"] for i in body["items"]}:
            return items
        time.sleep(0.25)
    raise AssertionError(f"catalog items never became recommendable:\n{worker.log_tail()}")


def test_first_search_already_personalises(worker, produce, catalog):
    user = unique("u")
    produce("events.search", user, search(user, "bluetooth headphones for travel"))
    body = worker.wait_for_events(user, 1)
    assert body["strategy"] == "personal"
    top = body["items"][0]
    assert top["item_id"].startswith("hp-"), body["items"][:3]
    assert top["because"] and top["because"][0]["kind"] == "search"
    assert body["model_version"].startswith("base-")


def test_unknown_user_gets_popularity_not_error(worker, catalog):
    status, body = worker.get_status(f"/users/{unique('ghost')}/recommendations?k=3")
    assert status == 200
    assert body["strategy"] == "popular" and body["n_events"] == 0
    assert len(body["items"]) == 3


def test_bad_request_gets_400_with_message(worker):
    status, body = worker.get_status("/users/x/recommendations?k=zero")
    assert status == 400 and "k must be" in body["error"]


def test_clicks_move_profile_and_clicked_item_is_excluded(worker, produce, catalog):
    user = unique("u")
    kb = next(i for i in catalog if i.startswith("kb-"))
    produce("events.search", user, search(user, "office supplies"))
    produce("events.click", user, click(user, kb, query="gaming keyboard"))
    body = worker.wait_for_events(user, 2)
    ids = [i["item_id"] for i in body["items"]]
    assert kb not in ids  # just clicked: excluded by default
    with_clicked = worker.recommendations(user, exclude_clicked="false")
    assert kb in [i["item_id"] for i in with_clicked["items"]]


def test_redelivered_event_is_ignored(worker, produce, catalog):
    duplicates_before = worker.metric("coldstart_duplicate_events_total")
    user = unique("u")
    first = search(user, "frying pan", event_id=unique("dup"))
    produce("events.search", user, first)
    produce("events.search", user, first)  # at-least-once redelivery: same event id
    produce("events.search", user, search(user, "kitchen pan"))
    body = worker.wait_for_events(user, 2)
    time.sleep(1.0)
    body = worker.recommendations(user)
    assert body["n_events"] == 2
    assert worker.metric("coldstart_duplicate_events_total") - duplicates_before == 1


def test_new_catalog_item_is_recommendable_immediately(worker, produce, catalog):
    user = unique("u")
    new_id = unique("tent")
    produce("catalog.items", new_id, item(new_id, "Four person camping tent, waterproof"))
    produce("events.search", user, search(user, "camping tent for four people"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = worker.recommendations(user, k=1)
        if body["n_events"] == 1 and body["items"][0]["item_id"] == new_id:
            return
        time.sleep(0.25)
    raise AssertionError(f"new item not recommended: {body}")


def test_item_without_title_learns_its_text_from_queries(worker, produce, catalog):
    sku = unique("sku")
    for i in range(3):
        u = unique("u")
        produce("events.click", u, click(u, sku, query="halo 3 xbox game"))
    user = unique("u")
    produce("events.search", user, search(user, "halo xbox"))
    body = worker.wait_for_events(user, 1)
    assert body["items"][0]["item_id"] == sku, body["items"][:3]
    assert "halo 3" in body["items"][0]["text"]


@pytest.mark.parametrize("topic,key,value,reason", [
    ("events.search", "u-bad", b"{not json", "not_json"),
    ("events.search", "u-bad", {"event_id": "x", "user_id": "u-bad", "ts": 1.7e9}, "missing_field"),
    ("events.click", "u-bad", {"event_id": "x", "user_id": "u-bad", "ts": "yesterday", "item_id": "i"},
     "bad_timestamp"),
    ("events.click", "someone-else", {"event_id": "x", "user_id": "u-bad", "ts": 1.7e9, "item_id": "i"},
     "key_mismatch"),
    ("catalog.items", "i-bad", {"item_id": "i-bad"}, "missing_field"),
])
def test_malformed_events_go_to_dlq_with_reason(worker, produce, kafka_bootstrap, topic, key, value, reason):
    dlq_before = worker.metric("coldstart_dlq_total", reason=reason)
    marker = unique("m")
    if isinstance(value, dict):
        value = {**value, "marker": marker}
        raw = json.dumps(value).encode()
    else:
        raw = value + marker.encode()
    produce(topic, key, raw)
    consumer = KafkaConsumer("events.dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000, group_id=None)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for msg in consumer:
                record = json.loads(msg.value)
                original = base64.b64decode(record["value_b64"])
                if marker.encode() in original:
                    assert original == raw  # the original bytes, untouched
                    assert record["reason"] == reason
                    assert record["topic"] == topic and record["offset"] >= 0
                    assert worker.metric("coldstart_dlq_total", reason=reason) - dlq_before == 1
                    return
    finally:
        consumer.close()
    raise AssertionError(f"no DLQ record for {marker}:\n{worker.log_tail()}")


def test_training_samples_carry_importance(worker, produce, kafka_bootstrap, catalog):
    clicks_before = worker.metric("coldstart_importance_weight_count", type="click")
    user = unique("u")
    hp = next(i for i in catalog if i.startswith("hp-"))
    ev = click(user, hp, query="noise cancelling headphones")
    produce("events.click", user, ev)
    consumer = KafkaConsumer("training.samples", bootstrap_servers=kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=1000, group_id=None)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for msg in consumer:
                sample = json.loads(msg.value)
                if sample.get("sample_id") == ev["event_id"]:
                    assert msg.key == user.encode()
                    assert 0.1 <= sample["weight"] <= 4.0
                    assert sample["context"] == "noise cancelling headphones"
                    assert sample["model_version"].startswith("base-")
                    # This click's weight was observed in the importance histogram (not an earlier test's).
                    assert worker.metric("coldstart_importance_weight_count", type="click") > clicks_before
                    return
    finally:
        consumer.close()
    raise AssertionError("no training sample")


def test_restart_restores_profiles_from_changelog(kafka_bootstrap, tmp_path, produce, worker, catalog):
    """A worker killed with SIGKILL and restarted on an EMPTY data dir rebuilds its table from the
    changelog: profiles survive, and redelivered events still have no second effect."""
    app_id = unique("cs-restart")
    w = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "a").start()
    users = [unique("u") for _ in range(4)]
    try:
        for u in users:
            produce("events.search", u, search(u, "wireless headphones"))
            produce("events.search", u, search(u, "headphones with microphone"))
        for u in users:
            w.wait_for_events(u, 2)
        time.sleep(4)  # past one offset-commit interval
    finally:
        w.stop(kill=True)
    w2 = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "b").start()
    try:
        for u in users:
            body = w2.wait_for_events(u, 2, timeout=90)
            assert body["n_events"] == 2
            assert body["items"][0]["item_id"].startswith("hp-")
    finally:
        w2.stop()


def test_burst_every_event_has_exactly_one_effect(worker, kafka_bootstrap, catalog):
    """Hundreds of events at once (full batches, the take buffer parked while a batch is written),
    some redelivered: each user's event count equals the ground truth from what was produced."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    users = [unique("burst") for _ in range(150)]
    truth = {u: 0 for u in users}
    sent = []
    for i in range(1200):
        u = users[(i * 7) % len(users)]
        ev = search(u, ["wireless headphones", "gaming keyboard", "stapler", "frying pan"][i % 4])
        sent.append((u, ev))
        truth[u] += 1
    sent += sent[::10]  # 10% redelivered
    for u, ev in sent:
        producer.send("events.search", key=u.encode(), value=json.dumps(ev).encode())
    producer.flush()
    producer.close()
    for u in users:
        body = worker.wait_for_events(u, truth[u], timeout=120)
        assert body["n_events"] == truth[u], (u, body["n_events"], truth[u])
    assert worker.proc.poll() is None, worker.log_tail()


def test_consumer_lag_is_measured_and_drains(worker, kafka_bootstrap):
    """A burst larger than a few seconds of work: the lag gauge is seen above zero, then back at zero;
    the collections it caused are in coldstart_gc_pause_seconds."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=20)
    for i in range(6000):
        u = f"lag-{i % 500}"
        producer.send("events.search", key=u.encode(), value=json.dumps(search(u, f"lag query {i % 50}")).encode())
    producer.flush()
    producer.close()
    seen: list[float] = []
    deadline = time.monotonic() + 300  # generous: on a loaded 2-core machine commits can take a minute
    while time.monotonic() < deadline:
        seen.append(worker.metric("coldstart_consumer_lag_messages", topic="events.search"))
        if max(seen) > 0 and seen[-1] == 0.0:
            # and the burst's garbage collections were timed (issue 11: each holds the GIL), by generation
            assert worker.metric("coldstart_gc_pause_seconds_count", generation="0") > 0
            return
        time.sleep(0.5)
    raise AssertionError(f"lag never rose and drained: {seen[:5]} ... {seen[-5:]}\n{worker.log_tail()}")


def test_query_click_memory_ranks_what_others_clicked_after_that_query(worker, produce, catalog):
    chair = unique("chair")
    produce("catalog.items", chair, item(chair, "Ergonomic mesh office chair"))
    for _ in range(2):
        u = unique("u")
        produce("events.search", u, search(u, "birthday present for dad"))
        produce("events.click", u, click(u, chair, query="birthday present for dad"))
    worker.wait_for_events(u, 2)
    user = unique("u")
    produce("events.search", user, search(user, "birthday present for dad"))
    body = worker.wait_for_events(user, 1)
    assert body["items"][0]["item_id"] == chair, body["items"][:3]


def ranker_report(worker, features) -> tuple[float, dict[str, float]]:
    """The ranker's steps and weights as one scrape of ``worker``'s /metrics shows them."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = [s for family in text_string_to_metric_families(worker.metrics_text()) for s in family.samples]
    steps = sum(s.value for s in samples if s.name == "coldstart_ranker_steps")
    weights = {s.labels["feature"]: s.value for s in samples if s.name == "coldstart_ranker_weight"}
    return steps, {f: weights.get(f, 0.0) for f in features}


def test_a_restarted_worker_keeps_what_its_ranker_learned(kafka_bootstrap, tmp_path, produce, worker, catalog):
    """The learned ranker is checkpointed in the worker's data directory (safetensors, atomically) and
    restored at start: a worker restarted on its disk goes on from what it had learned, not from the
    fixed blend."""
    import torch

    from coldstart.model.ranker import FEATURES, LinearRanker, load_ranker

    app_id = unique("cs-ranker")
    env = {"COLDSTART_RANKER_SAVE_EVERY_S": "1"}
    w = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "data", extra_env=env).start()
    items = list(catalog)
    users = [unique("u") for _ in range(6)]
    try:
        for n, u in enumerate(users):
            produce("events.click", u, click(u, items[n % len(items)]))
            produce("events.click", u, click(u, items[(n + 1) % len(items)]))
        for u in users:
            w.wait_for_events(u, 2)
        deadline = time.monotonic() + 30
        while w.metric("coldstart_ranker_steps") < len(users) * 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        learned = w.metric("coldstart_ranker_steps")
        assert learned >= len(users) * 2, w.log_tail()
        path = tmp_path / "data" / "ranker.safetensors"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            saved, why = load_ranker(path)
            if saved is not None and saved.steps >= learned:
                break
            time.sleep(0.5)
        assert saved is not None and saved.steps >= learned, why
        assert not torch.allclose(saved.weights, LinearRanker().weights)  # it learned: not the initial blend
        # the clicked items' offsets were learned (the shared broker's catalogue holds other tests' items too)
        assert any(abs(saved.item_bias.get(i, 0.0)) > 1e-4 for i in items), saved.item_bias
        # and the version its text weights are scaled to, so a restart onto another version rescales from it
        assert saved.text_version == w.recommendations(users[0])["model_version"]
        # What the worker reports: its 5 s timer sets the steps and the weights together, so read them
        # from one scrape, once that report has caught up with the checkpoint (CI once read the weights
        # of a report older than the file).
        deadline = time.monotonic() + 30
        while True:
            report = ranker_report(w, FEATURES)
            if report[0] == saved.steps or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert report[0] == saved.steps, (report, saved.steps)
        weights = report[1]
    finally:
        w.stop()
    w2 = WorkerProcess(kafka_bootstrap, app_id, tmp_path / "data", extra_env=env).start()
    try:
        deadline = time.monotonic() + 30
        while w2.metric("coldstart_ranker_steps") < saved.steps and time.monotonic() < deadline:
            time.sleep(0.5)
        steps = w2.metric("coldstart_ranker_steps")
        # It resumes from the checkpoint (a fresh ranker would count only what it learns now). Under
        # at-least-once a click whose offset was not committed before the stop comes back and is learned
        # again: CI once saw 19 steps after a checkpoint of 16. The exact state is compared only when
        # nothing came back.
        assert steps >= saved.steps
        if steps == saved.steps:
            restored = {f: w2.metric("coldstart_ranker_weight", feature=f) for f in FEATURES}
            assert restored == pytest.approx(dict(zip(FEATURES, saved.weights.tolist())), abs=1e-6)
            assert restored == pytest.approx(weights, abs=1e-6)
            assert w2.metric("coldstart_ranker_item_offsets") == len(saved.item_bias)  # the offsets came back too
        else:
            assert w2.metric("coldstart_ranker_item_offsets") >= len(saved.item_bias)
    finally:
        w2.stop()
