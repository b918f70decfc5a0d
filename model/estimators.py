"""The importance estimators' names and their validation, torch-free so that settings can check them.

The estimators themselves are tensor functions in :mod:`coldstart.model.importance`.
"""

from __future__ import annotations

from coldstart.errors import ConfigError

__all__ = ["ESTIMATORS", "LIVE_ESTIMATORS", "check_estimator"]

# loss_logn is the weight before issue 10 (importance_weight's learnability: noise line at log n).
# rank_lfdr: the probability that a click is not a random item, from the running density of its catalog
# rank (model/importance.py RankNull).
ESTIMATORS = ("uniform", "loss", "loss_logn", "loss_quantile", "grad_norm", "rank_lfdr", "reducible_loss")
# What a worker can compute per event: reducible_loss needs a holdout-trained reference model, which
# only the benchmark (`coldstart bench importance`) builds.
LIVE_ESTIMATORS = tuple(e for e in ESTIMATORS if e != "reducible_loss")


def check_estimator(name: str, variable: str = "COLDSTART_IMPORTANCE_ESTIMATOR", *, live: bool = True) -> str:
    """``name`` if it is an estimator (one a worker can run, with ``live``), else a ConfigError naming
    the variable.

    >>> check_estimator("grad_norm")
    'grad_norm'
    >>> check_estimator("lossy")
    Traceback (most recent call last):
    ...
    coldstart.errors.ConfigError: COLDSTART_IMPORTANCE_ESTIMATOR='lossy' is not an estimator; use one of uniform, loss, loss_logn, loss_quantile, grad_norm, rank_lfdr
    >>> check_estimator("reducible_loss")
    Traceback (most recent call last):
    ...
    coldstart.errors.ConfigError: COLDSTART_IMPORTANCE_ESTIMATOR='reducible_loss' needs a holdout-trained reference model, which only `coldstart bench importance` builds; use one of uniform, loss, loss_logn, loss_quantile, grad_norm, rank_lfdr
    >>> check_estimator("reducible_loss", live=False)
    'reducible_loss'
    """
    allowed = LIVE_ESTIMATORS if live else ESTIMATORS
    if name in allowed:
        return name
    why = ("needs a holdout-trained reference model, which only `coldstart bench importance` builds"
           if name in ESTIMATORS else "is not an estimator")
    raise ConfigError(f"{variable}={name!r} {why}; use one of {', '.join(allowed)}")
