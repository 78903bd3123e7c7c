"""The E-step: responsibilities and the observed-data log posterior, from one compiled call.

Everything is computed in log space. ``log_resp`` normalizes each latent element's joint log
density over its support with logsumexp; -inf entries (impossible assignments) are legal and
get responsibility 0. The same call returns the observed-data log posterior at the parameters
it was given, which the loop uses for convergence and the monotonicity check.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc

from pm_em.problem import EMProblem

__all__ = ["EStepResult", "compile_estep"]


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

    @property
    def resp(self) -> tuple[np.ndarray, ...]:
        """Responsibilities p(z_i = k | y, θ), C-contiguous for the M-step."""
        return tuple(np.ascontiguousarray(np.exp(lr)) for lr in self.log_resp)


def compile_estep(problem: EMProblem, **compile_kwargs) -> Callable[[np.ndarray], EStepResult]:
    """Compile the E-step of ``problem`` into a function of the flat parameter vector.

    Parameters
    ----------
    problem : EMProblem
    **compile_kwargs
        Passed to `pymc.pytensorf.compile` (e.g. ``mode``).

    Returns
    -------
    callable
        ``estep(x) -> EStepResult``.
    """
    log_resp, log_marginal = [], []
    for latent in problem.latents:
        lse = pt.logsumexp(latent.log_joint, axis=-1)  # (*shape,)
        # An element with no possible value has lse = -inf; keep its row finite (the log
        # posterior is -inf anyway, and the loop reports it).
        safe = pt.switch(pt.isinf(lse), 0.0, lse)
        log_resp.append(latent.log_joint - safe[..., None])
        log_marginal.append(lse)
    rest = list(problem.log_lik_rest.values())
    log_post = problem.log_prior + pt.add(
        pt.constant(0.0, dtype="float64"),
        *(m.sum() for m in log_marginal),
        *(r.sum() for r in rest),
    )
    outputs = [*log_resp, *log_marginal, *rest, problem.log_prior, log_post]
    fn = compile_pymc([problem.x], outputs, on_unused_input="ignore", **compile_kwargs)
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
