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
                                         "the worker learned every earlier click (as --in-process does)"),
        trainer: bool = typer.Option(False, "--trainer", help="run every task twice on the same stream and seed: "
                                     "trainer off (with the baselines), then trainer on (`live_trainer`: real "
                                     "rounds every --round-samples samples, gated, published, swapped in during "
                                     "the replay); the report puts them side by side with the version timeline"),
        round_samples: Optional[int] = typer.Option(
            None, help="--trainer: a round every this many new training samples [COLDSTART_EVAL_TRAINER_ROUND_SAMPLES, 1000]"),
        trainer_steps: Optional[int] = typer.Option(
            None, help="--trainer: optimiser steps per round, CPU-sized (0 = COLDSTART_TRAINER_STEPS) "
                       "[COLDSTART_EVAL_TRAINER_STEPS, 30]")) -> None:
    """Replay DATASET through Kafka and a worker; before each click score the worker's top-K and every
    baseline's; write report.md, PNGs, results.json and rankings.jsonl.

    With --trainer each task runs twice on the same events: first trainer off, then trainer on, where
    a real trainer (`coldstart trainer`'s rounds: fine-tune the encoder on the samples the worker emits,
    gate on the newest 10% of its buffer, publish) runs every --round-samples samples with
    --trainer-steps steps (the rest of the round, gate tolerance included, from the COLDSTART_TRAINER_*
    settings). Live: a fresh broker, worker and `coldstart trainer` for the on-run; the trainer's rounds
    run beside the replay, so when a version arrives depends on the machine's speed. --in-process:
    each round runs between two events and its version is swapped in before the next one (as a worker
    loads it: verified, item index rebuilt in the new vector space), so the timeline is reproducible;
    the registry and buffer live in OUT/trainer/TASK (the weights are removed at the end, the
    manifests kept). Every live ranking records the version that made it (rankings.jsonl)."""
    from coldstart.evaluation.prequential import EvalConfig, evaluate
    from coldstart.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("coldstart.evaluation").setLevel(logging.INFO)
    s = Settings.from_env(shared_data=shared_data, evaluation=dict(k=k, n_boot=n_boot, device=device,
                                                                   trainer_round_samples=round_samples,
                                                                   trainer_steps=trainer_steps))
    slug = dataset.replace("/", "_").replace(":", "-")
    out = out or Path("reports") / f"eval-{slug}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = EvalConfig(dataset=dataset, out=out, limit=limit, tasks=tuple(task), bootstrap=bootstrap_servers,
                     worker_url=worker_url, partitions=partitions, shared_data=s.shared_data, zero_shot=zero_shot,
                     exclude_clicked=exclude_clicked, in_process=in_process, exact_order=exact_order,
                     trainer=trainer, options=s.evaluation)
    results = evaluate(cfg)
    for name, t in results["tasks"].items():
        live = t["methods"].get("live", {}).get("cold_1_5", {})
        goal = t.get("goal") or {}
        console.print(f"{name}: live Recall@{s.evaluation.k} (1-5 prior) {live.get('recall')}, best baseline "
                      f"{goal.get('best_baseline')}, ratio {goal.get('ratio')} (target {goal.get('target')})")
        on = t.get("trainer") or {}
        if on.get("on"):
            console.print(f"{name}: trainer on {on['on'].get('recall')} vs off {on['off'].get('recall')}, ratio "
                          f"{on.get('ratio')} (target {on.get('target')}); versions served: "
                          f"{', '.join(v['version'] for v in on.get('versions', []))}; rounds: "
                          f"{', '.join(r['outcome'] for r in on.get('rounds', []))}")
    console.print(f"report: {out / 'report.md'}")


@eval_app.command("compare")
def compare(run_a: Path = typer.Argument(..., help="report folder of the baseline run (A)"),
            run_b: Path = typer.Argument(..., help="report folder of the changed run (B), same stream and task"),
            method: str = typer.Option("live", help="whose rankings: live | live_trainer"),
            k: int = typer.Option(10, help="Recall@K"),
            n_boot: int = typer.Option(1000, help="bootstrap resamples (over users)"),
            json_out: Optional[Path] = typer.Option(None, "--json", help="also write the figures here")) -> None:
    """Pair two runs of `coldstart eval run` click by click: Recall@K of A and B and B - A with a paired
    bootstrap 95% interval over users, for users with 1-5 prior events and for each prior-event group."""
    import json

    from rich.table import Table

    from coldstart.errors import ColdstartError
    from coldstart.evaluation.compare import compare_runs, read_rankings

    try:
        result = compare_runs(read_rankings(run_a, method), read_rankings(run_b, method), k=k, n_boot=n_boot)
    except ColdstartError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    table = Table("task", "prior events", "clicks", "users", f"A Recall@{k}", f"B Recall@{k}", "B - A", "95% (users)")
    for task, groups in result.items():
        for group, d in groups.items():
            table.add_row(task, group, str(d["n"]), str(d["users"]), f"{d['recall_a']:.4f}", f"{d['recall_b']:.4f}",
                          f"{d['diff']:+.4f}", f"[{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]")
    Console(width=max(Console().width, 132)).print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=1), encoding="utf-8")
