"""The prequential runner: replay a stream through Kafka, and before each click ask the live worker
(and every in-process baseline) for the user's top-K, then replay and learn the click.

Nothing from the future reaches a ranking:

- events are sent in stream order, except searches sent ahead to keep the worker busy — only searches
  of users with no unreplayed click before them (a search changes its own user's profile only);
- clicks and catalog items, which change shared state (popularity, item texts), are sent only after
  every earlier click was ranked;
- before ranking a click, the runner waits until the worker has applied every earlier event of that
  user (``n_events`` in the API answer), and, when items were announced, until its item index holds
  them. Other users' latest clicks may still be in flight: the live system is at worst slightly stale.

Baselines learn each event in stream order after ranking it (``rank`` before ``learn_one``).

On a shared broker (a given bootstrap) every user, event and item id is prefixed with a run
namespace, and the worker's answer is filtered to this run's items, so leftovers of other runs on the
same topics neither leak in nor count as recommendations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coldstart import local
from coldstart.settings import EvaluationSettings
from coldstart.errors import ColdstartError, KafkaUnavailable
from coldstart.evaluation.baselines import Baseline
from coldstart.evaluation.records import LIVE, LIVE_TRAINER, Ranking, TaskRun, write_rankings
from coldstart.replay.events import ReplayEvent, topic_for

log = logging.getLogger(__name__)

TASKS = {"search_click": True, "profile_only": False}  # task -> searches kept in the stream
SEND_AHEAD = 256  # events scanned ahead for searches that may be sent early
MAX_K = 1000  # the API's bound on k


# ------------------------------------------------------------------------------------- streams
def load_events(spec: str, shared_data: Path, limit: int | None = None, seed: int = 7) -> list[ReplayEvent]:
    """A dataset's events in time order; ``limit`` counts searches and clicks (items ride along)."""
    from coldstart.replay import SiteSimulator, open_dataset

    name, _, option = spec.partition(":")
    if name == "simulator":
        source: Iterable[ReplayEvent] = SiteSimulator(seed=int(option or seed)).events(limit or 3000)
    else:
        source = open_dataset(spec, shared_data)
    out, users = [], 0
    for event in source:
        if event.type != "item":
            if limit is not None and users >= limit:
                break
            users += 1
        out.append(event)
    return out


def task_stream(events: Sequence[ReplayEvent], task: str) -> list[ReplayEvent]:
    """The stream of a task: ``profile_only`` drops the searches (clicks keep their ``query`` field: it
    is what the shop learns with the click, after it is ranked)."""
    if task not in TASKS:
        raise ColdstartError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return [e for e in events if TASKS[task] or e.type != "search"]


def namespaced(event: ReplayEvent, ns: str) -> ReplayEvent:
    """The event with its user, event and item ids prefixed by ``ns``.

    >>> namespaced(ReplayEvent("click", "u", {"event_id": "e", "user_id": "u", "item_id": "i"}, 1.0), "r~").value
    {'event_id': 'r~e', 'user_id': 'r~u', 'item_id': 'r~i'}
    """
    if not ns:
        return event
    value = dict(event.value)
    for key in ("event_id", "user_id", "item_id"):
        if value.get(key) is not None:
            value[key] = ns + str(value[key])
    return ReplayEvent(event.type, ns + event.key, value, event.ts)


