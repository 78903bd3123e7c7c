"""Constrained value -> unconstrained value, in numpy, one function per transform type.

A closed-form update is computed in the constrained space and written back to the flat
parameter vector through these. A variable whose transform is not registered here is left to
the numeric M-step. To support another transform, register its forward map with
`register_forward`.
"""

from collections.abc import Callable

import numpy as np
from pymc.distributions.transforms import CholeskyCovPacked, Ordered
from pymc.logprob.transforms import LogOddsTransform, LogTransform, SimplexTransform

__all__ = ["FORWARD", "register_forward", "to_unconstrained"]

FORWARD: dict[type, Callable[[object, np.ndarray], np.ndarray]] = {}


def register_forward(cls: type):
    """Register the numpy forward map of transform type ``cls`` (a decorator)."""

    def register(fn):
        FORWARD[cls] = fn
        return fn

    return register


@register_forward(type(None))
def _identity(transform, value):
    return value


@register_forward(LogTransform)
def _log(transform, value):
    return np.log(value)


@register_forward(LogOddsTransform)
def _logodds(transform, value):
    return np.log(value / (1.0 - value))


@register_forward(SimplexTransform)
def _simplex(transform, value):
    log_value = np.log(value)
    return log_value[..., :-1] - log_value.mean(axis=-1, keepdims=True)


@register_forward(Ordered)
def _ordered(transform, value):
    if not transform.ascending:
        value = value[..., ::-1]
    first = np.log(value[..., :1]) if transform.positive else value[..., :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.concatenate([first, np.log(np.diff(value, axis=-1))], axis=-1)


@register_forward(CholeskyCovPacked)
def _cholesky_cov_packed(transform, value):
    # The packed lower triangle of an n x n Cholesky factor, row by row: n (n + 1) / 2
    # entries, the diagonal at 0, 2, 5, 9, ... (PyMC's `diag_idxs`), on the log scale.
    n = round((np.sqrt(8 * value.shape[-1] + 1) - 1) / 2)
    diag = np.cumsum(np.arange(1, n + 1)) - 1
    out = np.array(value, dtype="float64", copy=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[..., diag] = np.log(value[..., diag])
    return out


def to_unconstrained(transform, value: np.ndarray) -> np.ndarray | None:
    """Map to the unconstrained space; None where the value is outside the transform's range."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = FORWARD[type(transform)](transform, np.asarray(value, dtype="float64"))
    return out if np.all(np.isfinite(out)) else None
