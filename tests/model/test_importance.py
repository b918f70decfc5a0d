"""The importance weight's properties: bounded, loss-monotone, noise-robust, cold-aware."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from coldstart.model.importance import (catalog_loss, cold_factor, importance_weight, learnability, rank_percentile,
                                        search_importance)

N = 1000
LOG_N = math.log(N)


def weights_over(d: torch.Tensor, prior: float = 5.0, **kw: float) -> torch.Tensor:
    return importance_weight(d * LOG_N, N, torch.full_like(d, prior), **kw)


def test_catalog_loss_by_hand() -> None:
    items = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    context = torch.tensor([[1.0, 0.0]])
    cos = [1.0, 0.0, 1 / math.sqrt(2)]
    expected = -(cos[2] / 0.5) + math.log(sum(math.exp(c / 0.5) for c in cos))
    got = catalog_loss(context, items, torch.tensor([2]), temperature=0.5)
    assert got.shape == (1,)
    assert float(got[0]) == pytest.approx(expected, rel=1e-6)


def test_catalog_loss_is_per_row() -> None:
    torch.manual_seed(0)
    items = F.normalize(torch.randn(7, 4), dim=1)
    ctx = F.normalize(torch.randn(3, 4), dim=1)
    target = torch.tensor([0, 5, 6])
    rows = torch.cat([catalog_loss(ctx[i:i + 1], items, target[i:i + 1]) for i in range(3)])
    assert torch.allclose(catalog_loss(ctx, items, target), rows)


def test_weight_rises_with_loss_below_noise_line() -> None:
    d = torch.linspace(0.1, 1.25, 50)
    w = weights_over(d)
    assert torch.all(w[1:] > w[:-1])


def test_weight_falls_far_above_noise_line() -> None:
    d = torch.linspace(1.3, 4.0, 50)
    w = weights_over(d, w_min=0.0)
    assert torch.all(w[1:] < w[:-1])
    assert float(weights_over(torch.tensor([6.0]))[0]) == pytest.approx(0.1)  # a likely mis-click: w_min


def test_weight_is_bounded_even_for_broken_losses() -> None:
    loss = torch.tensor([0.0, 1e-9, 3.0, 1e6, math.inf, math.nan, -1.0])
    for prior in (0.0, 1.0, 100.0):
        w = importance_weight(loss, N, torch.full_like(loss, prior), w_min=0.1, w_max=4.0, cold_boost=10.0)
        assert torch.all(torch.isfinite(w)) and torch.all((w >= 0.1) & (w <= 4.0))
    assert float(importance_weight(torch.tensor([math.nan]), N, torch.zeros(1))[0]) == pytest.approx(0.1)


def test_cold_users_weigh_more() -> None:
    d = torch.full((4,), 0.8)
    w = importance_weight(d * LOG_N, N, torch.tensor([0.0, 1.0, 5.0, 50.0]))
    assert torch.all(w[:-1] > w[1:])
    assert float(w[0] / w[-1]) == pytest.approx(2.0 / (1 + 1 / 51), rel=1e-5)
    assert torch.allclose(cold_factor(torch.tensor([0.0]), cold_boost=3.0), torch.tensor([4.0]))


def test_normalised_difficulty_is_catalog_size_free() -> None:
    # A model no better than uniform gets the same weight in a catalog of 10 and of 10,000.
    small = importance_weight(torch.tensor([math.log(10)]), 10, torch.zeros(1))
    large = importance_weight(torch.tensor([math.log(10_000)]), 10_000, torch.zeros(1))
    assert torch.allclose(small, large)


def test_uniform_model_loss_gives_weight_one_for_warm_user() -> None:
    items = F.normalize(torch.randn(N, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    loss = catalog_loss(torch.zeros(1, 8), items, torch.tensor([3]))  # all logits equal: uniform
    assert float(loss[0]) == pytest.approx(LOG_N, rel=1e-5)
    w = importance_weight(loss, N, torch.tensor([1e9]))
    assert float(w[0]) == pytest.approx(1.0, rel=1e-4)


def test_learnability_peaks_at_noise_line() -> None:
    d = torch.linspace(0, 5, 501)
    peak = float(d[learnability(d, noise_margin=0.5).argmax()])
    assert peak == pytest.approx(1.5, abs=0.01)


def test_search_importance_tracks_uncertainty() -> None:
    items = torch.eye(4)
    confident = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    unsure = torch.full((1, 4), 0.5)
    prior = torch.tensor([10.0])
    w_conf = search_importance(confident, items, prior)
    w_unsure = search_importance(unsure, items, prior)
    assert float(w_conf[0]) < float(w_unsure[0])
    assert float(w_unsure[0]) == pytest.approx(1.0 + 1 / 11, rel=1e-5)  # entropy 1 x cold factor
    assert float(search_importance(unsure, items, torch.zeros(1))[0]) == pytest.approx(2.0, rel=1e-5)


def test_search_importance_bounds_and_tiny_catalogs() -> None:
    torch.manual_seed(2)
    items = F.normalize(torch.randn(50, 8), dim=1)
    q = F.normalize(torch.randn(20, 8), dim=1)
    w = search_importance(q, items, torch.arange(20.0), w_min=0.2, w_max=1.5, cold_boost=5.0)
    assert w.shape == (20,) and torch.all((w >= 0.2) & (w <= 1.5))
    one = search_importance(q[:2], items[:1], torch.tensor([0.0, 3.0]))
    assert torch.allclose(one, torch.tensor([2.0, 1.25]))
    empty = search_importance(q[:1], items[:0], torch.tensor([1.0]), w_max=1.2)
    assert torch.allclose(empty, torch.tensor([1.2]))


# ------------------------------------------------------------------------------- estimators (issue 10)
from coldstart.errors import ConfigError  # noqa: E402
from coldstart.model.importance import (ESTIMATORS, NoiseLines, RankNull, RunningQuantile, bounded,  # noqa: E402
                                        click_weights, estimator_score, genuine_probability,
                                        importance_weight, output_grad_norm, quantile_noise_weight,
                                        rank_percentile, reducible_loss)
from coldstart.settings import Settings  # noqa: E402


def test_grad_norm_estimate_is_the_exact_gradient_norm_at_the_normalised_output() -> None:
    g = torch.Generator().manual_seed(0)
    items = F.normalize(torch.randn(50, 16, generator=g), dim=1)
    raw = torch.randn(8, 16, generator=g)
    raw = (raw / raw.norm(dim=1, keepdim=True)).requires_grad_(True)  # on the sphere: d normalise = projection
    target = torch.randint(50, (8,), generator=g)
    catalog_loss(F.normalize(raw, dim=1), items, target).sum().backward()
    expected = raw.grad.norm(dim=1)
    got = output_grad_norm(raw.detach(), items, target)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_quantile_noise_line_damps_clicks_beyond_the_running_quantile() -> None:
    g = torch.Generator().manual_seed(1)
    genuine = torch.rand(400, generator=g) * 4.0  # losses in [0, 4)
    noise = 8.0 + torch.rand(100, generator=g) * 4.0  # implausible: twice the genuine range
    rq = RunningQuantile(q=0.8)
    line = rq.update("click", torch.cat([genuine, noise]))
    w = bounded(quantile_noise_weight(torch.cat([genuine, noise]), line))
    assert float(w[400:].mean()) < 0.2 * float(w[:400].mean())
    assert rq.value("click") == line and rq.value("search") is None


def test_reducible_loss_prefers_learnable_over_noisy_and_learnt_samples() -> None:
    loss = torch.tensor([6.0, 9.0, 0.5])  # learnable, noisy (hard for both), already learnt
    reference = torch.tensor([1.0, 8.8, 0.4])
    score = reducible_loss(loss, reference)
    assert int(score.argmax()) == 0 and float(score[1]) < 0.5 and float(score[2]) < 0.5


def test_every_estimator_gives_bounded_weights_of_mean_about_one() -> None:
    g = torch.Generator().manual_seed(2)
    items = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    ctx = F.normalize(torch.randn(64, 8, generator=g), dim=1)
    target = torch.randint(30, (64,), generator=g)
    loss = catalog_loss(ctx, items, target)
    for name in (e for e in ESTIMATORS if e != "rank_lfdr"):  # rank_lfdr is absolute (a probability)
        w = bounded(estimator_score(name, loss, context=ctx, item_vecs=items, target=target,
                                    reference_loss=loss * 0.5, line=float(loss.median()), null=RankNull()))
        assert w.shape == (64,) and float(w.min()) >= 0.1 and float(w.max()) <= 4.0, name
        assert 0.7 <= float(w.mean()) <= 1.3, name


def test_the_estimator_setting_is_validated_and_names_its_variable() -> None:
    assert Settings.from_env({"COLDSTART_IMPORTANCE_ESTIMATOR": "grad_norm"}).importance_estimator == "grad_norm"
    # reducible_loss needs a reference model only the benchmark builds: refused where the setting is read.
    with pytest.raises(ConfigError, match="COLDSTART_IMPORTANCE_ESTIMATOR='reducible_loss' needs a holdout"):
        Settings.from_env({"COLDSTART_IMPORTANCE_ESTIMATOR": "reducible_loss"})
    with pytest.raises(ConfigError, match="COLDSTART_IMPORTANCE_ESTIMATOR='gradnorm'"):
        Settings.from_env({"COLDSTART_IMPORTANCE_ESTIMATOR": "gradnorm"})
    with pytest.raises(ValueError, match="noise line"):
        estimator_score("loss_quantile", torch.ones(2))


def test_a_random_clicks_rank_percentile_is_uniform_whatever_the_model() -> None:
    """The noise model of rank_lfdr: for a uniformly drawn item the percentile is uniform on [0, 1]."""
    g = torch.Generator().manual_seed(4)
    items = F.normalize(torch.randn(200, 16, generator=g), dim=1)
    ctx = F.normalize(torch.randn(4000, 16, generator=g), dim=1)
    r = rank_percentile(ctx, items, torch.randint(200, (4000,), generator=g))
    assert abs(float(r.mean()) - 0.5) < 0.02
    assert abs(float((r < 0.1).float().mean()) - 0.1) < 0.02


def _mixture(n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentiles of genuine clicks (piled up near 0) mixed with a share ``noise`` of uniform ones."""
    g = torch.Generator().manual_seed(seed)
    genuine = 0.2 * torch.rand(n, generator=g) ** 3  # all in the top fifth, most near the top
    is_noise = torch.rand(n, generator=g) < noise
    return torch.where(is_noise, torch.rand(n, generator=g), genuine), is_noise


