"""Chain latents in the E- and M-steps.

The E-step's compiled graph returns a chain's inputs (emissions (*batch, T, K), log initial
probabilities, log P); `smooth` runs forward–backward on them
(`pm_em.distributions.forward_backward`) and returns what an independent latent's E-step returns
(the smoothed marginals as responsibilities, log p(y_t | y_<t) per step as the pointwise log
marginal) plus a `ChainPosterior`: the expectations the M-step needs, the log likelihood per
sequence, and, computed only when the results ask, the Viterbi path and the path entropy.

For the M-step, a chain's expectations are a `pm_em.reading.problem.ChainExpectations`;
`expectation_inputs` and `flat_inputs` give compiled M-step functions their inputs, and
`expected_log_joint` the chain's terms of Q:

    Σ_t Σ_k γ_t[k] log p(y_t | z_t = k) + Σ_ij ξ[i, j] log P_ij + Σ_k γ_0[k] log p(z_0 = k).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable

from pm_em.distributions.forward_backward import forward_backward, viterbi, weighted_sum
from pm_em.reading.problem import ChainExpectations, EMProblem, Latent

__all__ = [
    "ChainPosterior",
    "expectation_inputs",
    "expected_log_joint",
    "flat_inputs",
    "smooth",
    "start_expectations",
]


def _sequences(lat: Latent, emission, log_init, log_trans):
    """Reshape a chain's arrays to S sequences: (S, T, K), (S, K), (S or 1, K, K)."""
    n_states = lat.support.size
    batch = lat.shape[:-1]
    n_seq = int(np.prod(batch))
    emission = np.asarray(emission, dtype="float64").reshape(n_seq, lat.shape[-1], n_states)
    log_init = np.broadcast_to(log_init, (*batch, n_states)).reshape(n_seq, n_states)
    log_trans = np.asarray(log_trans, dtype="float64")
    if log_trans.ndim == 2:
        log_trans = log_trans[None]
    else:
        log_trans = np.broadcast_to(log_trans, (*batch, n_states, n_states))
        log_trans = log_trans.reshape(n_seq, n_states, n_states)
    return emission, log_init, log_trans


@dataclass(frozen=True, eq=False)
class ChainPosterior:
    """What the E-step knows of a chain latent at one parameter point.

    Attributes
    ----------
    expectations : ChainExpectations
        Smoothed marginals (*batch, T, K), expected transitions (*batch, K, K) and initial
        state probabilities (*batch, K): what the M-step takes.
    log_likelihood : ndarray of shape batch
        log p(y) of each sequence.
    n_log_space : int
        Sequences whose forward–backward ran in log space (see `forward_backward`).
    """

    latent: Latent = field(repr=False)
    expectations: ChainExpectations = field(repr=False)
    log_likelihood: np.ndarray
    n_log_space: int
    # () -> (emission, log_init, log_trans) at the same point: the Viterbi path and the
    # entropy need the emissions, which are not kept between iterations.
    inputs_at: Callable[[], Sequence[np.ndarray]] = field(repr=False)

    @cached_property
    def viterbi(self) -> np.ndarray:
        """The most probable state path, shape (*batch, T)."""
        emission, log_init, log_trans = _sequences(self.latent, *self.inputs_at())
        path, _ = viterbi(log_init, log_trans, emission)
        return self.latent.support[path].reshape(self.latent.shape)

    @cached_property
    def entropy(self) -> float:
        """The entropy of p(z | y) over whole paths (summed over sequences), in nats.

        H = log p(y) − E[log p(z, y)]: the log likelihood less the expected complete-data
        log density, from the expectations already at hand (no second forward–backward).
        """
        emission, log_init, log_trans = _sequences(self.latent, *self.inputs_at())
        k = self.latent.support.size
        expect = self.expectations
        resp = expect.resp.reshape(emission.shape)

        def weighted(w, log_density):  # 0 · (-inf) counts as 0
            with np.errstate(invalid="ignore"):
                return float(np.where(w > 0, w * log_density, 0.0).sum())

        expected = weighted_sum(resp, emission)
        expected += weighted(expect.transitions.reshape(-1, k, k), log_trans)
        expected += weighted(expect.initial.reshape(-1, k), log_init)
        return float(self.log_likelihood.sum()) - expected


