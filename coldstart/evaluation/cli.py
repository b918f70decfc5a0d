"""``coldstart eval``: prequential cold-start evaluation through the live pipeline, with baselines."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

eval_app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
console = Console(stderr=True)


@eval_app.callback()
def main() -> None:
    """Prequential cold-start evaluation through the live pipeline (real broker and worker)."""


@eval_app.command("run")
def run(dataset: str = typer.Argument(..., help="bestbuy[:ROWS] | amazon[:valid] | simulator[:SEED] | a JSONL/Parquet file"),
        limit: Optional[int] = typer.Option(None, help="replay at most this many searches + clicks"),
        out: Optional[Path] = typer.Option(None, help="report folder [reports/eval-<dataset>-<timestamp>]"),
        task: list[str] = typer.Option([], help="search_click | profile_only (repeat; default: both when "
                                                "the log has searches)"),
        k: Optional[int] = typer.Option(None, help="list length scored (Recall@K, NDCG@K) [COLDSTART_EVAL_K, 10]"),
        bootstrap_servers: Optional[str] = typer.Option(
            None, "--bootstrap-servers", help="use this broker (ids are namespaced per run) instead of starting one "
                                              "[COLDSTART_BOOTSTRAP_SERVERS is NOT read here]"),
        worker_url: Optional[str] = typer.Option(None, help="a running worker on that broker (default: start one)"),
        partitions: Optional[int] = typer.Option(None, help="[COLDSTART_PARTITIONS]"),
        shared_data: Optional[Path] = typer.Option(None, help="[COLDSTART_SHARED_DATA]"),
        zero_shot: bool = typer.Option(True, help="include the zero-shot encoder baselines"),
        exclude_clicked: bool = typer.Option(False, help="ask the worker (and filter baselines) to leave out "
                                                         "items the user clicked"),
        n_boot: Optional[int] = typer.Option(None, help="bootstrap resamples for the intervals [COLDSTART_EVAL_N_BOOT, 1000]"),
        device: Optional[str] = typer.Option(None, help="device of the in-process zero-shot encoder [COLDSTART_EVAL_DEVICE, cpu]"),
        in_process: bool = typer.Option(False, "--in-process", help="drive the worker's code objects without a "
                                        "broker (fast iteration; the live run is the figure of record)"),
        exact_order: bool = typer.Option(False, "--exact-order", help="live run: before each ranking wait until "
                                         "the worker learned every earlier click (as --in-process does)")) -> None:
    """Replay DATASET through Kafka and a worker; before each click score the worker's top-K and every
    baseline's; write report.md, PNGs, results.json and rankings.jsonl."""
    from coldstart.evaluation.prequential import EvalConfig, evaluate
    from coldstart.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("coldstart.evaluation").setLevel(logging.INFO)
    s = Settings.from_env(shared_data=shared_data, evaluation=dict(k=k, n_boot=n_boot, device=device))
    slug = dataset.replace("/", "_").replace(":", "-")
    out = out or Path("reports") / f"eval-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = EvalConfig(dataset=dataset, out=out, limit=limit, tasks=tuple(task), bootstrap=bootstrap_servers,
                     worker_url=worker_url, partitions=partitions, shared_data=s.shared_data, zero_shot=zero_shot,
                     exclude_clicked=exclude_clicked, in_process=in_process, exact_order=exact_order,
                     options=s.evaluation)
    results = evaluate(cfg)
    for name, t in results["tasks"].items():
        live = t["methods"].get("live", {}).get("cold_1_5", {})
        goal = t.get("goal") or {}
        console.print(f"{name}: live Recall@{s.evaluation.k} (1-5 prior) {live.get('recall')}, best baseline "
                      f"{goal.get('best_baseline')}, ratio {goal.get('ratio')} (target {goal.get('target')})")
    console.print(f"report: {out / 'report.md'}")