def test_rank_null_estimates_the_share_of_random_clicks_and_damps_them() -> None:
    null = RankNull()
    for seed in range(8):  # worker-sized batches in order, the density carried over
        r, is_noise = _mixture(512, 0.2, seed)
        p = genuine_probability(r, null)
    pi0 = null.pi0
    assert 0.18 <= pi0 <= 0.35  # the true share is 0.2; the estimate is conservative (upward)
    assert float(p[is_noise].mean()) < 0.4 * float(p[~is_noise].mean())
    clean = RankNull()
    for seed in range(8):
        r, _ = _mixture(512, 0.0, 10 + seed)
        p = genuine_probability(r, clean)
    assert float(p.mean()) > 0.8  # few genuine clicks taken for noise on a clean stream


def test_rank_lfdr_gives_near_equal_weights_when_nothing_beats_random() -> None:
    """A model no better than chance: every click looks random, so (almost) every click gets the floor
    instead of a few lucky ones being amplified."""
    g = torch.Generator().manual_seed(5)
    items = F.normalize(torch.randn(100, 8, generator=g), dim=1)
    lines = NoiseLines()
    for _ in range(8):
        ctx = F.normalize(torch.randn(512, 8, generator=g), dim=1)
        target = torch.randint(100, (512,), generator=g)
        w = click_weights("rank_lfdr", catalog_loss(ctx, items, target), torch.full((512,), 9.0), 100,
                          context=ctx, item_vecs=items, target=target, lines=lines)
    assert lines.ranks.pi0 > 0.85
    assert float((w <= 0.11 * 1.1 + 1e-6).float().mean()) > 0.75 and float(w.max()) < 0.6
    nan = genuine_probability(torch.tensor([float("nan"), 0.0]), RankNull())
    assert torch.isfinite(nan).all()


