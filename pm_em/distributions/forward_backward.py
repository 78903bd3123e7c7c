"""Forward–backward and Viterbi for hidden Markov models, compiled with Numba.

The E-step of a chain latent: given log p(y_t | z_t = k) for every time step and state (the
emission, from one compiled PyMC graph), the initial log probabilities and log P, return the
smoothed marginals γ_t = p(z_t | y), the expected transition counts Σ_t ξ_t with
ξ_t[i, j] = p(z_t = i, z_{t+1} = j | y), and log p(y_t | y_<t) per step (their sum is the log
likelihood). Numba is a dependency of PyTensor, so this costs pm_em no new dependency.

Two kernels compute the same quantities:

- the **scaled** recursion (Rabiner's scaling, with each step's emissions shifted by their
  largest value among the reachable states): probability-space messages normalized every
  step, one ``exp`` per entry and one ``log`` per step, and a backward pass in filter form
  that needs no emissions; about as fast as hmmlearn's C++;
- the **log-space** recursion (normalized log filter, as `pm_em.distributions.forward`),
  several times slower, which cannot underflow.

Every sequence runs the scaled kernel; if its smoothed marginals are not finite or do not sum
to 1 (to 1e-8) at some step, the sequence is redone in log space, so an extreme model (an
unreachable best state next to an outlier) costs time, never accuracy. Memory: the outputs
plus O(T) per sequence, allocated in Python (so that tracemalloc sees it); the emissions
are not modified.

Shapes: ``log_emission`` (S, T, K) over S sequences; ``log_init`` (S, K) or (1, K);
``trans`` (S, K, K) or (1, K, K) holds P itself (not its log) for forward–backward.
"""

from dataclasses import dataclass

import numba
import numpy as np

__all__ = ["ForwardBackward", "forward_backward", "viterbi", "weighted_sum"]

# Largest deviation of a smoothed marginal's sum from 1 that the scaled kernel may leave; in
# exact arithmetic the sums are 1, and round-off leaves ~K · 1e-16.
_SUM_TOL = 1e-8
# A per-step normalizer below this (near the subnormal range) has lost relative precision.
_TINY = 1e-280


@numba.njit(cache=True, nogil=True)
def _scaled(log_init, trans, log_b, gamma, xi, log_steps, with_entropy):  # pragma: no cover
    """Run the scaled forward–backward of one sequence; return (ok, entropy).

    Forward: ``gamma`` holds the normalized filter f_t = p(z_t | y_≤t). Backward, in filter
    form (no emissions needed): with the one-step prediction π_{t+1} = f_t P,
    γ_t[i] = f_t[i] Σ_j P_ij γ_{t+1}[j] / π_{t+1}[j] and ξ_t[i, j] = f_t[i] P_ij γ_{t+1}[j] /
    π_{t+1}[j], overwriting the filter with the smoothed marginals.
    """
    n_steps, n_states = log_b.shape
    pred = np.empty(n_states)
    ok = True
    for t in range(n_steps):
        for j in range(n_states):
            if t == 0:
                pred[j] = np.exp(log_init[j])
            else:
                s = 0.0
                for i in range(n_states):
                    s += gamma[t - 1, i] * trans[i, j]
                pred[j] = s
        # Shift by the best emission among the reachable states (so that one of them has
        # weight 1: no underflow of the whole step unless every path is impossible).
        m = -np.inf
        for j in range(n_states):
            if pred[j] > 0.0 and log_b[t, j] > m:
                m = log_b[t, j]
        if not np.isfinite(m):
            m = 0.0
        c = 0.0
        for j in range(n_states):
            v = pred[j] * np.exp(log_b[t, j] - m) if pred[j] > 0.0 else 0.0
            gamma[t, j] = v
            c += v
        log_steps[t] = m + np.log(c) if c > 0.0 else -np.inf
        if 0.0 < c < _TINY:
            ok = False  # a subnormal normalizer has lost digits: redo in log space
        if c > 0.0:
            for j in range(n_states):
                gamma[t, j] /= c
    if not np.isfinite(log_steps.sum()):
        return True, 0.0  # impossible data: the caller reports the -inf likelihood
    if not ok:
        return False, 0.0
    # H(z | y) = H(z_0 | y) + Σ_t H(z_{t+1} | z_t, y), with p(z_{t+1} = j | z_t = i, y) =
    # P_ij e_j / β_t[i] in the notation below.
    entropy = 0.0
    beta = np.empty(n_states)
    e = np.empty(n_states)
    for t in range(n_steps - 2, -1, -1):
        for j in range(n_states):
            s = 0.0
            for i in range(n_states):
                s += gamma[t, i] * trans[i, j]
            e[j] = gamma[t + 1, j] / s if s > 0.0 else 0.0
        total = 0.0
        for i in range(n_states):
            f = gamma[t, i]
            s = 0.0
            for j in range(n_states):
                x = trans[i, j] * e[j]
                s += x
                xi[i, j] += f * x
            beta[i] = s
            gamma[t, i] = f * s
            total += gamma[t, i]
        if with_entropy:
            for i in range(n_states):
                for j in range(n_states):
                    x = gamma[t, i] * trans[i, j] * e[j] / beta[i] if beta[i] > 0.0 else 0.0
                    if x > 0.0:
                        entropy -= x * np.log(trans[i, j] * e[j] / beta[i])
        if not (abs(total - 1.0) <= _SUM_TOL):
            ok = False
    if with_entropy:
        for i in range(n_states):
            g = gamma[0, i]
            if g > 0.0:
                entropy -= g * np.log(g)
    return ok, entropy