def smooth(
    lat: Latent, emission, log_init, log_trans, inputs_at: Callable
) -> tuple[None, np.ndarray, ChainPosterior]:
    """Forward–backward on one chain latent's arrays.

    Returns
    -------
    log_resp : None
        Not computed: every iteration needs the marginals, not their logs
        (`EStepResult.with_log_resp` fills them in where needed).
    log_marginal : ndarray of shape ``lat.shape``
        log p(y_t | y_<t) per time step; each sequence's sum is its log likelihood.
    posterior : ChainPosterior
    """
    emission, log_init, log_trans = _sequences(lat, emission, log_init, log_trans)
    with np.errstate(under="ignore"):
        fb = forward_backward(log_init, np.exp(log_trans), emission)
    batch, n_states = lat.shape[:-1], lat.support.size
    resp = fb.resp.reshape(*lat.shape, n_states)
    expectations = ChainExpectations(
        resp=resp,
        transitions=fb.transitions.reshape(*batch, n_states, n_states),
        initial=resp[..., 0, :],
    )
    posterior = ChainPosterior(
        latent=lat,
        expectations=expectations,
        log_likelihood=fb.log_likelihood.reshape(batch),
        n_log_space=fb.n_log_space,
        inputs_at=inputs_at,
    )
    return None, fb.log_steps.reshape(lat.shape), posterior


# ------------------------------------------------------------------------------- M-step
def expectation_inputs(problem: EMProblem) -> list:
    """Symbolic inputs of a compiled M-step function: per latent, what the E-step gives it.

    An independent latent's responsibilities (*shape, K) as one tensor; a chain's as a
    `ChainExpectations` of three tensors.
    """
    out = []
    for lat in problem.latents:
        ndim = len(lat.shape)
        resp = pt.tensor(f"resp_{lat.name}", shape=(None,) * (ndim + 1), dtype="float64")
        if lat.coupling != "chain":
            out.append(resp)
            continue
        transitions = pt.tensor(f"xi_{lat.name}", shape=(None,) * (ndim + 1), dtype="float64")
        initial = pt.tensor(f"gamma0_{lat.name}", shape=(None,) * ndim, dtype="float64")
        out.append(ChainExpectations(resp, transitions, initial))
    return out


def flat_inputs(entries: Sequence) -> list:
    """Flatten per-latent expectations into the positional inputs of a compiled function."""
    flat = []
    for entry in entries:
        flat.extend(entry.parts if isinstance(entry, ChainExpectations) else (entry,))
    return flat


def _weighted(weight: Variable, log_density: Variable) -> Variable:
    # 0 · (-inf) counts as 0: an impossible assignment that has no weight.
    return pt.switch(weight > 0, weight * log_density, 0.0).sum()


def expected_log_joint(lat: Latent, entry) -> Variable:
    """Return the latent's term of Q, its expected complete-data log density given ``entry``."""
    if lat.coupling != "chain":
        return _weighted(entry, lat.log_joint)
    return (
        _weighted(entry.resp, lat.log_joint)
        + _weighted(entry.transitions, lat.log_trans)
        + _weighted(entry.initial, lat.log_init)
    )


def start_expectations(problem: EMProblem, resps: Sequence[np.ndarray]) -> tuple:
    """Turn starting responsibilities into what the M-step takes.

    A chain latent's soft labels r (*batch, T, K) give expected transitions
    Σ_t r_{t-1}ᵀ r_t and initial probabilities r_0, as if they were smoothed marginals of
    independent steps; the other latents' responsibilities pass unchanged.
    """
    out = []
    for lat, resp in zip(problem.latents, resps, strict=True):
        if lat.coupling != "chain":
            out.append(resp)
            continue
        transitions = np.einsum("...ti,...tj->...ij", resp[..., :-1, :], resp[..., 1:, :])
        out.append(ChainExpectations(resp, transitions, np.ascontiguousarray(resp[..., 0, :])))
    return tuple(out)
