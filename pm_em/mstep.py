"""The M-step: maximize Q(θ) = E_z[log p(y, z | θ)] + log p(θ) given the responsibilities.

The numeric M-step works for any model: L-BFGS on a compiled Q and its gradient over the flat
unconstrained parameter vector, warm-started at the previous estimate. The responsibilities are
inputs of the compiled function, so nothing recompiles between iterations or restarts.
Closed-form updates for recognized conjugate structures will plug in as other callables with
the same signature, ``mstep(x, resp) -> x_new``.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from scipy.optimize import minimize

from pm_em.problem import EMProblem

__all__ = ["NumericMStep", "compile_q"]

QFunction = Callable[..., tuple[float, np.ndarray]]


def compile_q(problem: EMProblem, **compile_kwargs) -> QFunction:
    """Compile ``(x, *resp) -> (-Q(x), -dQ/dx)``.

    Q is the expected complete-data log posterior: for each latent, the responsibility-
    weighted joint log density, plus the log likelihood of the observed variables no latent
    touches, plus the log prior. By Fisher's identity, its gradient at ``resp = p(z | y, x)``
    is the gradient of the observed-data log posterior at ``x``.
    """
    resp_vars = [
        pt.tensor(f"resp_{lat.name}", shape=(None,) * (len(lat.shape) + 1), dtype="float64")
        for lat in problem.latents
    ]
    q = problem.log_prior
    for lat, resp in zip(problem.latents, resp_vars, strict=True):
        # 0 · (-inf) must count as 0: an impossible assignment with no responsibility.
        q = q + pt.switch(resp > 0, resp * lat.log_joint, 0.0).sum()
    for term in problem.log_lik_rest.values():
        q = q + term.sum()
    neg_q = -q
    grad = pytensor.grad(neg_q, problem.x)
    fn = compile_pymc(
        [problem.x, *resp_vars], [neg_q, grad], on_unused_input="ignore", **compile_kwargs
    )

    def neg_q_and_grad(x: np.ndarray, *resp: np.ndarray) -> tuple[float, np.ndarray]:
        value, g = fn(x, *resp)
        value = float(value)
        if not np.isfinite(value):
            # Outside the support: tell the line search to step back.
            return np.inf, np.zeros_like(x)
        return value, np.asarray(g, dtype="float64")

    return neg_q_and_grad


class NumericMStep:
    """Maximize Q with L-BFGS-B, warm-started; never returns a point with a lower Q.

    Parameters
    ----------
    neg_q_and_grad : callable
        From `compile_q`.
    maxiter : int, default 200
        L-BFGS iterations per M-step.
    """

    def __init__(self, neg_q_and_grad: QFunction, *, maxiter: int = 200):
        self.neg_q_and_grad = neg_q_and_grad
        self.maxiter = maxiter

    def __call__(self, x: np.ndarray, resp: Sequence[np.ndarray]) -> np.ndarray:
        """Return the parameters that maximize Q given ``resp``, starting from ``x``."""
        if x.size == 0:
            return x
        f0, _ = self.neg_q_and_grad(x, *resp)
        res = minimize(
            self.neg_q_and_grad,
            x,
            args=tuple(resp),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.maxiter, "ftol": 1e-13, "gtol": 1e-9},
        )
        # EM's monotonicity rests on Q not decreasing; keep the old point if it would.
        if not np.all(np.isfinite(res.x)) or not res.fun <= f0:
            return x
        return np.asarray(res.x, dtype="float64")