@numba.njit(cache=True, nogil=True)
def _logsumexp(v):  # pragma: no cover
    m = -np.inf
    for x in v:
        if x > m:
            m = x
    if not np.isfinite(m):
        return m
    s = 0.0
    for x in v:
        s += np.exp(x - m)
    return m + np.log(s)


@numba.njit(cache=True, nogil=True)
def _log_space(log_init, trans, log_b, gamma, xi, log_steps, with_entropy):  # pragma: no cover
    """Run the normalized log-space forward–backward of one sequence; return the entropy.

    ``gamma`` first holds the log filter a_t = log p(z_t | y_≤t).
    """
    n_steps, n_states = log_b.shape
    log_trans = np.log(trans)
    w = np.empty(n_states)
    for t in range(n_steps):
        for j in range(n_states):
            if t == 0:
                w[j] = log_init[j] + log_b[0, j]
            else:
                s = 0.0
                for i in range(n_states):
                    s += np.exp(gamma[t - 1, i]) * trans[i, j]
                w[j] = (np.log(s) if s > 0.0 else -np.inf) + log_b[t, j]
        c = _logsumexp(w)
        log_steps[t] = c
        for j in range(n_states):
            gamma[t, j] = w[j] - c if np.isfinite(c) else -np.inf
    if not np.isfinite(log_steps.sum()):
        return 0.0
    log_beta = np.zeros(n_states)
    log_beta_next = np.zeros(n_states)
    v = np.empty(n_states)
    row = np.empty(n_states)
    entropy = 0.0
    for j in range(n_states):
        gamma[n_steps - 1, j] = np.exp(gamma[n_steps - 1, j])
    for t in range(n_steps - 2, -1, -1):
        for j in range(n_states):
            v[j] = log_b[t + 1, j] + log_beta_next[j] - log_steps[t + 1]
        for i in range(n_states):
            for j in range(n_states):
                row[j] = log_trans[i, j] + v[j]
            log_beta[i] = _logsumexp(row)
        for i in range(n_states):
            for j in range(n_states):
                log_pair = gamma[t, i] + log_trans[i, j] + v[j]
                if np.isfinite(log_pair):
                    x = np.exp(log_pair)
                    xi[i, j] += x
                    if with_entropy:
                        entropy -= x * (log_trans[i, j] + v[j] - log_beta[i])
            gamma[t, i] = np.exp(gamma[t, i] + log_beta[i])
        for i in range(n_states):
            log_beta_next[i] = log_beta[i]
    if with_entropy:
        for i in range(n_states):
            g = gamma[0, i]
            if g > 0.0:
                entropy -= g * np.log(g)
    return entropy


