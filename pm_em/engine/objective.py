"""The observed-data log posterior and its gradient at ``x``: `value_and_grad`.

The polish (`pm_em.engine.run.polish`) maximizes it with L-BFGS and Newton steps, and the
checks of the estimate (`pm_em.engine.curvature`) differentiate its gradient. Two ways to
get it, the same function to round-off:

- `compile_value_and_grad`: one compiled function of ``x`` returning both, from the
  closed-form plan's broadcasts when the plan covers every parameter. Such a fit never
  compiles Q otherwise (the costliest graph of a model), the function returns no array of
  size n (nothing the size of the responsibilities is kept per evaluation), and an MvNormal
  mixture needs K Cholesky factors instead of one per row.
- `estep_value_and_grad`: the E-step and the gradient of Q at its expectations (Fisher's
  identity), from functions EM compiles anyway. The only form for a chain latent, whose log
  likelihood is forward–backward's (computed outside the graph), and the fallback wherever
  the fused gradient is not finite (e.g. through impossible assignments).

Both return ``(log posterior, gradient)``, the gradient None where the log posterior is not
finite.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from pm_em.compiling import LazyFunction, compile_with_data
from pm_em.reading.problem import EMProblem

__all__ = ["compile_value_and_grad", "estep_value_and_grad", "value_and_grad"]

ValueAndGrad = Callable[[np.ndarray], tuple[float, np.ndarray | None]]


def compile_value_and_grad(
    problem: EMProblem, log_joints: Sequence[Variable] | None = None, **compile_kwargs
) -> ValueAndGrad:
    """Compile ``x -> (log posterior, d log posterior / dx)`` in one function.

    Parameters
    ----------
    problem : EMProblem
        Its latents must be independent (no chain: see the module docstring).
    log_joints : sequence of Variable, optional
        Each latent's joint log density, (*shape, K), in place of ``latent.log_joint`` (a
        closed-form plan's broadcasts).
    **compile_kwargs
        Passed to `pymc.pytensorf.compile`.
    """
    if any(lat.coupling == "chain" for lat in problem.latents):
        raise ValueError("a chain latent's log likelihood is forward-backward's: use the E-step")
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
        [log_post],
        name="log posterior and gradient",
        grad_of=0,
        **compile_kwargs,
    )

    def fused(x: np.ndarray) -> tuple[float, np.ndarray | None]:
        value, grad = fn(np.asarray(x, dtype="float64"))
        value = float(value)
        if not np.isfinite(value):
            return value, None
        return value, np.asarray(grad, dtype="float64")

    return fused


def estep_value_and_grad(estep: Callable, neg_q: Callable) -> ValueAndGrad:
    """Return the same function from an E-step and Q's gradient (Fisher's identity)."""

    def via_q(x: np.ndarray) -> tuple[float, np.ndarray | None]:
        e = estep(x)
        if not np.isfinite(e.log_posterior):
            return e.log_posterior, None
        value, neg_grad = neg_q(x, *e.expectations)  # a chain's: its ChainExpectations
        return e.log_posterior, (-neg_grad if np.isfinite(value) else None)

    return via_q


def value_and_grad(fused: Callable[[], ValueAndGrad], via_q: ValueAndGrad) -> ValueAndGrad:
    """Return the fused function (built on first use), the E-step form where it fails.

    ``fused`` builds the function (`compile_value_and_grad`); where its gradient is not
    finite, ``via_q`` (`estep_value_and_grad`) answers instead.
    """
    fused_fn = LazyFunction(fused)

    def log_posterior_and_grad(x: np.ndarray) -> tuple[float, np.ndarray | None]:
        value, grad = fused_fn(x)
        if grad is None or np.all(np.isfinite(grad)):
            return value, grad
        return via_q(x)

    return log_posterior_and_grad
