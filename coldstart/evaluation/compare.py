"""Two evaluation runs of the same stream, paired click by click: did a change move Recall@K?

Every change to the ranker is judged this way (a setting or a feature on against off on the same
clicks): two runs' ``rankings.jsonl`` are joined on the click's event id, and the difference of their
hit rates gets a paired bootstrap interval that resamples *users* (a user's clicks move together, so
resampling clicks would understate the spread). Only the system's own rankings are compared (``live``,
or ``live_trainer`` with ``method=``); the users are those with 1-5 prior events, as in the goals, and
each prior-event group is reported on its own as well.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coldstart.errors import ColdstartError, DatasetMissing
from coldstart.evaluation.metrics import COLD_GROUPS, hit, prior_group
from coldstart.evaluation.records import LIVE

__all__ = ["PairedDifference", "bootstrap_users", "compare_runs", "paired_difference", "per_user_sums",
           "read_rankings"]


@dataclass(frozen=True)
class PairedDifference:
    """Recall@K of run A and run B on the same clicks, and B − A with a paired bootstrap 95% interval."""

    n: int  # clicks in both runs
    users: int
    recall_a: float
    recall_b: float
    diff: float
    ci: tuple[float, float]

    def row(self) -> dict:
        return {"n": self.n, "users": self.users, "recall_a": self.recall_a, "recall_b": self.recall_b,
                "diff": self.diff, "ci": list(self.ci)}


def per_user_sums(pairs: Sequence[tuple[str, float, float]]) -> np.ndarray:
    """``[users, 3]``: each user's clicks, hits in A and hits in B, from (user, hit A, hit B) per click.

    >>> per_user_sums([("u", 1.0, 0.0), ("v", 0.0, 1.0), ("u", 1.0, 1.0)]).tolist()
    [[2.0, 2.0, 1.0], [1.0, 0.0, 1.0]]
    """
    by_user: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for user, a, b in pairs:
        acc = by_user[user]
        acc[0] += 1
        acc[1] += a
        acc[2] += b
    return np.array(list(by_user.values()), dtype=float).reshape(-1, 3)


def bootstrap_users(sums: np.ndarray, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, 3]``: the column sums of ``sums`` (:func:`per_user_sums`) over users resampled with
    replacement: a user's clicks stay together, as they are not independent of each other."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n_boot, len(sums)))
    return sums[idx].sum(axis=1)


def paired_difference(pairs: Sequence[tuple[str, float, float]], n_boot: int = 1000,
                      seed: int = 0) -> PairedDifference:
    """``pairs``: (user, hit in A, hit in B) per click. The interval resamples users with replacement.

    >>> pairs = [(f"u{i}", 0.0, 1.0 if i < 30 else 0.0) for i in range(100)]
    >>> d = paired_difference(pairs, n_boot=500)
    >>> d.n, d.recall_a, d.recall_b, round(d.diff, 2), d.ci[0] > 0
    (100, 0.0, 0.3, 0.3, True)
    >>> paired_difference([("u", 1.0, 1.0)] * 5).ci
    (0.0, 0.0)
    """
    if not pairs:
        raise ColdstartError("no click is in both runs: were they made from the same stream and task?")
    sums = per_user_sums(pairs)
    n, hits_a, hits_b = sums.sum(axis=0)
    boot = bootstrap_users(sums, n_boot, seed)
    diffs = (boot[:, 2] - boot[:, 1]) / boot[:, 0]
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    return PairedDifference(int(n), len(sums), float(hits_a / n), float(hits_b / n), float((hits_b - hits_a) / n),
                            (float(lo), float(hi)))


def read_rankings(run: Path, method: str = LIVE) -> dict[str, dict[str, dict]]:
    """``task -> event id -> ranking record`` of one method from a run folder (or its rankings.jsonl)."""
    path = Path(run)
    path = path / "rankings.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise DatasetMissing(f"{path} not found: give a report folder of `coldstart eval run` (it holds "
                             "rankings.jsonl) or the file itself")
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["method"] == method:
                out[row["task"]][row["event_id"]] = row
    if not out:
        raise ColdstartError(f"{path} has no rankings of method {method!r}")
    return dict(out)


def compare_runs(a: dict[str, dict[str, dict]], b: dict[str, dict[str, dict]], k: int = 10,
                 n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per task present in both: ``{"1-5": PairedDifference row, "0": ..., "1": ..., ...}`` (groups with
    no click are left out)."""
    out: dict[str, dict[str, dict]] = {}
    for task in sorted(set(a) & set(b)):
        groups: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
        for event_id, ra in a[task].items():
            rb = b[task].get(event_id)
            if rb is None:
                continue
            pair = (ra["user"], hit(ra["rank"], k), hit(rb["rank"], k))
            group = prior_group(ra["prior"])
            groups[group].append(pair)
            if group in COLD_GROUPS:
                groups["1-5"].append(pair)
        out[task] = {g: paired_difference(p, n_boot, seed).row() for g, p in _ordered(groups)}
    if not out:
        raise ColdstartError(f"the runs share no task (A: {sorted(a)}, B: {sorted(b)})")
    return out


def _ordered(groups: dict[str, list]) -> Iterable[tuple[str, list]]:
    for g in ("1-5", "0", "1", "2", "3-5", "6+"):
        if groups.get(g):
            yield g, groups[g]
