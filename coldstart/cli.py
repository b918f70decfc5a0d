"""The one entry point, ``coldstart``. Settings come from flags and ``COLDSTART_*`` variables."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from coldstart.errors import ColdstartError
from coldstart.settings import Settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
kafka_app = typer.Typer(help="A local single-node KRaft broker for tests and the demo.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
console = Console(stderr=True)

Bootstrap = typer.Option(None, "--bootstrap-servers", help="Kafka host:port[,host:port] [COLDSTART_BOOTSTRAP_SERVERS]")


def _settings(**overrides) -> Settings:
    return Settings.from_env(**overrides)


# ---------------------------------------------------------------------------------------- kafka
def _local_kafka(settings: Settings):
    from coldstart.kafka_local import LocalKafka

    return LocalKafka(version=settings.kafka_version, port=settings.kafka_port, data_dir=settings.kafka_dir)


@kafka_app.command("start")
def kafka_start(port: Optional[int] = typer.Option(None, help="[COLDSTART_KAFKA_PORT]"),
                version: Optional[str] = typer.Option(None, help="[COLDSTART_KAFKA_VERSION]"),
                data_dir: Optional[Path] = typer.Option(None, help="[COLDSTART_KAFKA_DIR]")) -> None:
    """Fetch the Apache Kafka jars with Maven (cached), format KRaft storage, start, wait until it answers."""
    s = _settings(kafka_port=port, kafka_version=version, kafka_dir=data_dir)
    bootstrap = _local_kafka(s).start()
    console.print(f"Kafka {s.kafka_version} answering at [bold]{bootstrap}[/]")


@kafka_app.command("stop")
def kafka_stop(data_dir: Optional[Path] = typer.Option(None, help="[COLDSTART_KAFKA_DIR]")) -> None:
    """Stop the local broker (SIGTERM, then SIGKILL after a timeout)."""
    _local_kafka(_settings(kafka_dir=data_dir)).stop()
    console.print("Kafka stopped")


@kafka_app.command("status")
def kafka_status(data_dir: Optional[Path] = typer.Option(None, help="[COLDSTART_KAFKA_DIR]")) -> None:
    """Exit 0 when the local broker runs, 3 when it does not."""
    running = _local_kafka(_settings(kafka_dir=data_dir)).status()
    console.print("running" if running else "stopped")
    raise typer.Exit(0 if running else 3)


# ---------------------------------------------------------------------------------------- topics
@app.command()
def topics(bootstrap_servers: Optional[str] = Bootstrap,
           partitions: Optional[int] = typer.Option(None, help="[COLDSTART_PARTITIONS]")) -> None:
    """Create the design's topics with explicit partition counts (idempotent)."""
    from coldstart.streams.topics import ensure_topics

    s = _settings(bootstrap_servers=bootstrap_servers, partitions=partitions)
    created = ensure_topics(s)
    console.print(f"created: {created or 'nothing (all present)'}")


# ---------------------------------------------------------------------------------------- worker
@app.command()
def worker(bootstrap_servers: Optional[str] = Bootstrap,
           web_port: Optional[int] = typer.Option(None, help="HTTP port [COLDSTART_WEB_PORT]"),
           data_dir: Optional[Path] = typer.Option(None, help="table state [COLDSTART_DATA_DIR]"),
           device: Optional[str] = typer.Option(None, help="auto|cpu|cuda [COLDSTART_DEVICE]"),
           partitions: Optional[int] = typer.Option(None, help="[COLDSTART_PARTITIONS]"),
           loglevel: str = typer.Option("info", help="debug|info|warning")) -> None:
    """Run one stream worker: profiles, importance, item index, recommendations API, /metrics."""
    s = _settings(bootstrap_servers=bootstrap_servers, web_port=web_port, data_dir=data_dir,
                  device=device, partitions=partitions)
    run_worker(s, loglevel)


