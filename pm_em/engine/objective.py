"""The polish's objective: minus the observed-data log posterior and its gradient at ``x``.

The polish (`pm_em.engine.run.polish`) minimizes it with L-BFGS and Newton steps. Two ways
to get it, the same function to round-off:

- `compile_neg_log_post`: one compiled function of ``x`` returning both, from the closed-form
  plan's broadcasts when the M-step is closed form (whose fit otherwise never compiles Q, the
  costliest graph of a model) or from the model's own enumerated densities. It returns no
  array of size n, so nothing of the size of the responsibilities is kept per evaluation.
- `estep_objective`: the E-step and the gradient of Q at its expectations (Fisher's
  identity), from the functions a numeric M-step has compiled already. The only form for a
  chain latent, whose log likelihood is forward–backward's (computed outside the graph).
"""

from collections.abc import Callable, Sequence

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from pm_em.compiling import compile_with_data
from pm_em.reading.problem import EMProblem

__all__ = ["compile_neg_log_post", "estep_objective"]

Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _outside(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Outside the support: tell the line search to step back."""
    return np.inf, np.zeros_like(x)


def compile_neg_log_post(
    problem: EMProblem, log_joints: Sequence[Variable] | None = None, **compile_kwargs
) -> Objective:
    """Compile ``x -> (-log posterior, -d log posterior / dx)`` in one function.

    Parameters
    ----------
    problem : EMProblem
    log_joints : sequence of Variable, optional
        Each latent's joint log density, (*shape, K), in place of ``latent.log_joint`` (a
        closed-form plan's broadcasts).
    **compile_kwargs
        Passed to `pymc.pytensorf.compile`.
    """
    if any(lat.coupling == "chain" for lat in problem.latents):
        raise ValueError("a chain latent's log likelihood is forward-backward's: estep_objective")
    if log_joints is None:
        log_joints = [latent.log_joint for latent in problem.latents]
    log_post = problem.log_prior + pt.add(
        pt.constant(0.0, dtype="float64"),
        *(pt.logsumexp(lj, axis=-1).sum() for lj in log_joints),
        *(term.sum() for term in problem.log_lik_rest.values()),
    )
    fn = compile_with_data(
        problem.model,
        [problem.x],
        [-log_post],
        name="log posterior and gradient",
        grad_of=0,
        **compile_kwargs,
    )

    def neg_log_post(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, g = fn(np.asarray(x, dtype="float64"))
        value = float(value)
        if not np.isfinite(value):
            return _outside(x)
        return value, np.asarray(g, dtype="float64")

    return neg_log_post


def estep_objective(estep: Callable, neg_q: Callable) -> Objective:
    """Return the same objective from an E-step and the gradient of Q (Fisher's identity)."""

    def neg_log_post(x: np.ndarray) -> tuple[float, np.ndarray]:
        e = estep(x)
        if not np.isfinite(e.log_posterior):
            return _outside(x)
        _, grad = neg_q(x, *e.expectations)  # a chain's: its ChainExpectations
        return -e.log_posterior, grad

    return neg_log_post