# ---------------------------------------------------------------------------------- the worker
class LiveClient:
    """The worker's HTTP API, as the runner uses it."""

    def __init__(self, base_url: str, session, *, k: int, namespace: str = "", exclude_clicked: bool = False,
                 timeout_s: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.k = k
        self.ns = namespace
        self.exclude = "true" if exclude_clicked else "false"
        self.timeout_s = timeout_s
        self.last_version: str | None = None  # model_version of the last recommendations answer

    async def _get(self, path: str) -> dict | None:
        import aiohttp

        try:
            async with self.session.get(self.base_url + path) as resp:
                if resp.status == 503:
                    return None
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    raise ColdstartError(f"worker answered {resp.status} to {path}: {body}")
                return body
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            return None

    async def health(self) -> dict | None:
        return await self._get("/health")

    async def wait_items(self, at_least: int) -> bool:
        """Until the worker holds ``at_least`` items with a vector (rows without one cannot be ranked)."""
        return await self._wait_health("items_ready", "items", at_least)

    async def wait_clicks(self, at_least: int) -> bool:
        """Until the worker's batch path has learned ``at_least`` clicks: the ranker and the stream
        statistics then saw every earlier click, as the in-process mode does (exact prequential order)."""
        return await self._wait_health("clicks_learned", None, at_least)

    async def _wait_health(self, field: str, fallback: str | None, at_least: int) -> bool:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            body = await self.health()
            if body is not None:
                if field not in body and fallback is None:
                    return True  # an older worker: nothing to wait for
                if body.get(field, body.get(fallback, 0)) >= at_least:
                    return True
            await asyncio.sleep(0.01)
        return False

    async def rank_when_ready(self, user: str, expected: int) -> tuple[list[str], int, bool]:
        """The user's top-K once the worker applied ``expected`` events of theirs (or at the timeout:
        then ``stale`` is true). Returns (item ids without namespace, n_events, stale)."""
        path_user = urllib.parse.quote(self.ns + user, safe="")
        deadline = time.monotonic() + self.timeout_s
        k, pause = self.k, 0.005
        while True:
            body = await self._get(f"/users/{path_user}/recommendations?k={k}&exclude_clicked={self.exclude}")
            late = time.monotonic() > deadline
            if body is None or body["n_events"] < expected:
                if late:
                    if body is None:
                        raise ColdstartError(f"the worker at {self.base_url} stopped answering")
                else:
                    await asyncio.sleep(pause)
                    pause = min(pause * 1.5, 0.05)
                    continue
            items = [i["item_id"] for i in body["items"]]
            self.last_version = body.get("model_version")
            ours = [i[len(self.ns):] for i in items if i.startswith(self.ns)]
            if len(ours) < self.k and len(items) == k and k < MAX_K:
                k = min(MAX_K, k * 4)  # other runs' items crowd the list: ask for more
                continue
            return ours[: self.k], int(body["n_events"]), body["n_events"] < expected


def importance_histogram(metrics_text: str) -> dict[str, dict[str, float]]:
    """Cumulative bucket counts of ``coldstart_importance_weight`` by event type from /metrics text.

    >>> importance_histogram('coldstart_importance_weight_bucket{le="0.5",type="click"} 3.0\\n')
    {'click': {'0.5': 3.0}}
    """
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for line in metrics_text.splitlines():
        if not line.startswith("coldstart_importance_weight_bucket{"):
            continue
        labels, _, value = line.partition("} ")
        parts = dict(p.split("=", 1) for p in labels.split("{", 1)[1].split(","))
        out[parts["type"].strip('"')][parts["le"].strip('"')] = float(value)
    return dict(out)


# ---------------------------------------------------------------------------------- the runner
class DeadLetterWatch:
    """Follows ``events.dlq`` from its end while a run replays: the event ids the worker rejected (so
    the runner stops waiting for them) and the count per reason (so it fails fast with the reason)."""

    def __init__(self, bootstrap: str, namespace: str = "", client_options: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.client_options = dict(client_options or {})
        self.ns = namespace
        self.by_reason: dict[str, int] = {}
        self.event_ids: dict[str, set[str]] = defaultdict(set)  # user -> rejected event ids
        self.clicks: set[str] = set()  # rejected clicks (never learned)
        self._task: asyncio.Task | None = None
        self._consumer = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        from coldstart import contract
        from coldstart.streams.catalog import assign_all_partitions

        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None,
                                          enable_auto_commit=False, auto_offset_reset="latest",
                                          **self.client_options)
        await self._consumer.start()
        tps = await assign_all_partitions(self._consumer, (contract.DLQ,))
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end now: letters written from here on are this run's
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        from coldstart import contract
        from coldstart.contract import DeadLetter

        async for msg in self._consumer:
            letter = DeadLetter.loads(msg.value)
            try:
                body = json.loads(letter.original())
            except ValueError:
                body = {}
            event_id = str(body.get("event_id")) if isinstance(body, dict) else "None"
            user = letter.key or ""
            if self.ns and not user.startswith(self.ns):
                continue
            self.by_reason[letter.reason] = self.by_reason.get(letter.reason, 0) + 1
            self.event_ids[user[len(self.ns):]].add(event_id.removeprefix(self.ns))
            if letter.topic == contract.CLICK:
                self.clicks.add(event_id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()


def shared_broker_options() -> dict[str, Any]:
    """Security keywords for a broker the runner did not start (from the COLDSTART_KAFKA_* settings)."""
    from coldstart.kafka_security import aiokafka_options
    from coldstart.settings import Settings

    return aiokafka_options(Settings.from_env())


async def run_task(stream: Sequence[ReplayEvent], task: str, baselines: Sequence[Baseline], *,
                   bootstrap: str, worker_url: str, namespace: str = "", k: int = 10,
                   exclude_clicked: bool = False, progress: bool = False, exact_order: bool = False,
                   client_options: Mapping[str, Any] | None = None, method: str = LIVE,
                   before_click: Callable[[int], Awaitable[None]] | None = None) -> TaskRun:
    """Replay ``stream`` prequentially and rank every click with the worker and every baseline.

    ``client_options``: Kafka security keywords for the replay producer and the dead-letter reader
    (a shop's broker with SASL/TLS; empty for the runner's own local broker).

    ``exact_order``: before each ranking, also wait until the worker has learned every earlier click
    (``clicks_learned`` on /health), so the live ranker and statistics see exactly what the in-process
    mode sees. Off by default: it costs one batch latency per click and is not measured on a full log yet.

    ``before_click``: awaited with the number of clicks ranked so far before each ranking (the trainer-on
    run waits there for the trainer's first round, see :meth:`LocalStack.wait_first_round`).
    """
    import aiohttp
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    from coldstart.replay.producer import encode

    run = TaskRun(task)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, **(client_options or {}))
    try:
        await producer.start()
    except (KafkaError, OSError) as exc:
        await producer.stop()
        raise KafkaUnavailable(f"no Kafka broker answered at {bootstrap} ({exc})") from exc
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    live = LiveClient(worker_url, session, k=k, namespace=namespace, exclude_clicked=exclude_clicked)
    started = time.monotonic()
    sent: set[int] = set()
    applied: dict[str, set[str]] = defaultdict(set)  # user -> event ids sent (what the worker will count)
    clicked: dict[str, list[str]] = defaultdict(list)
    pending_query: dict[str, str] = {}
    items: set[str] = set()
    items_dirty = False
    first = (await live.health()) or {}
    base_items = first.get("items_ready", first.get("items", 0)) if namespace else 0
    base_clicks = first.get("clicks_learned", 0)
    clicks_sent: set[str] = set()  # distinct click ids replayed (the worker learns each once)
    dead = DeadLetterWatch(bootstrap, namespace, client_options)
    await dead.start()

    async def send(index: int) -> None:
        event = stream[index]
        key, value = encode(namespaced(event, namespace))
        await producer.send(topic_for(event.type), key=key, value=value)
        sent.add(index)
        if event.type != "item":
            applied[event.key].add(str(event.value.get("event_id")))

    async def send_ahead(index: int) -> None:
        blocked = {stream[index].key}
        for j in range(index + 1, min(len(stream), index + 1 + SEND_AHEAD)):
            e = stream[j]
            if e.type == "item":
                return
            if e.type == "click":
                blocked.add(e.key)
            elif j not in sent and e.key not in blocked:
                await send(j)

    try:
        for index, event in enumerate(stream):
            user = event.key
            if event.type == "click" and event.value.get("item_id") is not None:
                item = str(event.value["item_id"])
                if items_dirty:
                    await producer.flush()
                    if not await live.wait_items(base_items + len(items)):
                        log.warning("the worker's item index did not catch up within %.0f s", live.timeout_s)
                    items_dirty = False
                await send_ahead(index)
                want = base_clicks + len(clicks_sent - dead.clicks)
                if exact_order and clicks_sent and not await live.wait_clicks(want):
                    log.warning("the worker did not learn the earlier clicks within %.0f s (%s of %d)",
                                live.timeout_s, ((await live.health()) or {}).get("clicks_learned"), want)
                if before_click is not None:
                    await before_click(run.clicks)
                query = pending_query.get(user) if TASKS[task] else None
                ranking, stale = await _rank_live(live, dead, user, applied, len(sent))
                expected = len(applied[user])
                record_click(run, event, ranking, stale, expected, clicked, query, baselines, k, exclude_clicked,
                             method=method, version=live.last_version)
                pending_query.pop(user, None)
                items.add(item)
            if index not in sent:
                await send(index)
                if event.type == "click":
                    clicks_sent.add(namespace + str(event.value.get("event_id")))
            if event.type == "item":
                items.add(event.key)
                items_dirty = True
            elif event.type == "search" and event.value.get("query"):
                pending_query[user] = str(event.value["query"])
            for b in baselines:
                b.learn_one(event)
            run.events += 1
            if progress and run.clicks and index % 500 == 0:
                log.info("%s: %d/%d events, %d clicks ranked", task, index, len(stream), run.clicks)
        await producer.flush()
        run.seconds = time.monotonic() - started
        run.catalog = len(items)
        try:
            async with session.get(worker_url.rstrip("/") + "/metrics") as resp:
                run.importance = importance_histogram(await resp.text())
        except aiohttp.ClientError as exc:
            log.warning("could not read the worker's /metrics: %s", exc)
    finally:
        await dead.stop()
        await session.close()
        await producer.stop()
    return run


async def _rank_live(live: LiveClient, dead: DeadLetterWatch, user: str, applied: dict[str, set[str]],
                     n_sent: int) -> tuple[list[str], bool]:
    """Rank once the worker applied the user's events, less the ones it dead-lettered; fail fast
    (with the reasons) when it rejects most of the replay instead of timing out click after click."""
    timeout = live.timeout_s
    live.timeout_s = 1.0  # short polls, so rejected events are noticed within a second
    try:
        deadline = time.monotonic() + timeout
        while True:
            check_dead_letters(dead.by_reason, n_sent)
            expected = len(applied[user] - dead.event_ids.get(user, set()))
            try:
                ranking, _, stale = await live.rank_when_ready(user, expected)
            except ColdstartError:
                if time.monotonic() > deadline:
                    raise
                continue
            if not stale or time.monotonic() > deadline:
                return ranking, stale
    finally:
        live.timeout_s = timeout


def run_task_in_process(stream: Sequence[ReplayEvent], task: str, baselines: Sequence[Baseline], pipeline, *,
                        k: int = 10, exclude_clicked: bool = False, progress: bool = False,
                        method: str = LIVE) -> TaskRun:
    """The prequential loop of :func:`run_task` with the worker's code objects in-process
    (:class:`~coldstart.evaluation.inprocess.InProcessPipeline`): same order, same records. A pipeline
    with a trainer runs its rounds (and swaps) between events; ``run.trainer`` then holds its rounds."""
    run = TaskRun(task)
    started = time.monotonic()
    sent: dict[str, int] = defaultdict(int)  # user -> events replayed (what the worker would count)
    clicked: dict[str, list[str]] = defaultdict(list)
    pending_query: dict[str, str] = {}
    items: set[str] = set()
    pipeline.exclude_clicked = exclude_clicked
    for index, event in enumerate(stream):
        user = event.key
        if event.type == "click" and event.value.get("item_id") is not None:
            item = str(event.value["item_id"])
            expected = sent[user]
            query = pending_query.get(user) if TASKS[task] else None
            ranking = pipeline.rank(user, query, k)
            stale = pipeline.n_events(user) < expected
            check_dead_letters(pipeline.dead_letters, sum(sent.values()))
            record_click(run, event, ranking, stale, expected, clicked, query, baselines, k, exclude_clicked,
                         method=method, version=pipeline.version)
            pending_query.pop(user, None)
            items.add(item)
        pipeline.learn_one(event)
        if event.type == "item":
            items.add(event.key)
        else:
            sent[user] += 1
            if event.type == "search" and event.value.get("query"):
                pending_query[user] = str(event.value["query"])
        for b in baselines:
            b.learn_one(event)
        run.events += 1
        if progress and run.clicks and index % 500 == 0:
            log.info("%s: %d/%d events, %d clicks ranked (in-process%s)", task, index, len(stream), run.clicks,
                     f", {method} serving {pipeline.version}" if getattr(pipeline, "trainer", None) else "")
    run.seconds = time.monotonic() - started
    run.catalog = len(items)
    if getattr(pipeline, "trainer", None) is not None:
        run.trainer = {"rounds": list(pipeline.rounds), "samples": pipeline.samples_emitted,
                       "untrained_samples": len(pipeline.pending),
                       "config": dataclasses.asdict(pipeline.trainer.config)}
    return run


def check_dead_letters(dead: dict[str, int], sent: int, *, min_sent: int = 20, max_share: float = 0.5) -> None:
    """Fail fast when the worker rejects most of what is replayed: waiting for events that went to the
    DLQ would cost the full timeout per click (hours for a run) and measure nothing.

    >>> check_dead_letters({"missing_field": 3}, sent=100)
    >>> check_dead_letters({"bad_ts": 30}, sent=40)
    Traceback (most recent call last):
    ...
    coldstart.errors.ColdstartError: the worker dead-lettered 30 of 40 replayed events (bad_ts: 30); fix the replay (see events.dlq for each record's reason)
    """
    total = sum(dead.values())
    if sent >= min_sent and total > max_share * sent:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(dead.items(), key=lambda kv: -kv[1]))
        raise ColdstartError(f"the worker dead-lettered {total} of {sent} replayed events ({reasons}); "
                             "fix the replay (see events.dlq for each record's reason)")


