"""Monitoring that has met a real Prometheus: a Prometheus server (Debian's ``prometheus``, installed by
``.ci/run``) loads ``deploy/prometheus`` as shipped, scrapes a real worker, its serving replica and a
real trainer on a real broker, and every alert signal and every Grafana panel query returns at least one series through its
HTTP API. A renamed metric, a wrong label or a job name that matches nothing fails here."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from coldstart.prometheus_local import DEPLOY, PrometheusServer
from coldstart.settings import Settings
from tests.conftest import module_broker_fixture
from tests.streams.conftest import WorkerProcess, free_port, produce, unique  # noqa: F401 (fixture)

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

kafka_bootstrap = module_broker_fixture()
DASHBOARD = DEPLOY.parent / "grafana" / "coldstart.json"
# `signal OP number`, the shape every alert in alerts.yml has: the signal must return series.
ALERT_SHAPE = re.compile(r"(?s)(.*\S)\s*(?:[<>]=?|[=!]=)\s*-?[\d.]+\s*")


def alert_signals() -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    signals = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            shape = ALERT_SHAPE.fullmatch(rule["expr"])
            assert shape, f"{rule['alert']}: expression is not `signal OP number`: {rule['expr']}"
            signals[rule["alert"]] = shape.group(1)
    return signals


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap, tmp_path_factory):
    """A worker, a serving replica of it and a trainer on the module's broker, scraped every second by a
    real Prometheus."""
    from coldstart.streams.topics import ensure_topics

    ensure_topics(Settings(bootstrap_servers=kafka_bootstrap, partitions=2))
    root = tmp_path_factory.mktemp("monitoring")
    app_id = unique("cs-prom")
    worker = WorkerProcess(kafka_bootstrap, app_id, root / "data").start()
    replica = None
    trainer_port = free_port()
    trainer_log = open(root / "trainer.log", "ab")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "coldstart.cli", "trainer", "--metrics-port", str(trainer_port)],
        env={**os.environ, "COLDSTART_BOOTSTRAP_SERVERS": kafka_bootstrap, "COLDSTART_DEVICE": "cpu",
             "COLDSTART_REGISTRY_URI": str(root / "registry"), "COLDSTART_BUFFER_DIR": str(root / "buffer"),
             "COLDSTART_PARTITIONS": "2"},
        stdout=trainer_log, stderr=subprocess.STDOUT)
    prometheus = None
    try:
        replica = WorkerProcess(kafka_bootstrap, app_id, root / "data", role="serve").start()
        deadline = time.monotonic() + 180
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{trainer_port}/metrics", timeout=2)
                break
            except httpx.HTTPError:
                assert trainer.poll() is None and time.monotonic() < deadline, \
                    (root / "trainer.log").read_text()[-3000:]
                time.sleep(0.5)
        prometheus = PrometheusServer(root / "prometheus", free_port(), [f"127.0.0.1:{worker.port}"],
                                      [f"127.0.0.1:{trainer_port}"], scrape_interval_s=1,
                                      replicas=[f"127.0.0.1:{replica.port}"]).start()
        yield worker, replica, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        trainer.terminate()
        trainer.wait(timeout=60)
        if replica is not None:
            replica.stop()
        worker.stop()


def drive_traffic(worker: WorkerProcess, replica: WorkerProcess, produce) -> None:
    """Events of both kinds, one malformed event, one unsigned announcement and a recommendation from
    the replica, so every labelled series the rules and panels read exists."""
    item = unique("item")
    produce("catalog.items", item, {"item_id": item, "title": "Wireless noise cancelling headphones"})
    user = unique("u")
    produce("events.search", user, {"event_id": unique("e"), "user_id": user, "ts": time.time(),
                                    "query": "headphones"})
    produce("events.click", user, {"event_id": unique("e"), "user_id": user, "ts": time.time(),
                                   "item_id": item, "query": "headphones"})
    produce("events.search", user, b"{not json")
    produce("model.versions", "current", {"version": "v0009", "uri": "/nowhere", "action": "publish",
                                          "announced_ts": time.time()})
    worker.wait_for_events(user, 2, timeout=120)
    deadline = time.monotonic() + 60
    while 'coldstart_model_swaps_refused_total{reason="unsigned"} 1.0' not in worker.metrics_text():
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.5)
    while True:  # the replica reads the profile from the table's changelog
        answer = httpx.get(f"{replica.url}/users/{user}/recommendations", timeout=10)
        if answer.status_code == 200 and answer.json()["n_events"] == 2:
            break
        assert time.monotonic() < deadline, replica.log_tail()
        time.sleep(0.5)


def wait_series(prometheus: PrometheusServer, exprs: dict[str, str], timeout: float = 60.0) -> dict[str, str]:
    """Query until every expression returns a series; the ones that still return none."""
    deadline = time.monotonic() + timeout
    while True:
        empty = {name: expr for name, expr in exprs.items() if not prometheus.query(expr)}
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(1.0)


def test_every_alert_signal_and_panel_query_returns_series(stack, produce):
    worker, replica, prometheus = stack
    deadline = time.monotonic() + 60
    while True:  # target discovery and the first scrape take a moment after /-/ready
        targets = httpx.get(f"{prometheus.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        up = sorted(t["labels"]["job"] for t in targets if t["health"] == "up")
        if up == ["coldstart-replica", "coldstart-trainer", "coldstart-worker"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert up == ["coldstart-replica", "coldstart-trainer", "coldstart-worker"], targets
    # Traffic only once both are scraped: the refusal counter is seen at 0 first, as in production.
    drive_traffic(worker, replica, produce)
    rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} == set(alert_signals())

    signals = alert_signals()
    assert not wait_series(prometheus, signals), "alert signals without a series"
    panels = {f"{title}: {expr}": expr for title, expr in panel_queries()}
    assert not wait_series(prometheus, panels), "dashboard queries without a series"
    # Nothing is wrong with this healthy pair, except the refused announcement we sent on purpose.
    for job in ("coldstart-worker", "coldstart-replica", "coldstart-trainer"):
        assert prometheus.query(f'up{{job="{job}"}} == 1'), job
    # The replica's answer was counted under its own job, and it holds the user's profile.
    assert wait_series(prometheus, {"answered": 'sum(coldstart_recommendations_total{job="coldstart-replica"}) > 0',
                                    "profiles": 'coldstart_replica_profiles{job="coldstart-replica"} > 0'}) == {}
    assert prometheus.query(signals["ColdstartModelVersionRefused"] + " > 0")
    # The check is not vacuous: a misspelt metric returns no series.
    assert wait_series(prometheus, {"typo": "sum(rate(coldstart_dlq_totl[5m]))"}, timeout=0)


def test_alert_shape_splits_signal_from_threshold():
    assert ALERT_SHAPE.fullmatch('up{job="coldstart-worker"} == 0').group(1) == 'up{job="coldstart-worker"}'
    assert ALERT_SHAPE.fullmatch("sum(rate(a[5m])) / sum(rate(b[5m])) > 0.05").group(1) == \
        "sum(rate(a[5m])) / sum(rate(b[5m]))"
