"""The importance estimators' names and their validation, torch-free so that settings can check them.

The estimators themselves are tensor functions in :mod:`coldstart.model.importance`.
"""

from __future__ import annotations

from coldstart.errors import ConfigError

__all__ = ["ESTIMATORS", "check_estimator"]

# loss_logn is the weight before issue 10 (importance_weight's learnability: noise line at log n).
ESTIMATORS = ("uniform", "loss", "loss_logn", "loss_quantile", "grad_norm", "reducible_loss")


def check_estimator(name: str, variable: str = "COLDSTART_IMPORTANCE_ESTIMATOR") -> str:
    """``name`` if it is a known estimator, else a ConfigError naming the variable.

    >>> check_estimator("grad_norm")
    'grad_norm'
    >>> check_estimator("lossy")
    Traceback (most recent call last):
    ...
    coldstart.errors.ConfigError: COLDSTART_IMPORTANCE_ESTIMATOR='lossy' is not an estimator; use one of uniform, loss, loss_logn, loss_quantile, grad_norm, reducible_loss
    """
    if name not in ESTIMATORS:
        raise ConfigError(f"{variable}={name!r} is not an estimator; use one of {', '.join(ESTIMATORS)}")
    return name
