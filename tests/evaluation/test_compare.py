"""`coldstart eval compare`: two runs' rankings.jsonl paired click by click, on real files."""

from __future__ import annotations

import json
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from coldstart.errors import ColdstartError, DatasetMissing
from coldstart.evaluation.cli import eval_app
from coldstart.evaluation.compare import compare_runs, paired_difference, read_rankings
from coldstart.evaluation.records import Ranking, TaskRun, write_rankings


def make_run(tmp_path, name, ranks, prior=1, method="live", task="profile_only"):
    """A report folder whose rankings.jsonl holds one click per entry of ``ranks`` (user u<i>), plus a
    baseline's ranking of the same click that must be ignored."""
    run = TaskRun(task)
    for i, rank in enumerate(ranks):
        for m, r in ((method, rank), ("popularity", 1)):
            run.rankings.append(Ranking(task, m, i, f"e{i}", f"u{i}", "item", float(i),
                                        prior(i) if callable(prior) else prior, 0, None, [], r))
    folder = tmp_path / name
    folder.mkdir()
    write_rankings(folder / "rankings.jsonl", [run])
    return folder


def test_pairs_by_event_id_and_counts_only_the_system(tmp_path):
    a = make_run(tmp_path, "a", [1, None, None, 11, 3, None, None, None])  # 2 hits of 8 at k=10
    b = make_run(tmp_path, "b", [1, 2, None, 4, 3, None, None, None])  # 4 hits
    out = compare_runs(read_rankings(a), read_rankings(b), k=10, n_boot=200)
    cold = out["profile_only"]["1-5"]
    assert (cold["n"], cold["recall_a"], cold["recall_b"]) == (8, 0.25, 0.5)
    assert cold["diff"] == pytest.approx(0.25)
    assert cold["ci"][0] <= cold["diff"] <= cold["ci"][1]
    assert set(out["profile_only"]) == {"1-5", "1"}  # the empty groups are left out


def test_groups_follow_prior_events_and_users_outside_1_5_are_apart(tmp_path):
    prior = lambda i: 0 if i < 2 else 7  # noqa: E731
    a = make_run(tmp_path, "a", [1, None, None, 2], prior=prior)
    b = make_run(tmp_path, "b", [1, 1, 2, 2], prior=prior)
    out = compare_runs(read_rankings(a), read_rankings(b), n_boot=100)["profile_only"]
    assert "1-5" not in out
    assert (out["0"]["n"], out["0"]["diff"]) == (2, 0.5)
    assert (out["6+"]["n"], out["6+"]["diff"]) == (2, 0.5)


def test_the_interval_resamples_users_not_clicks():
    # one user with 50 hits in B, 50 users with a miss each: by clicks the gain looks certain, by users
    # it rests on one person
    pairs = [("heavy", 0.0, 1.0)] * 50 + [(f"u{i}", 0.0, 0.0) for i in range(50)]
    d = paired_difference(pairs, n_boot=2000)
    assert d.users == 51 and d.diff == pytest.approx(0.5)
    assert d.ci[0] == 0.0  # some resamples leave the heavy user out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from([0.0, 1.0]), st.sampled_from([0.0, 1.0])),
                min_size=1, max_size=60))
def test_swapping_the_runs_mirrors_the_figures(pairs):
    ab = paired_difference(pairs, n_boot=300, seed=3)
    ba = paired_difference([(u, b, a) for u, a, b in pairs], n_boot=300, seed=3)
    assert ba.diff == pytest.approx(-ab.diff)
    assert ba.ci == pytest.approx((-ab.ci[1], -ab.ci[0]))
    assert (ba.recall_a, ba.recall_b) == (ab.recall_b, ab.recall_a)


def test_clear_errors(tmp_path):
    with pytest.raises(DatasetMissing, match="rankings.jsonl"):
        read_rankings(tmp_path / "nowhere")
    a = make_run(tmp_path, "a", [1, 2])
    with pytest.raises(ColdstartError, match="no rankings of method 'live_trainer'"):
        read_rankings(a, method="live_trainer")
    other = make_run(tmp_path, "other", [1, 2], task="search_click")
    with pytest.raises(ColdstartError, match="share no task"):
        compare_runs(read_rankings(a), read_rankings(other))


def test_cli_prints_the_table_and_writes_json(tmp_path):
    a = make_run(tmp_path, "a", [None, None, 3, None])
    b = make_run(tmp_path, "b", [1, None, 3, None])
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(eval_app, ["compare", str(a), str(b), "--n-boot", "100", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "+0.2500" in result.output and "profile_only" in result.output
    assert json.loads(out.read_text())["profile_only"]["1-5"]["recall_b"] == 0.5
    missing = CliRunner().invoke(eval_app, ["compare", str(a), str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_the_trainer_ratio_interval_resamples_users_too():
    from types import SimpleNamespace as R

    from coldstart.evaluation.report import paired_ratio

    # One heavy user carries the whole gain: resampled by users the interval reaches down to no gain
    # (resampled by clicks, as it was before, it sat far above 1).
    shared = [(100 + i, f"u{i}", 1 if i < 40 else None) for i in range(80)]
    on = [R(click=i, user="heavy", prior=1, rank=1) for i in range(40)]
    off = [R(click=i, user="heavy", prior=1, rank=None) for i in range(40)]
    on += [R(click=c, user=u, prior=1, rank=r) for c, u, r in shared]
    off += [R(click=c, user=u, prior=1, rank=r) for c, u, r in shared]
    ratio, (lo, hi) = paired_ratio(on, off, 10, 2000)
    assert ratio == 2.0 and lo == 1.0 and hi > 2.0