def record_click(run: TaskRun, event: ReplayEvent, ranking: list[str], stale: bool, prior: int,
                 clicked: dict[str, list[str]], query: str | None, baselines: Sequence[Baseline], k: int,
                 exclude_clicked: bool, *, method: str = LIVE, version: str | None = None) -> None:
    """Score one click for the system (``ranking``) and every baseline, then remember the click.

    Shared by the live and the in-process runs, so both record exactly the same fields.
    """
    user, item = event.key, str(event.value["item_id"])
    run.stale += stale
    common = dict(task=run.task, click=run.clicks, event_id=str(event.value.get("event_id")), user=user,
                  ts=event.ts, prior=prior, prior_clicks=len(clicked[user]), query=query)
    run.rankings.append(_ranked(method, ranking, item, stale=stale, version=version, **common))
    skip = set(clicked[user]) if exclude_clicked else set()
    for b in baselines:
        ranked = [i for i in b.rank(user, query, k + len(skip)) if i not in skip][:k]
        run.rankings.append(_ranked(b.name, ranked, item, **common))
    run.clicks += 1
    clicked[user].append(item)


def _ranked(method: str, ranking: list[str], clicked_item: str, stale: bool = False, version: str | None = None,
            **common) -> Ranking:
    from coldstart.evaluation.metrics import rank_of

    return Ranking(method=method, ranking=list(ranking), rank=rank_of(ranking, clicked_item), stale=stale,
                   item=clicked_item, version=version, **common)


