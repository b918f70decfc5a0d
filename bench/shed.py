"""``coldstart bench shed``: what the opt-in per-batch cap on ranker steps (``COLDSTART_RANKER_MAX_STEPS``)
costs in ranking quality when a worker is behind (issue 11).

Under a backlog a worker's batches fill to ``BATCH_SIZE`` events, and that is when the cap sheds steps.
The in-process evaluation applies one event at a time, so it never sheds; this benchmark applies each
log the way a worker catching up does instead: in full batches of 512 user events, every click ranked
with the state as it was before its batch (catalogue events applied as they come, as the catalog reader
does), the same batches for every cap. Recall@10 of those rankings, for clicks of users with 1-5 and with
any number of earlier events, beside the uncapped run. What the cap buys in speed is measured by
``coldstart bench stream`` with the setting (the worker's cold and warm replays are backlogs).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from coldstart.settings import Settings

__all__ = ["BacklogRun", "backlog_recall", "bench_shed"]


@dataclass(frozen=True)
class BacklogRun:
    dataset: str
    cap: int
    steps: int  # ranker steps taken
    shed: int  # teaching clicks the cap skipped
    recall_1_5: float  # Recall@10, clicks of users with 1-5 earlier events
    clicks_1_5: int
    recall_any: float  # Recall@10, clicks of users with at least one earlier event
    clicks_any: int


def backlog_recall(settings: Settings, dataset: str, cap: int, limit: int, batch_size: int = 512) -> BacklogRun:
    """Apply the first ``limit`` events of ``dataset`` in batches of ``batch_size`` user events with the
    ranker's per-batch cap ``cap`` (0: none), ranking every click before its batch."""
    from coldstart.contract import parse_click, parse_search
    from coldstart.evaluation.inprocess import InProcessPipeline
    from coldstart.replay import open_dataset
    from coldstart.replay.producer import encode

    pipe = InProcessPipeline(settings.replace(ranker_max_steps=cap))
    hits = {"1-5": [0, 0], "any": [0, 0]}
    batch: list = []

    def apply() -> None:
        for ev in batch:
            n = pipe.n_events(ev.user_id) if ev.kind == "click" else 0
            if n >= 1:
                hit = ev.item_id in pipe.rank(ev.user_id, None, 10)
                for group in ("1-5", "any") if n <= 5 else ("any",):
                    hits[group][0] += hit
                    hits[group][1] += 1
        states = {u: pipe.profiles[u] for u in {ev.user_id for ev in batch} if u in pipe.profiles}
        pipe.profiles.update(pipe.processor.process(batch, states).profiles)
        batch.clear()

    for event in itertools.islice(open_dataset(dataset, settings.shared_data), limit):
        if event.type == "item":
            pipe.learn_one(event)
            continue
        key, value = encode(event)
        batch.append((parse_search if event.type == "search" else parse_click)(value, key, now=time.time()))
        if len(batch) >= batch_size:
            apply()
    if batch:
        apply()
    recall = {g: h / n if n else float("nan") for g, (h, n) in hits.items()}
    return BacklogRun(dataset, cap, pipe.recommender.ranker.steps, pipe.recommender.steps_shed,
                      recall["1-5"], hits["1-5"][1], recall["any"], hits["any"][1])


def bench_shed(settings: Settings, caps: tuple[int, ...] = (8, 32),
               limits: dict[str, int] | None = None) -> dict:
    limits = limits or {"bestbuy": 40_000, "amazon": 20_000}
    runs, rows = [], []
    for dataset, limit in limits.items():
        base = backlog_recall(settings, dataset, 0, limit)
        runs.append(base)
        for cap in caps:
            r = backlog_recall(settings, dataset, cap, limit)
            runs.append(r)
            rows.append((f"{dataset}, first {limit:,} events in batches of 512, ranker steps at most {cap} a batch: "
                         "Recall@10 of clicks with 1-5 / any earlier events (steps taken, shed)",
                         f"{r.recall_1_5:.4f} / {r.recall_any:.4f} ({r.steps:,}, {r.shed:,})",
                         f"no cap {base.recall_1_5:.4f} / {base.recall_any:.4f} ({base.steps:,} steps; "
                         f"{base.clicks_1_5:,} / {base.clicks_any:,} clicks)",
                         f"{r.recall_1_5 / base.recall_1_5:.3f}" if base.recall_1_5 else "-", "-"))
    return {"runs": [r.__dict__ for r in runs], "rows": rows}
