"""What an evaluation run records: one ranking per (method, click), grouped per task, and its JSONL form.

Kept apart from the harness (``prequential``) and the report (``report``) so that both read the same
records without importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

LIVE = "live"  # the live system, trainer off (the zero-shot encoder serves throughout)
LIVE_TRAINER = "live_trainer"  # the live system with the trainer's rounds swapped in during the replay
SYSTEMS = (LIVE, LIVE_TRAINER)  # rankings of the system under test; every other method is a baseline


@dataclass
class Ranking:
    """One method's top-K for one click, and where the clicked item landed (``rank`` None: a miss)."""

    task: str
    method: str
    click: int  # position of the click among the task's ranked clicks
    event_id: str
    user: str
    item: str
    ts: float
    prior: int  # events of the user before this click (what the worker counts as n_events)
    prior_clicks: int
    query: str | None
    ranking: list[str]
    rank: int | None
    stale: bool = False  # the worker had not applied all of the user's earlier events in time
    version: str | None = None  # the model version that ranked it (the live system's rankings only)


@dataclass
class TaskRun:
    task: str
    rankings: list[Ranking] = field(default_factory=list)
    seconds: float = 0.0
    events: int = 0
    clicks: int = 0
    stale: int = 0
    importance: dict[str, dict[str, float]] = field(default_factory=dict)  # type -> {le: count}
    catalog: int = 0  # distinct items seen in the stream
    # ``--trainer``: the trainer-on run of the same stream (its rankings are in ``rankings`` under
    # ``live_trainer``): its rounds, gate decisions, versions published, seconds and stale answers.
    trainer: dict = field(default_factory=dict)


def write_rankings(path: Path, runs: Iterable[TaskRun]) -> int:
    """One JSON line per (method, click): the recorded list and the rank of the clicked item."""
    n = 0
    with open(path, "w", encoding="utf-8") as handle:
        for run in runs:
            for r in run.rankings:
                handle.write(json.dumps(asdict(r), separators=(",", ":")) + "\n")
                n += 1
    return n