@numba.njit(cache=True, nogil=True)
def _viterbi(log_init, log_trans, log_b, path, back):  # pragma: no cover
    """Write the most probable path of one sequence into ``path``; return its log joint.

    ``back`` (T, K) is workspace: the best predecessor of each state at each step.
    """
    n_steps, n_states = log_b.shape
    delta = np.empty(n_states)
    new = np.empty(n_states)
    for j in range(n_states):
        delta[j] = log_init[j] + log_b[0, j]
    for t in range(1, n_steps):
        for j in range(n_states):
            best, arg = -np.inf, 0
            for i in range(n_states):
                c = delta[i] + log_trans[i, j]
                if c > best:
                    best, arg = c, i
            new[j] = best + log_b[t, j]
            back[t, j] = arg
        for j in range(n_states):
            delta[j] = new[j]
    best, arg = -np.inf, 0
    for j in range(n_states):
        if delta[j] > best:
            best, arg = delta[j], j
    path[n_steps - 1] = arg
    for t in range(n_steps - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return best


@numba.njit(cache=True, nogil=True)
def _weighted_sum(weights, log_b):  # pragma: no cover
    total = 0.0
    for s in range(weights.shape[0]):
        for t in range(weights.shape[1]):
            for k in range(weights.shape[2]):
                if weights[s, t, k] > 0.0:
                    total += weights[s, t, k] * log_b[s, t, k]
    return total


def weighted_sum(weights: np.ndarray, log_b: np.ndarray) -> float:
    """Return Σ weights · log_b over entries of positive weight (0 · -inf counts as 0).

    Both of shape (S, T, K), any memory layout; no temporary array.
    """
    return float(_weighted_sum(np.asarray(weights, "float64"), np.asarray(log_b, "float64")))


@dataclass(frozen=True)
class ForwardBackward:
    """Smoothed expectations of S sequences.

    Attributes
    ----------
    resp : ndarray of shape (S, T, K)
        γ_t[k] = p(z_t = k | y); 0 for a sequence of zero likelihood.
    transitions : ndarray of shape (S, K, K)
        Σ_t p(z_t = i, z_{t+1} = j | y).
    log_steps : ndarray of shape (S, T)
        log p(y_t | y_<t); each row sums to the sequence's log likelihood.
    entropy : ndarray of shape (S,) or None
        The entropy of p(z | y) over whole paths, when asked for.
    n_log_space : int
        Sequences the scaled kernel handed to the log-space one.
    """

    resp: np.ndarray
    transitions: np.ndarray
    log_steps: np.ndarray
    entropy: np.ndarray | None
    n_log_space: int

    @property
    def log_likelihood(self) -> np.ndarray:
        """Log p(y) per sequence, shape (S,)."""
        return self.log_steps.sum(axis=-1)


def forward_backward(
    log_init: np.ndarray, trans: np.ndarray, log_emission: np.ndarray, *, entropy: bool = False
) -> ForwardBackward:
    """Run forward–backward on every sequence.

    Parameters
    ----------
    log_init : ndarray of shape (S, K) or (1, K)
        log p(z_0 = k).
    trans : ndarray of shape (S, K, K) or (1, K, K)
        The transition matrices P (probabilities, rows summing to 1).
    log_emission : ndarray of shape (S, T, K)
        log p(y_t | z_t = k); 0 at a missing observation.
    entropy : bool, default False
        Also return the entropy of the posterior over paths.

    Returns
    -------
    ForwardBackward
    """
    # Any memory layout: the emissions often come as a transposed view, and a contiguous
    # copy would be one more (T, K) array.
    log_b = np.asarray(log_emission, dtype="float64")
    n_seq, n_steps, n_states = log_b.shape
    log_init = np.ascontiguousarray(log_init, dtype="float64")
    trans = np.ascontiguousarray(trans, dtype="float64")
    gamma = np.empty(log_b.shape)  # C order, whatever the emissions' layout
    xi = np.zeros((n_seq, n_states, n_states))
    log_steps = np.empty((n_seq, n_steps))
    ent = np.zeros(n_seq) if entropy else None
    n_log = 0
    for s in range(n_seq):
        li, tr = log_init[min(s, log_init.shape[0] - 1)], trans[min(s, trans.shape[0] - 1)]
        ok, h = _scaled(li, tr, log_b[s], gamma[s], xi[s], log_steps[s], entropy)
        if not ok:
            n_log += 1
            xi[s] = 0.0
            h = _log_space(li, tr, log_b[s], gamma[s], xi[s], log_steps[s], entropy)
        if not np.isfinite(log_steps[s].sum()):
            gamma[s], xi[s] = 0.0, 0.0  # no path explains the data: nothing to expect
        if ent is not None:
            ent[s] = h
    return ForwardBackward(gamma, xi, log_steps, ent, n_log)


def viterbi(
    log_init: np.ndarray, log_trans: np.ndarray, log_emission: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Return the most probable state path of every sequence and its log joint density.

    Parameters
    ----------
    log_init : ndarray of shape (S, K) or (1, K)
    log_trans : ndarray of shape (S, K, K) or (1, K, K)
        log P.
    log_emission : ndarray of shape (S, T, K)

    Returns
    -------
    path : ndarray of int64, shape (S, T)
    log_joint : ndarray of shape (S,)
        log p(y, z = path); ties go to the lowest state.
    """
    log_b = np.ascontiguousarray(log_emission, dtype="float64")
    n_seq, n_steps, _ = log_b.shape
    log_init = np.ascontiguousarray(log_init, dtype="float64")
    log_trans = np.ascontiguousarray(log_trans, dtype="float64")
    path = np.zeros((n_seq, n_steps), dtype=np.int64)
    best = np.empty(n_seq)
    back = np.zeros((n_steps, log_b.shape[-1]), dtype=np.int32)  # workspace, per sequence
    for s in range(n_seq):
        li = log_init[min(s, log_init.shape[0] - 1)]
        lt = log_trans[min(s, log_trans.shape[0] - 1)]
        best[s] = _viterbi(li, lt, log_b[s], path[s], back)
    return path, best