# ---------------------------------------------------------------------------------- launcher
class LocalStack(local.LocalStack):
    """A broker (started here unless ``bootstrap`` is given) and one fresh worker subprocess, from the
    local toolkit, as an evaluation wants them.

    A fresh worker means a fresh consumer group and profile table (its own ``COLDSTART_APP_ID``); on
    a broker started here the topics are fresh too, so no state carries over between tasks.

    ``trainer``: also start a ``coldstart trainer`` with these settings, on a registry and buffer of
    this stack's own (``registry/`` and ``buffer/`` in the work folder), which the worker follows.
    """

    def __init__(self, bootstrap: str | None = None, *, partitions: int | None = None,
                 workdir: Path | None = None, start_timeout_s: float = 240.0, trainer=None) -> None:
        from coldstart.settings import Settings

        super().__init__(Settings.from_env(partitions=partitions), bootstrap=bootstrap, workdir=workdir,
                         app_id=f"cs-eval-{uuid.uuid4().hex[:8]}")
        self.start_timeout_s = start_timeout_s
        self.trainer_config = trainer
        self.trainer = None

    def start(self) -> "LocalStack":
        super().start()
        if self.trainer_config is not None:
            self.settings = self.settings.replace(registry_uri=str(self.workdir / "registry"),
                                                  buffer_dir=self.workdir / "buffer", trainer=self.trainer_config)
        self.worker = self.start_worker(
            session_timeout_s=10.0,
            # An evaluation replays history as it happened (the 1997-98 Amazon log included): its
            # worker accepts any past time instead of refusing it as a clock bug (issue 8).
            min_event_ts=0.0,
            # Users returning after months are part of what is measured; expiry is a storage policy,
            # not a recommendation, and the baselines never forget either.
            user_ttl_s=0.0)
        self.worker.wait_healthy(self.start_timeout_s)
        if self.trainer_config is not None:
            self.trainer = self.start_trainer()
            self._wait_trainer(self.start_timeout_s)
        return self

    def _wait_trainer(self, timeout: float) -> None:
        """Until the trainer has loaded its encoder and buffer (its metrics exist): a replay started before
        would be half over before the trainer read its first sample."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.trainer.proc.poll() is not None:
                raise ColdstartError(f"the trainer exited with {self.trainer.proc.returncode}:\n{self.trainer.log_tail()}")
            try:
                if any(k.startswith("coldstart_trainer_buffer_samples") for k in self.trainer.scrape()):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise ColdstartError(f"the trainer was not ready within {timeout:.0f} s:\n{self.trainer.log_tail()}")

    @property
    def url(self) -> str:
        return self.worker.url

    def wait_first_round(self, timeout_s: float = 300.0) -> None:
        """Until the trainer has finished its first round and, when it published, the worker serves that
        version. Rounds otherwise race the replay: on a slow machine a short replay could end before the
        first version arrives, and the trainer-on run would measure nothing but the base model."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outcomes = {k.split('"')[1]: v for k, v in self.trainer.scrape().items()
                        if k.startswith("coldstart_trainer_rounds_total{")}
            if sum(outcomes.values()) >= 1:
                if not outcomes.get("published"):
                    return
                try:
                    if str(self.worker.get("/health").json().get("model_version", "")).startswith("v"):
                        return
                except Exception:  # noqa: BLE001 - 503 while the worker swaps: ask again
                    pass
            time.sleep(0.5)
        log.warning("the trainer's first round did not reach the worker within %.0f s: the replay goes on", timeout_s)

    def trainer_rounds(self) -> dict[str, Any]:
        """What the trainer did: rounds and gate decisions by outcome (its /metrics) and every version it
        published with the gate's holdout scores (the registry's manifests)."""
        from coldstart.model.registry import Registry

        out: dict[str, Any] = {"rounds": [], "outcomes": {}, "gate": {}, "last_gate": {}}
        if self.trainer is None:
            return out
        try:
            metrics = self.trainer.scrape()
        except Exception as exc:  # an exited trainer: its log says why
            log.warning("could not read the trainer's /metrics (%s):\n%s", exc, self.trainer.log_tail())
            metrics = {}
        for key, value in metrics.items():
            for name, field_name in (("coldstart_trainer_rounds_total", "outcomes"),
                                     ("coldstart_trainer_gate_decisions_total", "gate")):
                if key.startswith(name + "{"):
                    out[field_name][key.split('"')[1]] = int(value)
            # The last gate's holdout scores, refused rounds included: the registry only keeps what shipped.
            if key.startswith("coldstart_trainer_eval_recall_at_10{"):
                out["last_gate"][key.split('"')[1]] = float(value)
        registry = Registry(self.settings.registry_uri)
        for version in registry.list_versions():
            manifest = registry.manifest(version)
            m = manifest.get("metrics", {})
            out["rounds"].append({
                "outcome": "published", "version": version, "serving": manifest.get("parent"),
                "created_ts": manifest.get("created_ts"), "data_window": manifest.get("data_window"),
                "n_train": m.get("n_train"), "steps": m.get("steps"),
                "candidate_metrics": {k[len("candidate_"):]: v for k, v in m.items() if k.startswith("candidate_")},
                "serving_metrics": {k[len("serving_"):]: v for k, v in m.items() if k.startswith("serving_")}})
        return out


