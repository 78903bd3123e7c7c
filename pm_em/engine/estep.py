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

A chain latent (``coupling="chain"``) is smoothed, not normalized: the compiled call returns
its emissions, log initial probabilities and log P, and forward–backward runs on them
(`pm_em.engine.chains`). Its entries of `EStepResult` then mean: ``resp`` the smoothed
marginals p(z_t = k | y), ``log_resp`` None (the logs are computed on request,
`EStepResult.with_log_resp`: one (T, K) array less per result), ``log_marginal``
log p(y_t | y_<t) per time step (summing to the log likelihood), and ``chains`` its
`ChainPosterior`.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from pm_em.compiling import compile_with_data
from pm_em.engine.chains import ChainPosterior, smooth
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
    log_resp : tuple of (ndarray or None), each of shape (*latent.shape, n_support)
        log p(z_i = k | y, θ) per latent; None for a chain latent (see `with_log_resp`).
    log_marginal : tuple of ndarray, each of shape latent.shape
        log p(y_i | θ) with z_i summed out (including z_i's own prior term), per latent.
    log_lik_rest : tuple of ndarray
        Elementwise log likelihood of the observed variables that no latent touches.
    log_prior : float
        Log prior density of the parameters (constrained space, no Jacobian).
    log_posterior : float
        The observed-data log posterior (unnormalized).
    chains : tuple of (ChainPosterior or None)
        Per latent, a chain's expected transitions, log likelihood per sequence and Viterbi
        path (None for an independent latent); empty when the problem has no chain.
    """

    log_resp: tuple[np.ndarray, ...]
    log_marginal: tuple[np.ndarray, ...]
    log_lik_rest: tuple[np.ndarray, ...]
    log_prior: float
    log_posterior: float
    chains: tuple[ChainPosterior | None, ...] = ()

    @property
    def log_likelihood(self) -> float:
        """Observed-data log likelihood: the log posterior less the log prior."""
        return self.log_posterior - self.log_prior

    @cached_property
    def resp(self) -> tuple[np.ndarray, ...]:
        """Responsibilities p(z_i = k | y, θ), C-contiguous for the M-step.

        Computed once per result (every caller shares the arrays: do not modify them), and
        exponentiated straight into C order (no second copy for an F-ordered ``log_resp``).
        A chain's are its smoothed marginals, as forward–backward computed them.
        """
        chains = self.chains or (None,) * len(self.log_resp)
        return tuple(
            np.exp(lr, order="C") if chain is None else chain.expectations.resp
            for lr, chain in zip(self.log_resp, chains, strict=True)
        )

    def with_log_resp(self) -> "EStepResult":
        """Return this result with the chains' log smoothed marginals filled in."""
        if all(lr is not None for lr in self.log_resp):
            return self
        with np.errstate(divide="ignore"):
            log_resp = tuple(
                np.log(r) if lr is None else lr
                for lr, r in zip(self.log_resp, self.resp, strict=True)
            )
        return replace(self, log_resp=log_resp)

    @property
    def expectations(self) -> tuple:
        """What the M-step takes: per latent its responsibilities, or a `ChainExpectations`.

        The same as `resp` when the problem has no chain latent.
        """
        if not self.chains:
            return self.resp
        return tuple(
            r if chain is None else chain.expectations
            for r, chain in zip(self.resp, self.chains, strict=True)
        )


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
    outputs, marginals = [], []  # two outputs per latent
    for latent, log_joint in zip(problem.latents, log_joints, strict=True):
        if latent.coupling == "chain":
            # Forward–backward runs on the compiled values (`smooth`), three per chain.
            outputs += [log_joint, latent.log_init, latent.log_trans]
            continue
        lse = pt.logsumexp(log_joint, axis=-1)  # (*shape,)
        # An element with no possible value has lse = -inf; keep its row finite (the log
        # posterior is -inf anyway, and the loop reports it).
        safe = pt.switch(pt.isinf(lse), 0.0, lse)
        outputs += [log_joint - safe[..., None], lse]
        marginals.append(lse)
    rest = list(problem.log_lik_rest.values())
    log_post = problem.log_prior + pt.add(  # without the chains' log likelihood
        pt.constant(0.0, dtype="float64"),
        *(m.sum() for m in marginals),
        *(r.sum() for r in rest),
    )
    outputs += [*rest, problem.log_prior, log_post]
    fn = compile_with_data(problem.model, [problem.x], outputs, name=name, **compile_kwargs)
    n_rest = len(rest)
    has_chain = any(lat.coupling == "chain" for lat in problem.latents)

    def estep(x: np.ndarray) -> EStepResult:
        x = np.array(x, dtype="float64")  # a copy: a chain's ChainPosterior keeps it
        out = fn(x)
        log_resp, log_marginal, chains, i = [], [], [], 0
        for lat in problem.latents:
            if lat.coupling == "chain":
                j = i  # the chain's three outputs, recomputed for its Viterbi path
                lr, lm, chain = smooth(lat, *out[i : i + 3], lambda j=j: fn(x)[j : j + 3])
                i += 3
            else:
                lr, lm, chain = out[i], out[i + 1], None
                i += 2
            log_resp.append(lr)
            log_marginal.append(lm)
            chains.append(chain)
        log_posterior = float(out[-1]) + sum(
            float(c.log_likelihood.sum()) for c in chains if c is not None
        )
        return EStepResult(
            log_resp=tuple(log_resp),
            log_marginal=tuple(log_marginal),
            log_lik_rest=tuple(out[i : i + n_rest]),
            log_prior=float(out[-2]),
            log_posterior=log_posterior,
            chains=tuple(chains) if has_chain else (),
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
