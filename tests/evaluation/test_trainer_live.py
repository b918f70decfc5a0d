"""``coldstart eval run --trainer`` through the live stack on a tiny stream: a fresh broker, worker and
``coldstart trainer``; the worker swaps the trainer's versions in while the replay goes on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from coldstart.evaluation.prequential import EvalConfig, evaluate, load_events, task_stream
from coldstart.evaluation.records import LIVE, LIVE_TRAINER
from coldstart.settings import EvaluationSettings

pytestmark = [pytest.mark.kafka, pytest.mark.model, pytest.mark.slow]

LIMIT = 4000  # ~2,400 clicks: about a minute of replay on two busy cores, long enough for a round to land


def test_live_trainer_run_swaps_versions_during_the_replay(tmp_path, monkeypatch):
    # The swap is under test here, not the gate: 3 steps on a few hundred simulated samples win or lose
    # against the base model by chance (the demo's reason for its tolerance), so every candidate ships.
    monkeypatch.setenv("COLDSTART_TRAINER_TOLERANCE", "1.0")
    options = EvaluationSettings(n_boot=50, trainer_round_samples=120, trainer_steps=3)
    results = evaluate(EvalConfig(dataset="simulator", out=tmp_path, limit=LIMIT, tasks=("profile_only",),
                                  zero_shot=False, trainer=True, options=options))
    stream = task_stream(load_events("simulator", Path("."), LIMIT, options.seed), "profile_only")
    clicks = [str(e.value["event_id"]) for e in stream if e.type == "click"]
    rows = [json.loads(line) for line in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    for method in (LIVE, LIVE_TRAINER):  # nothing lost: every click ranked once by each system
        assert [r["event_id"] for r in rows if r["method"] == method] == clicks, method

    tr = results["tasks"]["profile_only"]["trainer"]
    served = [v["version"] for v in tr["versions"]]
    assert served[0].startswith("base-")
    assert all(re.fullmatch(r"v\d{4}", v) for v in served[1:]) and served[1:] == sorted(served[1:])
    assert len(served) >= 2, f"no version was swapped in during the replay: {tr}"
    assert tr["outcomes"].get("published", 0) >= len(served) - 1
    assert set(served[1:]) & set(tr["published"])  # the registry's manifests name what was served
    # The newest gate's scores come from the trainer's /metrics, so a refused round says why too.
    assert set(tr["last_gate"]) == {"candidate", "serving"} and all(0 <= v <= 1 for v in tr["last_gate"].values())
    report = (tmp_path / "report.md").read_text()
    assert "### Trainer on vs off" in report and "The last gate: holdout Recall@10 candidate" in report