# ---------------------------------------------------------------------------------- evaluate
@dataclass
class EvalConfig:
    """One ``coldstart eval run``: what to replay and where (per run), and the evaluation's settings."""

    dataset: str
    out: Path
    limit: int | None = None
    tasks: tuple[str, ...] = ()  # empty: both when the stream has searches, else profile_only
    bootstrap: str | None = None
    worker_url: str | None = None
    partitions: int | None = None
    shared_data: Path = Path("../shared/data")
    zero_shot: bool = True
    exclude_clicked: bool = False
    in_process: bool = False  # drive the worker's code objects without a broker (fast iteration)
    exact_order: bool = False  # live run: wait until the worker learned every earlier click (see run_task)
    # Run every task twice on the same stream: trainer off (with the baselines), then trainer on (rounds
    # every ``options.trainer_round_samples`` samples, versions swapped in during the replay).
    trainer: bool = False
    options: EvaluationSettings = field(default_factory=EvaluationSettings)  # k, n_boot, device, seed


def merge_trainer_run(off: TaskRun, on: TaskRun) -> TaskRun:
    """The trainer-on run's rankings (``live_trainer``) beside the trainer-off run's, on the same clicks."""
    if on.clicks != off.clicks:
        raise ColdstartError(f"trainer on ranked {on.clicks} clicks, trainer off {off.clicks}: not the same stream")
    off.rankings.extend(on.rankings)
    off.trainer = {**on.trainer, "seconds": round(on.seconds, 1), "stale": on.stale, "clicks": on.clicks,
                   "importance": on.importance}
    return off