def test_click_weights_are_the_workers_definition_for_every_live_estimator() -> None:
    """loss_logn is importance_weight (absolute, unnormalised); the others are batch-normalised scores
    times the cold factor, clipped: the formulas the worker applied before they moved here."""
    from coldstart.model.estimators import LIVE_ESTIMATORS
    from coldstart.model.importance import cold_factor

    g = torch.Generator().manual_seed(6)
    items = F.normalize(torch.randn(40, 8, generator=g), dim=1)
    ctx = F.normalize(torch.randn(64, 8, generator=g), dim=1)
    target = torch.randint(40, (64,), generator=g)
    prior = torch.randint(0, 5, (64,), generator=g).float()
    loss = catalog_loss(ctx, items, target)
    assert torch.equal(click_weights("loss_logn", loss, prior, 40), importance_weight(loss, 40, prior))
    for name in LIVE_ESTIMATORS:
        lines, reference = NoiseLines(), NoiseLines()
        w = click_weights(name, loss, prior, 40, context=ctx, item_vecs=items, target=target, lines=lines)
        assert w.shape == (64,) and float(w.min()) >= 0.1 and float(w.max()) <= 4.0, name
        if name != "loss_logn":
            line = reference.quantile.update("click", loss) if name == "loss_quantile" else None
            score = estimator_score(name, loss, context=ctx, item_vecs=items, target=target, line=line,
                                    n_items=40, null=reference.ranks)
            score = score if name == "rank_lfdr" else bounded(score)  # a probability: already absolute
            assert torch.allclose(w, (score * cold_factor(prior)).clamp(0.1, 4.0)), name


