"""``coldstart eval run --in-process --trainer``: real trainer rounds inside the replay, versions swapped
in between events, every click ranked once by each system, the report's trainer-on vs trainer-off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coldstart.evaluation.prequential import EvalConfig, evaluate, load_events, task_stream
from coldstart.evaluation.records import LIVE, LIVE_TRAINER
from coldstart.settings import EvaluationSettings

pytestmark = [pytest.mark.model, pytest.mark.slow]

LIMIT = 480  # searches + clicks of the simulator (~290 clicks)
ROUND = 80  # samples per round: two or three rounds in the stream


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval-trainer")
    options = EvaluationSettings(n_boot=50, trainer_round_samples=ROUND, trainer_steps=3)
    # The swap is under test here, not the gate: 3 steps on a hundred simulated samples win or lose against
    # the base model by chance on a dozen holdout rows, so every candidate ships (as in the live test).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLDSTART_TRAINER_TOLERANCE", "1.0")
        evaluate(EvalConfig(dataset="simulator", out=out, limit=LIMIT, tasks=("profile_only",), zero_shot=False,
                            in_process=True, trainer=True, options=options))
    return out


def _rankings(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]


def test_rounds_publish_and_the_swapped_version_ranks_every_later_click(report):
    results = json.loads((report / "results.json").read_text())
    tr = results["tasks"]["profile_only"]["trainer"]
    published = [r for r in tr["rounds"] if r["outcome"] == "published"]
    assert published, tr["rounds"]
    assert tr["published"] == [r["version"] for r in published]
    assert sum(tr["gate"].values()) == len(tr["rounds"])
    for r in published:  # the gate's scores came with the decision
        assert r["candidate_metrics"]["recall@10"] >= r["serving_metrics"]["recall@10"] - tr["config"]["tolerance"]
        assert r["swap_seconds"] >= 0

    # Where each click sits in the stream, and which version must have ranked it: the base model until
    # the first published round, then each published version from the event after its round.
    stream = task_stream(load_events("simulator", Path("."), LIMIT, EvaluationSettings().seed), "profile_only")
    position = {str(e.value["event_id"]): i for i, e in enumerate(stream) if e.type == "click"}
    on = [r for r in _rankings(report) if r["method"] == LIVE_TRAINER]
    base = on[0]["version"]
    assert base.startswith("base-")
    for r in on:
        expected = base
        for p in published:
            if p["after_event"] <= position[r["event_id"]]:
                expected = p["version"]
        assert r["version"] == expected, (r["event_id"], position[r["event_id"]])
    assert {r["version"] for r in on} == {base, *tr["published"]}
    # the timeline in results.json says the same
    assert [v["version"] for v in tr["versions"]] == [base, *tr["published"]]
    assert sum(v["clicks"] for v in tr["versions"]) == len(on)


def test_nothing_is_lost_every_click_ranked_once_by_each_system(report):
    stream = task_stream(load_events("simulator", Path("."), LIMIT, EvaluationSettings().seed), "profile_only")
    clicks = [str(e.value["event_id"]) for e in stream if e.type == "click" and e.value.get("item_id") is not None]
    rows = _rankings(report)
    for method in (LIVE, LIVE_TRAINER):
        ranked = [r["event_id"] for r in rows if r["method"] == method]
        assert ranked == clicks, method
    off = {r["version"] for r in rows if r["method"] == LIVE}
    assert len(off) == 1 and next(iter(off)).startswith("base-")  # trainer off: one version throughout
    assert all(r["version"] is None for r in rows if r["method"] not in (LIVE, LIVE_TRAINER))


def test_report_shows_trainer_on_beside_off(report):
    results = json.loads((report / "results.json").read_text())
    t = results["tasks"]["profile_only"]
    tr = t["trainer"]
    assert tr["off"] == t["methods"][LIVE]["cold_1_5"] and tr["on"] == t["methods"][LIVE_TRAINER]["cold_1_5"]
    if tr["off"]["recall"]:
        assert tr["ratio"] == pytest.approx(tr["on"]["recall"] / tr["off"]["recall"])
    assert tr["target"] == 1.15 and tr["config"]["round_min_samples"] == ROUND and tr["config"]["steps"] == 3
    assert t["best_baseline"] not in (LIVE, LIVE_TRAINER)
    assert results["meta"]["trainer"]["round_min_samples"] == ROUND
    md = (report / "report.md").read_text()
    assert "### Trainer on vs off" in md and "**live_trainer**" in md and tr["published"][0] in md
    assert (report / "profile_only_over_time.png").stat().st_size > 0
    # the weights were dropped, the manifests kept
    manifests = sorted(p.stem for p in (report / "trainer" / "profile_only" / "manifests").glob("*.json"))
    assert set(tr["published"][-5:]) <= set(manifests)
    assert not (report / "trainer" / "profile_only" / "registry").exists()