def _drop_weights(trainer_dir: Path) -> None:
    """Keep the in-process trainer's manifests (the rounds are in results.json too), drop its weights and
    buffer: ~90 MB a version would otherwise stay in every report folder."""
    import shutil

    for path in sorted(trainer_dir.glob("registry/versions/*/manifest.json")):
        target = trainer_dir / "manifests" / f"{path.parent.name}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.rmtree(trainer_dir / "registry", ignore_errors=True)
    shutil.rmtree(trainer_dir / "buffer", ignore_errors=True)


def evaluate(cfg: EvalConfig) -> dict:
    """Run every task of ``cfg`` and write the report folder; returns the results dict."""
    from coldstart.evaluation.baselines import TextVectors, default_baselines, texts_of
    from coldstart.evaluation.report import build_results, write_report

    if cfg.worker_url and not cfg.bootstrap:
        raise ColdstartError("--worker-url needs --bootstrap-servers too: the runner replays into that broker")
    if cfg.trainer and not cfg.in_process and (cfg.bootstrap or cfg.worker_url):
        raise ColdstartError("--trainer starts its own broker, worker and trainer: a trainer on a shared broker "
                             "would read other runs' samples and announce versions to their workers")
    events = load_events(cfg.dataset, cfg.shared_data, cfg.limit, cfg.options.seed)
    has_search = any(e.type == "search" for e in events)
    tasks = cfg.tasks or (("search_click", "profile_only") if has_search else ("profile_only",))
    vectors = None
    if cfg.zero_shot:
        from coldstart.model.encoder import TextEncoder

        vectors = TextVectors(TextEncoder(device=cfg.options.device))
        vectors.prefetch(texts_of(events))
    from coldstart.settings import Settings

    runs: list[TaskRun] = []
    started = time.time()
    trainer_config = cfg.options.trainer_config(Settings.from_env().trainer) if cfg.trainer else None
    for task in tasks:
        stream = task_stream(events, task)
        baselines = default_baselines(vectors, with_queries=TASKS[task] and has_search)
        shared = cfg.bootstrap is not None
        namespace = f"ev{uuid.uuid4().hex[:6]}~" if shared else ""
        if cfg.in_process:
            from coldstart.evaluation.inprocess import InProcessPipeline

            settings = Settings.from_env(device=cfg.options.device, evaluation=cfg.options)
            run = run_task_in_process(stream, task, baselines, InProcessPipeline(settings), k=cfg.options.k,
                                      exclude_clicked=cfg.exclude_clicked, progress=True)
            if cfg.trainer:
                trainer_dir = Path(cfg.out) / "trainer" / task
                pipeline = InProcessPipeline(settings, trainer_dir=trainer_dir)
                on = run_task_in_process(stream, task, [], pipeline, k=cfg.options.k,
                                         exclude_clicked=cfg.exclude_clicked, progress=True, method=LIVE_TRAINER)
                merge_trainer_run(run, on)
                _drop_weights(trainer_dir)
            runs.append(run)
            continue
        # A shop's broker takes the COLDSTART_KAFKA_* security settings; the runner's own is plaintext.
        options = shared_broker_options() if shared else {}
        if cfg.worker_url:
            runs.append(asyncio.run(run_task(stream, task, baselines, bootstrap=cfg.bootstrap,
                                             worker_url=cfg.worker_url, namespace=namespace, k=cfg.options.k,
                                             exclude_clicked=cfg.exclude_clicked, exact_order=cfg.exact_order,
                                             client_options=options)))
            continue
        with LocalStack(cfg.bootstrap, partitions=cfg.partitions) as stack:
            run = asyncio.run(run_task(stream, task, baselines, bootstrap=stack.bootstrap,
                                       worker_url=stack.url, namespace=namespace, k=cfg.options.k,
                                       exclude_clicked=cfg.exclude_clicked, exact_order=cfg.exact_order,
                                       client_options=options))
        if cfg.trainer:  # the same stream again, on a fresh stack with a trainer beside the worker
            with LocalStack(None, partitions=cfg.partitions, trainer=trainer_config) as stack:
                first_round_at = 2 * trainer_config.round_min_samples  # samples of that many clicks have arrived

                async def first_round(clicks: int, stack=stack, at=first_round_at) -> None:
                    if clicks == at:
                        await asyncio.to_thread(stack.wait_first_round)

                on = asyncio.run(run_task(stream, task, [], bootstrap=stack.bootstrap, worker_url=stack.url,
                                          namespace=namespace, k=cfg.options.k, exclude_clicked=cfg.exclude_clicked,
                                          exact_order=cfg.exact_order, method=LIVE_TRAINER,
                                          before_click=first_round))
                on.trainer = {**stack.trainer_rounds(), "config": dataclasses.asdict(trainer_config)}
            merge_trainer_run(run, on)
        runs.append(run)
    meta = {
        "dataset": cfg.dataset, "limit": cfg.limit, "k": cfg.options.k, "tasks": list(tasks),
        "events": len(events), "exclude_clicked": cfg.exclude_clicked, "n_boot": cfg.options.n_boot,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "worker": "in-process (no broker)" if cfg.in_process else (cfg.worker_url or "started by the runner"),
        "broker": "none (in-process)" if cfg.in_process else (cfg.bootstrap or "a local broker per task, started by the runner"),
        "encoder_device": cfg.options.device if cfg.zero_shot else None,
        "trainer": dataclasses.asdict(trainer_config) if trainer_config is not None else None,
    }
    results = build_results(runs, meta, n_boot=cfg.options.n_boot)
    write_report(cfg.out, results, runs)
    return results


__all__ = ["EvalConfig", "LIVE", "LiveClient", "LocalStack", "Ranking", "TASKS", "TaskRun", "evaluate",
           "check_dead_letters", "importance_histogram", "load_events", "namespaced", "run_task",
           "merge_trainer_run", "run_task_in_process", "task_stream", "write_rankings"]
