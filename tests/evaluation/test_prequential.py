"""End to end: a short simulator replay through the real broker and a real worker, then the report."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from coldstart.evaluation.cli import eval_app
from coldstart.evaluation.prequential import EvalConfig, LocalStack, evaluate, load_events, task_stream
from coldstart.settings import EvaluationSettings


def test_task_streams_and_limits():
    events = load_events("simulator", shared_data=None, limit=120)
    assert sum(e.type != "item" for e in events) == 120
    profile_only = task_stream(events, "profile_only")
    assert not any(e.type == "search" for e in profile_only)
    assert [e for e in events if e.type == "click"] == [e for e in profile_only if e.type == "click"]


def test_importance_histogram_is_read_from_prometheus_text():
    from coldstart.evaluation.prequential import importance_histogram

    text = ('# HELP x\ncoldstart_importance_weight_bucket{le="1.0",type="search"} 4.0\n'
            'coldstart_importance_weight_bucket{le="+Inf",type="search"} 5.0\n'
            'coldstart_importance_weight_count{type="search"} 5.0\n')
    assert importance_histogram(text) == {"search": {"1.0": 4.0, "+Inf": 5.0}}


def test_cli_help():
    result = CliRunner().invoke(eval_app, ["run", "--help"])
    assert result.exit_code == 0
    assert "DATASET" in result.output and "--limit" in result.output


@pytest.mark.kafka
@pytest.mark.model
@pytest.mark.slow
def test_end_to_end_report_is_consistent_with_the_recorded_rankings(kafka_bootstrap, tmp_path):
    out = tmp_path / "report"
    # One worker for both tasks: the runner namespaces ids per task on a shared broker.
    with LocalStack(kafka_bootstrap, partitions=2, workdir=tmp_path / "stack") as stack:
        results = evaluate(EvalConfig(dataset="simulator", limit=200, out=out, bootstrap=kafka_bootstrap,
                                      worker_url=stack.url, partitions=2, options=EvaluationSettings(n_boot=200)))

    for name in ("report.md", "results.json", "rankings.jsonl", "importance.png",
                 "search_click_by_prior_events.png", "search_click_over_time.png",
                 "profile_only_by_prior_events.png", "profile_only_over_time.png"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "results.json").read_text())["tasks"].keys() == {"search_click", "profile_only"}

    # Recall@10 in results.json == the share of hits recomputed from rankings.jsonl, per task and method.
    hits, n = defaultdict(int), defaultdict(int)
    for line in (out / "rankings.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = (row["task"], row["method"])
        n[key] += 1
        hits[key] += row["item"] in row["ranking"][:10]
        assert len(row["ranking"]) <= 10
        assert row["rank"] is None or row["ranking"][row["rank"] - 1] == row["item"]
    for task, t in results["tasks"].items():
        for method, m in t["methods"].items():
            assert m["all"]["n"] == n[(task, method)]
            assert m["all"]["recall"] == pytest.approx(hits[(task, method)] / n[(task, method)])
        assert t["stale"] == 0, "the worker should apply every event before its user's next request"
        assert {"live", "popularity", "item_knn", "transitions", "zeroshot", "zeroshot_pop"} <= set(t["methods"])
        # The per-click oracle over every method's list is at least each method's Recall@10.
        assert t["headroom"]["any_method"] >= max(m["cold_1_5"]["recall"] for m in t["methods"].values())

    live = results["tasks"]["search_click"]["methods"]["live"]
    # A search just before the click makes the live list personal: far above popularity on this stream.
    assert live["groups"]["1"]["recall"] > results["tasks"]["search_click"]["methods"]["popularity"]["groups"]["1"]["recall"]
    assert "query_memory" in results["tasks"]["search_click"]["methods"]
    assert "query_memory" not in results["tasks"]["profile_only"]["methods"]
    report = (out / "report.md").read_text()
    assert "Recall@10 by prior events" in report and "Where the live system falls short" in report