def run_worker(s: Settings, loglevel: str = "info") -> None:
    from coldstart.memory import limit_malloc_arenas

    limit_malloc_arenas(s.malloc_arenas)  # first: before Faust and torch start their threads
    from coldstart.streams.app import Worker
    from coldstart.streams.topics import ensure_topics

    ensure_topics(s)
    w = Worker(s)
    if s.gc_freeze:
        from coldstart.memory import freeze_startup_objects

        freeze_startup_objects()  # the model, the libraries, the app: never scanned by a collection again
    console.print(f"worker: model {w.model.version} on {w.model.device}; "
                  f"http://{s.web_host}:{s.web_port}/health")
    faust_worker(w.app, loglevel).execute_from_commandline()


@app.command()
def serve(bootstrap_servers: Optional[str] = Bootstrap,
          web_port: Optional[int] = typer.Option(None, help="HTTP port [COLDSTART_WEB_PORT]"),
          ranker_path: Optional[str] = typer.Option(
              None, help="the worker's ranker checkpoint to follow [COLDSTART_SERVE_RANKER_PATH; "
                         "default COLDSTART_DATA_DIR/ranker.safetensors]"),
          device: Optional[str] = typer.Option(None, help="auto|cpu|cuda [COLDSTART_DEVICE]"),
          loglevel: str = typer.Option("info", help="debug|info|warning")) -> None:
    """Run a serving replica: GET /users/{id}/recommendations for every user from its own process
    (profiles from the table's changelog, the catalog and model like a worker's), /health, /metrics."""
    import logging

    from coldstart.memory import limit_malloc_arenas

    s = _settings(bootstrap_servers=bootstrap_servers, web_port=web_port, serve_ranker_path=ranker_path,
                  device=device)
    limit_malloc_arenas(s.malloc_arenas)
    logging.basicConfig(level=loglevel.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    from coldstart.streams.replica import run_replica

    console.print(f"replica of {s.app_id}: http://{s.web_host}:{s.web_port}/health")
    run_replica(s)


def faust_worker(app, loglevel: str):
    """Faust's worker for ``app`` without its terminal spinner. At ``warning`` or above Faust keeps the
    spinner and sets the *root* logger to DEBUG so that every record turns it (faust/worker.py,
    ``_setup_spinner_handler``): aiokafka and Faust then build a LogRecord for every debug call of the
    fetch and produce paths, 4% of a worker's samples at 500 events/s under py-spy."""
    import faust

    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.spinner = None
    return worker


# ---------------------------------------------------------------------------------------- trainer
@app.command()
def trainer(bootstrap_servers: Optional[str] = Bootstrap,
            registry_uri: Optional[str] = typer.Option(None, help="model registry path or URI [COLDSTART_REGISTRY_URI]"),
            buffer_dir: Optional[Path] = typer.Option(None, help="Parquet sample buffer [COLDSTART_BUFFER_DIR]"),
            round_every_s: Optional[float] = typer.Option(
                None, help="a fine-tuning round at least this often (T) [COLDSTART_TRAINER_ROUND_EVERY_S, 600]"),
            round_min_samples: Optional[int] = typer.Option(
                None, help="... or after this many new samples (M) [COLDSTART_TRAINER_ROUND_MIN_SAMPLES, 2000]"),
            steps: Optional[int] = typer.Option(None, help="optimizer steps per round [COLDSTART_TRAINER_STEPS, 200]"),
            sampling: Optional[str] = typer.Option(
                None, help="importance | weighted_loss | uniform [COLDSTART_TRAINER_SAMPLING, weighted_loss]"),
            augment: Optional[str] = typer.Option(
                None, help="cold-item rows: off | pseudo | neighbours | both [COLDSTART_TRAINER_AUGMENT, off]"),
            precision: Optional[str] = typer.Option(
                None, help="auto (bfloat16 on CUDA) | float32 | bfloat16 [COLDSTART_TRAINER_PRECISION, auto]"),
            time_budget_s: Optional[float] = typer.Option(
                None, help="wall-clock bound of one round [COLDSTART_TRAINER_TIME_BUDGET_S, 300]"),
            gate_tolerance: Optional[float] = typer.Option(
                None, help="Recall@10/NDCG@10 a candidate may lose and still ship [COLDSTART_TRAINER_TOLERANCE, 0.005]"),
            gate_z: Optional[float] = typer.Option(
                None, help="... plus this many paired standard errors of the holdout [COLDSTART_TRAINER_GATE_Z, 1.0]"),
            metrics_port: Optional[int] = typer.Option(6067, help="Prometheus /metrics port of the trainer"),
            device: Optional[str] = typer.Option(None, help="auto|cpu|cuda [COLDSTART_DEVICE]")) -> None:
    """Buffer training.samples, fine-tune periodically, gate, publish and announce new versions."""
    from coldstart.streams.topics import ensure_topics
    from coldstart.trainer.service import run_trainer

    s = _settings(bootstrap_servers=bootstrap_servers, registry_uri=registry_uri, buffer_dir=buffer_dir,
                  device=device, trainer=dict(round_every_s=round_every_s, round_min_samples=round_min_samples,
                                              steps=steps, sampling=sampling, augment=augment,
                                              precision=precision, time_budget_s=time_budget_s,
                                              tolerance=gate_tolerance, gate_z=gate_z))
    ensure_topics(s)
    console.print(f"trainer: registry {s.registry_uri}, buffer {s.buffer_dir}, "
                  f"round every {s.trainer.round_every_s:.0f} s or {s.trainer.round_min_samples} samples")
    run_trainer(s, metrics_port=metrics_port)


models_app = typer.Typer(help="The model registry: list versions, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(registry_uri: Optional[str] = typer.Option(None, help="[COLDSTART_REGISTRY_URI]")) -> None:
    """Every published version, oldest first; * marks the one workers serve."""
    from rich.table import Table

    from coldstart.trainer.service import list_versions

    rows = list_versions(_settings(registry_uri=registry_uri))
    table = Table(title="model versions")
    for col in ("", "version", "parent", "created", "recall@10", "ndcg@10", "data window"):
        table.add_column(col)
    for r in rows:
        m = r["metrics"]
        window = r["data_window"] or [None, None]
        table.add_row("*" if r["current"] else "", r["version"], str(r["parent"] or "-"),
                      time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_ts"] or 0)),
                      _fmt(m.get("candidate_recall@10")), _fmt(m.get("candidate_ndcg@10")),
                      " .. ".join(time.strftime("%Y-%m-%d", time.gmtime(t)) if t else "-" for t in window))
    Console().print(table if rows else "no versions published yet")


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


@models_app.command("rollback")
def models_rollback(version: str = typer.Argument(..., help="e.g. v0003 (see `coldstart models list`)"),
                    bootstrap_servers: Optional[str] = Bootstrap,
                    registry_uri: Optional[str] = typer.Option(None, help="[COLDSTART_REGISTRY_URI]")) -> None:
    """Point the registry at VERSION (verified first) and announce it: workers swap to it."""
    from coldstart.trainer.service import rollback

    rollback(_settings(bootstrap_servers=bootstrap_servers, registry_uri=registry_uri), version)
    console.print(f"rolled back to {version}; workers swap between batches")


# ---------------------------------------------------------------------------------------- replay
@app.command()
def replay(path: str = typer.Argument(..., help="bestbuy | amazon[:valid] | simulator | a JSONL/Parquet file"),
           rate: Optional[float] = typer.Option(None, help="events per second"),
           speedup: Optional[float] = typer.Option(None, help="follow log time, X times faster"),
           limit: Optional[int] = typer.Option(None, help="stop after this many events"),
           rebase_time: bool = typer.Option(False, "--rebase-time", help="shift the log's times so its first "
                                            "event is now (gaps kept): history for workers with live time bounds"),
           bootstrap_servers: Optional[str] = Bootstrap,
           shared_data: Optional[Path] = typer.Option(None, help="[COLDSTART_SHARED_DATA]")) -> None:
    """Replay a log (or the built-in site simulator) into Kafka, in time order.

    Workers refuse events dated before COLDSTART_MIN_EVENT_TS (2000-01-01 by default) as clock bugs:
    replay an older log with --rebase-time, or run the workers with COLDSTART_MIN_EVENT_TS=0."""
    import itertools

    from coldstart.replay import SiteSimulator, open_dataset
    from coldstart.replay.producer import produce
    from coldstart.streams.topics import ensure_topics

    s = _settings(bootstrap_servers=bootstrap_servers, shared_data=shared_data)
    events = (SiteSimulator().events(limit or 5000, start_ts=time.time()) if path == "simulator"
              else open_dataset(path, s.shared_data))
    if limit:
        events = itertools.islice(events, limit)
    from coldstart.replay.events import Rebase

    rebase = Rebase(time.time() if rebase_time else None)
    ensure_topics(s)
    from coldstart.kafka_security import aiokafka_options

    summary = asyncio.run(produce(rebase(events), s.bootstrap_servers, rate=rate, speedup=speedup,
                                  client_options=aiokafka_options(s)))
    console.print(summary)
    if rebase.shift_s:
        console.print(f"times rebased: every event shifted by {rebase.shift_s:+.0f} s (first event "
                      f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(rebase.first_ts))} UTC -> now)")
    elif rebase.first_ts is not None and rebase.first_ts < s.min_event_ts:
        console.print(f"[yellow]the log starts {time.strftime('%Y-%m-%d', time.gmtime(rebase.first_ts))}, before "
                      "COLDSTART_MIN_EVENT_TS: workers with that bound dead-letter these events as bad_timestamp; "
                      "replay with --rebase-time, or run the workers with COLDSTART_MIN_EVENT_TS=0[/yellow]")


