"""The report's figures computed from recorded rankings: the per-click oracle (headroom) beside the goal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coldstart.evaluation.records import Ranking, TaskRun
from coldstart.evaluation.report import build_results, markdown

METHODS = ("live", "popularity", "transitions")
rank = st.one_of(st.none(), st.integers(1, 30))
click = st.tuples(st.integers(0, 8), rank, rank, rank)  # prior events, then each method's rank


def task_run(clicks, task="profile_only") -> TaskRun:
    run = TaskRun(task, clicks=len(clicks), catalog=50)
    for i, (prior, *ranks) in enumerate(clicks):
        for method, r in zip(METHODS, ranks):
            run.rankings.append(Ranking(task, method, i, f"e{i}", f"u{i}", "item", float(i), prior, 0, None,
                                        [], r))
    return run


def results_of(clicks, task="profile_only") -> dict:
    return build_results([task_run(clicks, task)], {"k": 10}, n_boot=50)["tasks"][task]


@settings(max_examples=60, deadline=None)
@given(st.lists(click, min_size=1, max_size=40))
def test_the_oracle_bounds_every_method_and_counts_only_users_with_one_to_five_events(clicks):
    t = results_of(clicks)
    room = t["headroom"]
    cold = [c for c in clicks if 1 <= c[0] <= 5]
    assert room["n"] == len(cold)
    if not cold:
        assert room["any_method"] is None  # NaN is written as null, like every other empty figure
        return
    hits = [[r is not None and r <= 10 for r in c[1:]] for c in cold]
    assert room["any_method"] == sum(any(h) for h in hits) / len(cold)
    assert room["any_baseline"] == sum(any(h[1:]) for h in hits) / len(cold)
    # No method, the system under test included, passes the oracle; the baselines' oracle is within it.
    for m in t["methods"].values():
        assert m["cold_1_5"]["recall"] <= room["any_method"] + 1e-12
    assert room["any_baseline"] <= room["any_method"]


def test_the_goal_says_what_recall_it_needs_and_the_report_sets_it_beside_the_oracle():
    # 4 clicks of users with one prior event: live hits 2, popularity 1 (a click live misses), transitions 0.
    clicks = [(1, 1, None, None), (1, 3, 40, None), (1, None, 2, None), (1, None, None, None)]
    t = results_of(clicks)
    assert t["best_baseline"] == "popularity"
    assert t["goal"]["needs"] == 1.25 * 0.25
    assert (t["headroom"]["any_method"], t["headroom"]["any_baseline"]) == (0.75, 0.25)
    search = results_of(clicks, task="search_click")
    assert search["goal"]["needs"] == 1 - 0.75 * (1 - 0.25)  # misses at most 0.75x the best baseline's
    report = markdown(build_results([task_run(clicks)], {"k": 10, "dataset": "d", "events": 8, "limit": None,
                                                        "exclude_clicked": False, "started": "now",
                                                        "seconds": 1, "broker": "b", "worker": "w",
                                                        "n_boot": 50}, n_boot=50))
    assert "reaches Recall@10 0.750 (the baselines alone 0.250; 4 clicks" in report
    assert "the goal needs 0.312" in report
