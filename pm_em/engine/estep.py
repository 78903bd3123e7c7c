"""The E-step: responsibilities and the observed-data log posterior, from one compiled call.

Everything is computed in log space. ``log_resp`` normalizes each latent element's joint log
density over its support with logsumexp; -inf entries (impossible assignments) are legal and
get responsibility 0. The same call returns the observed-data log posterior at the parameters
it was given, which the loop uses for convergence and the monotonicity check.

Two E-steps exist. `compile_estep` returns the responsibilities themselves, (n, K) per latent,
for starting points, numeric M-steps and the results. `compile_lean_estep` serves closed-form
M-steps: from the same single call it returns only their sufficient statistics (arrays of
size K), the pointwise log marginal (size n) and the log posterior, so no (n, K) array leaves
the compiled function and nothing is exponentiated again outside it.

Both compile with the data as inputs (`pm_em.compiling.compile_with_data`).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from pm_em.compiling import compile_with_data
from pm_em.reading.problem import EMProblem

__all__ = [
    "EStepResult",
    "LeanEStepResult",
    "compile_estep",
    "compile_lean_estep",
]


@dataclass(frozen=True)
class EStepResult:
    """Expectations over the latents at one parameter point.

    Attributes
    ----------
    log_resp : tuple of ndarray, each of shape (*latent.shape, n_support)
        log p(z_i = k | y, θ) per latent.
    log_marginal : tuple of ndarray, each of shape latent.shape
        log p(y_i | θ) with z_i summed out (including z_i's own prior term), per latent.
    log_lik_rest : tuple of ndarray
        Elementwise log likelihood of the observed variables that no latent touches.
    log_prior : float
        Log prior density of the parameters (constrained space, no Jacobian).
    log_posterior : float
        The observed-data log posterior (unnormalized).
    """

    log_resp: tuple[np.ndarray, ...]
    log_marginal: tuple[np.ndarray, ...]
    log_lik_rest: tuple[np.ndarray, ...]
    log_prior: float
    log_posterior: float

    @property
    def log_likelihood(self) -> float:
        """Observed-data log likelihood: the log posterior less the log prior."""
        return self.log_posterior - self.log_prior

    @cached_property
    def resp(self) -> tuple[np.ndarray, ...]:
        """Responsibilities p(z_i = k | y, θ), C-contiguous for the M-step.

        Computed once per result (every caller shares the arrays: do not modify them), and
        exponentiated straight into C order (no second copy for an F-ordered ``log_resp``).
        """
        return tuple(np.exp(lr, order="C") for lr in self.log_resp)


def compile_estep(
    problem: EMProblem,
    log_joints: Sequence[Variable] | None = None,
    *,
    name: str = "E-step",
    **compile_kwargs,
) -> Callable[[np.ndarray], EStepResult]:
    """Compile the E-step of ``problem`` into a function of the flat parameter vector.

    Parameters
    ----------
    problem : EMProblem
    log_joints : sequence of Variable, optional
        Each latent's joint log density, (*shape, K), in place of the model's own
        (``latent.log_joint``): a closed-form plan's broadcasts, cheaper in time and memory.
    name : str, default "E-step"
        What the function is, for `pm_em.timing`.
    **compile_kwargs
        Passed to `pymc.pytensorf.compile` (e.g. ``mode``).

    Returns
    -------
    callable
        ``estep(x) -> EStepResult``.
    """
    if log_joints is None:
        log_joints = [latent.log_joint for latent in problem.latents]
    log_resp, log_marginal = [], []
    for log_joint in log_joints:
        lse = pt.logsumexp(log_joint, axis=-1)  # (*shape,)
        # An element with no possible value has lse = -inf; keep its row finite (the log
        # posterior is -inf anyway, and the loop reports it).
        safe = pt.switch(pt.isinf(lse), 0.0, lse)
        log_resp.append(log_joint - safe[..., None])
        log_marginal.append(lse)
    rest = list(problem.log_lik_rest.values())
    log_post = problem.log_prior + pt.add(
        pt.constant(0.0, dtype="float64"),
        *(m.sum() for m in log_marginal),
        *(r.sum() for r in rest),
    )
    outputs = [*log_resp, *log_marginal, *rest, problem.log_prior, log_post]
    fn = compile_with_data(problem.model, [problem.x], outputs, name=name, **compile_kwargs)
    n_lat, n_rest = len(problem.latents), len(rest)

    def estep(x: np.ndarray) -> EStepResult:
        out = fn(np.asarray(x, dtype="float64"))
        return EStepResult(
            log_resp=tuple(out[:n_lat]),
            log_marginal=tuple(out[n_lat : 2 * n_lat]),
            log_lik_rest=tuple(out[2 * n_lat : 2 * n_lat + n_rest]),
            log_prior=float(out[-2]),
            log_posterior=float(out[-1]),
        )

    return estep


@dataclass(frozen=True)
class LeanEStepResult:
    """What a closed-form M-step needs at one parameter point, without responsibilities.

    Attributes
    ----------
    stats : tuple of ndarray
        The sufficient statistics of `ClosedFormPlan.stat_graphs`, in its order.
    log_marginal : tuple of ndarray, each of shape latent.shape
        log p(y_i | θ) with z_i summed out, per latent.
    log_lik_rest : tuple of ndarray
        Elementwise log likelihood of the observed variables that no latent touches.
    log_prior : float
    log_posterior : float
    """

    stats: tuple[np.ndarray, ...]
    log_marginal: tuple[np.ndarray, ...]
    log_lik_rest: tuple[np.ndarray, ...]
    log_prior: float
    log_posterior: float

    @property
    def log_likelihood(self) -> float:
        """Observed-data log likelihood: the log posterior less the log prior."""
        return self.log_posterior - self.log_prior


def compile_lean_estep(
    problem: EMProblem, plan, **compile_kwargs
) -> Callable[[np.ndarray], LeanEStepResult]:
    """Compile the E-step that returns a closed-form M-step's statistics in one call.

    Parameters
    ----------
    problem : EMProblem
    plan : ClosedFormPlan
        A complete plan (`ClosedFormPlan.complete`): it gives each latent's joint log density
        as broadcasts and the statistics as graphs of the responsibilities.
    **compile_kwargs
        Passed to `pymc.pytensorf.compile`.

    Returns
    -------
    callable
        ``lean_estep(x) -> LeanEStepResult``.
    """
    resps, log_marginal, unrolled = [], [], {}
    for j in range(len(problem.latents)):
        terms = plan.unrolled_terms(j)
        if terms is not None:  # K vectors of length n rather than one (n, K) array
            lse, unrolled[j] = terms
            resps.append(None)
        else:
            log_joint = plan.log_joint(j)  # (n, K)
            lse = pt.logsumexp(log_joint, axis=-1)  # (n,)
            safe = pt.switch(pt.isinf(lse), 0.0, lse)
            resps.append(pt.exp(log_joint - safe[..., None]))
        log_marginal.append(lse)
    stats = plan.stat_graphs(resps, unrolled)
    rest = list(problem.log_lik_rest.values())
    log_post = problem.log_prior + pt.add(
        pt.constant(0.0, dtype="float64"),
        *(m.sum() for m in log_marginal),
        *(r.sum() for r in rest),
    )
    outputs = [*stats, *log_marginal, *rest, problem.log_prior, log_post]
    fn = compile_with_data(
        problem.model, [problem.x], outputs, name="lean E-step", **compile_kwargs
    )
    n_stats, n_lat, n_rest = len(stats), len(log_marginal), len(rest)

    def lean_estep(x: np.ndarray) -> LeanEStepResult:
        out = fn(np.asarray(x, dtype="float64"))
        i = n_stats + n_lat
        return LeanEStepResult(
            stats=tuple(np.asarray(v) for v in out[:n_stats]),
            log_marginal=tuple(out[n_stats:i]),
            log_lik_rest=tuple(out[i : i + n_rest]),
            log_prior=float(out[-2]),
            log_posterior=float(out[-1]),
        )

    lean_estep.fn = fn.fn
    return lean_estep
