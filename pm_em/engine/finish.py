"""The polish's last step: Newton's method on the gradient, to the mode to round-off.

L-BFGS (the polish of `pm_em.engine.run`) stops when the log posterior changes by about
its rounding error, which near the mode leaves the parameters ~1e-8 (relative) short of it,
in a direction that depends on rounding: two fits whose arithmetic differs only in the order
of its sums (in memory, by chunks, on a cluster, or on another backend) would then end
~1e-8 apart. The gradient is far more precise there than the log posterior, so a Newton step
from a Hessian estimated by forward differences of the gradient lands on the mode to
round-off; one or two more steps with the same Hessian confirm it. It costs one gradient
per parameter, once, and is skipped for models with more than `MAX_PARAMS` parameters.
"""

from collections.abc import Callable

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cho_solve

__all__ = ["MAX_PARAMS", "newton_finish", "not_worse"]

# Above this many parameters the finite-difference Hessian costs more than it saves.
MAX_PARAMS = 200


def not_worse(new: float, old: float) -> bool:
    """Whether log posterior ``new`` is at least ``old``, up to the rounding of either.

    At the mode a polished point's log posterior can fall short of EM's last one by a few
    units in the last place; refusing the polish then would keep EM's iterate, which stops
    short of the mode by its tolerance.
    """
    return bool(new >= old - 1e-13 * max(1.0, abs(old)))


def _hessian(fn, x: np.ndarray, grad: np.ndarray) -> np.ndarray | None:
    """Hessian of the objective by forward differences of its gradient (symmetrized)."""
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    hess = np.empty((x.size, x.size))
    for j in range(x.size):
        shifted = x.copy()
        shifted[j] += h[j]
        _, g = fn(shifted)
        if not np.all(np.isfinite(g)):
            return None
        hess[:, j] = (g - grad) / h[j]
    return 0.5 * (hess + hess.T)


def newton_finish(
    x: np.ndarray, fn: Callable[[np.ndarray], tuple[float, np.ndarray]], max_steps: int = 3
) -> np.ndarray:
    """Move ``x`` to the minimum of ``fn`` with Newton steps; return ``x`` if none helps.

    Parameters
    ----------
    x : ndarray
        A point near the minimum (the end of L-BFGS).
    fn : callable
        ``fn(x) -> (value, gradient)`` of the objective (minus the log posterior).
    max_steps : int, default 3

    Returns
    -------
    ndarray
        A point whose gradient is smaller and value no larger (beyond rounding) than at
        ``x``'s, or ``x`` itself (a Hessian that is not positive definite, say).

    Examples
    --------
    >>> import numpy as np
    >>> quad = lambda x: (0.5 * x @ x - x.sum(), x - 1.0)
    >>> newton_finish(np.array([0.9, 1.2]), quad)
    array([1., 1.])
    """
    x = np.asarray(x, dtype="float64")
    if x.size == 0 or x.size > MAX_PARAMS:
        return x
    value, grad = fn(x)
    if not (np.isfinite(value) and np.all(np.isfinite(grad))):
        return x
    hess = _hessian(fn, x, grad)
    if hess is None:
        return x
    try:
        factor = cho_factor(hess)
    except LinAlgError:
        return x  # not a minimum in every direction: leave it to L-BFGS's answer
    for _ in range(max_steps):
        step = -cho_solve(factor, grad)
        new_value, new_grad = fn(x + step)
        rounding = 1e-12 * max(1.0, abs(value))
        if not (
            np.isfinite(new_value)
            and np.all(np.isfinite(new_grad))
            and np.linalg.norm(new_grad) < np.linalg.norm(grad)
            and new_value <= value + rounding
        ):
            break
        x, value, grad = x + step, new_value, new_grad
        if np.max(np.abs(step)) <= 1e-13 * (1.0 + np.max(np.abs(x))):
            break
    return x
