"""``coldstart demo``: local Kafka, one worker, a replay of the site simulator, and where to look."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

from coldstart.errors import ColdstartError
from coldstart.settings import Settings

console = Console()


def run_demo(s: Settings, *, n_events: int, rate: float, dataset: str | None, duration: float | None,
             external_kafka: bool) -> None:
    from coldstart.replay import SiteSimulator, open_dataset
    from coldstart.replay.producer import produce
    from coldstart.streams.topics import ensure_topics

    kafka = None
    if not external_kafka:
        from coldstart.kafka_local import LocalKafka

        kafka = LocalKafka(version=s.kafka_version, port=s.kafka_port, data_dir=s.kafka_dir)
        console.print(f"[bold]1/4[/] starting local Kafka {s.kafka_version} in {s.kafka_dir} ...")
        s = s.replace(bootstrap_servers=kafka.start())
    console.print(f"[bold]2/4[/] topics on {s.bootstrap_servers}")
    ensure_topics(s)

    console.print(f"[bold]3/4[/] worker on http://{s.web_host}:{s.web_port} (log: var/demo-worker.log)")
    Path("var").mkdir(exist_ok=True)
    log = open("var/demo-worker.log", "ab")
    env = {**os.environ, "COLDSTART_BOOTSTRAP_SERVERS": s.bootstrap_servers,
           "COLDSTART_WEB_PORT": str(s.web_port)}
    worker = subprocess.Popen([sys.executable, "-m", "coldstart.cli", "worker"], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://{s.web_host}:{s.web_port}/health", timeout=180, proc=worker)
        source = open_dataset(dataset, s.shared_data) if dataset else SiteSimulator(seed=7).events(n_events, start_ts=time.time())
        events = list(itertools.islice(source, n_events))
        console.print(f"[bold]4/4[/] replaying {len(events)} events at {rate:.0f}/s")
        summary = asyncio.run(produce(events, s.bootstrap_servers, rate=rate))
        console.print(summary)
        time.sleep(2.0)
        users = [e.key for e in events if e.type in ("search", "click")]
        show_users(s, [users[-1], users[len(users) // 2], "a-visitor-never-seen"])
        base = f"http://{s.web_host}:{s.web_port}"
        console.print(f"\nWhere to look:\n  {base}/users/{users[-1]}/recommendations?k=10\n"
                      f"  {base}/metrics   (Prometheus)\n  {base}/health\n"
                      f"  deploy/prometheus/prometheus.yml, deploy/grafana/ for dashboards")
        if duration is None:
            console.print("Serving; Ctrl-C to stop.")
            worker.wait()
        else:
            time.sleep(duration)
    except KeyboardInterrupt:
        pass
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        if kafka is not None:
            kafka.stop()


def show_users(s: Settings, users: list[str]) -> None:
    for user in users:
        body = get_json(f"http://{s.web_host}:{s.web_port}/users/{user}/recommendations?k=5")
        table = Table(title=f"user {user}: {body['n_events']} events, {body['strategy']}, "
                            f"model {body['model_version']}")
        table.add_column("item")
        table.add_column("score", justify="right")
        table.add_column("text")
        table.add_column("because")
        for item in body["items"]:
            because = ", ".join(f"{b['kind']} {b['text'] or b['item_id']} ({b['share']:.0%})" for b in item["because"])
            table.add_row(item["item_id"], f"{item['score']:.3f}", item["text"][:50], because[:60])
        console.print(table)


def get_json(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ColdstartError(f"the worker exited with code {proc.returncode}; see its log")
        try:
            get_json(url, timeout=2.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.5)
    raise ColdstartError(f"{url} did not answer within {timeout:.0f} s")