# ---------------------------------------------------------------------------------------- demo
@app.command()
def demo(events: int = typer.Option(3000, help="simulated events to replay"),
         rate: float = typer.Option(500.0, help="events per second"),
         dataset: Optional[str] = typer.Option(None, "--dataset", help="replay this log instead of the simulator"),
         duration: Optional[float] = typer.Option(None, help="stop after this many seconds (default: Ctrl-C)"),
         web_port: Optional[int] = typer.Option(None, help="[COLDSTART_WEB_PORT]")) -> None:
    """Local Kafka (unless COLDSTART_BOOTSTRAP_SERVERS is set), a worker, the trainer, a replay, a swap, Prometheus."""
    from coldstart.demo import run_demo

    s = _settings(web_port=web_port)
    run_demo(s, n_events=events, rate=rate, dataset=dataset, duration=duration,
             external_kafka="bootstrap_servers" in s.given)


# ---------------------------------------------------------------------------------------- eval
def _mount_eval() -> None:
    from coldstart.evaluation.cli import eval_app

    app.add_typer(eval_app, name="eval", help="Prequential cold-start evaluation through the live pipeline.")


_mount_eval()


# ---------------------------------------------------------------------------------------- bench
@app.command()
def bench(which: str = typer.Argument("all", help="encode | batch | stream | catalog | all | importance | augment | overload | serve | scale | bots | train | learn | shed"),
          bootstrap_servers: Optional[str] = Bootstrap,
          shared_data: Optional[Path] = typer.Option(None, help="[COLDSTART_SHARED_DATA]"),
          out: Path = typer.Option(Path("reports/bench.json"), help="write the figures here"),
          limit: Optional[int] = typer.Option(None, help="stream: replay only the first N log records"),
          minutes: float = typer.Option(10.0, help="overload: minutes at 3x the worker's capacity"),
          rate: float = typer.Option(200.0, help="serve: recommendation requests/s"),
          seconds: float = typer.Option(30.0, help="serve: seconds per phase (idle, then ingesting)"),
          ingest_rate: float = typer.Option(500.0, help="serve: events/s produced while requesting"),
          replica: bool = typer.Option(False, "--replica", help="serve: send the requests to a serving replica "
                                                                "(coldstart serve) beside the worker")) -> None:
    """Benchmarks that print figures with ratios against a baseline measured in the same run
    (`importance` and `augment` are long: fine-tuning runs on both real logs)."""
    from coldstart.bench.run import run_benchmarks

    s = _settings(bootstrap_servers=bootstrap_servers, shared_data=shared_data)
    run_benchmarks(s, which, out, limit, minutes,
                   serve={"rate": rate, "seconds": seconds, "ingest_rate": ingest_rate, "replica": replica})


def main() -> None:
    try:
        app()
    except ColdstartError as exc:
        console.print(f"[red]coldstart: {exc}[/]")
        sys.exit(2)


if __name__ == "__main__":
    main()