def test_the_rank_lfdr_setting_is_accepted() -> None:
    assert Settings.from_env({"COLDSTART_IMPORTANCE_ESTIMATOR": "rank_lfdr"}).importance_estimator == "rank_lfdr"


# ------------------------------------------------------------------ scored against a sample (issue 11)
from coldstart.model.coarse import sample_outside  # noqa: E402


def _catalogue(n: int = 20_000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = F.normalize(torch.randn(n, 32, generator=g), dim=1)
    target = torch.randint(n, (24,), generator=g)
    context = F.normalize(items[target] + 0.15 * torch.randn(24, 32, generator=g), dim=1)
    context[12:] = F.normalize(torch.randn(12, 32, generator=g), dim=1)  # half the clicks: random items
    return items, context, target


def test_weights_of_one_are_the_exact_sums() -> None:
    items, context, target = _catalogue(2_000)
    zero = torch.zeros(items.shape[0])
    assert torch.allclose(catalog_loss(context, items, target, log_weights=zero), catalog_loss(context, items, target))
    assert torch.equal(rank_percentile(context, items, target, zero), rank_percentile(context, items, target))
    prior = torch.zeros(context.shape[0])
    assert torch.allclose(search_importance(context, items, prior, log_weights=zero),
                          search_importance(context, items, prior), atol=1e-5)


def test_the_head_exact_and_a_uniform_sample_of_the_rest_estimate_the_whole_catalogue() -> None:
    """What a batch is scored against where the coarse index serves: every context's nearest items
    exactly, 2,000 of the other ~19,000 drawn uniformly, each standing for the rows it samples. The
    loss (the partition sum) and the rank percentile (a count) stay close to the sums over every item."""
    items, context, target = _catalogue()
    head = torch.topk(context @ items.T, 300, dim=1).indices.flatten()
    rows, log_w, drawn = sample_outside(torch.unique(torch.cat([head, target])), items.shape[0], 2_000, seed=1)
    assert int(drawn.sum()) == 2_000 and float(log_w.exp().sum()) == pytest.approx(items.shape[0], rel=1e-4)
    cols = torch.searchsorted(rows, target)
    loss = catalog_loss(context, items[rows], cols, log_weights=log_w)
    assert (loss - catalog_loss(context, items, target)).abs().max() < 0.1
    rank = rank_percentile(context, items[rows], cols, log_w)
    assert (rank - rank_percentile(context, items, target)).abs().max() < 0.03
    # a sample alone, without the head, misses most of a genuine click's partition: the head is what counts
    rows, log_w, _ = sample_outside(torch.unique(target), items.shape[0], 2_000, seed=1)
    blind = catalog_loss(context[:12], items[rows], torch.searchsorted(rows, target[:12]), log_weights=log_w)
    assert (blind - catalog_loss(context[:12], items, target[:12])).abs().max() > 0.1
