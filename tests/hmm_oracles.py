"""Independent oracles for hidden Markov models: nothing here imports pm_em or PyMC.

- `enumerate_paths`: every one of the K^T state paths of each sequence, for exact log
  likelihoods, smoothed marginals, transition counts, the Viterbi path and the path entropy;
- `forward_log_lik`: the forward algorithm in plain numpy (scaled), for direct maximization;
- `maximize`: L-BFGS-B on a forward-algorithm log likelihood, then Newton steps on a
  finite-difference Hessian of the numerical gradient, as `tests.oracles` does for mixtures.
"""

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special


@dataclass
class Enumerated:
    log_lik: np.ndarray  # (S,)
    resp: np.ndarray  # (S, T, K)
    transitions: np.ndarray  # (S, K, K)
    viterbi: np.ndarray  # (S, T)
    viterbi_log_joint: np.ndarray  # (S,)
    entropy: np.ndarray  # (S,)


def enumerate_paths(log_init, log_trans, log_emission) -> Enumerated:
    """Sum over all K^T paths of each sequence. Shapes (S, K), (K, K) or (S, K, K), (S, T, K)."""
    log_emission = np.asarray(log_emission, dtype=float)
    n_seq, n_steps, n_states = log_emission.shape
    log_init = np.broadcast_to(log_init, (n_seq, n_states))
    log_trans = np.broadcast_to(log_trans, (n_seq, n_states, n_states))
    paths = np.array(list(itertools.product(range(n_states), repeat=n_steps)))  # (K^T, T)
    out = {k: [] for k in Enumerated.__dataclass_fields__}
    for s in range(n_seq):
        with np.errstate(invalid="ignore"):
            joint = (
                log_init[s][paths[:, 0]]
                + log_trans[s][paths[:, :-1], paths[:, 1:]].sum(axis=1)
                + log_emission[s][np.arange(n_steps), paths].sum(axis=1)
            )
        ll = special.logsumexp(joint)
        w = np.exp(joint - ll)
        resp = np.zeros((n_steps, n_states))
        trans = np.zeros((n_states, n_states))
        for t in range(n_steps):
            np.add.at(resp[t], paths[:, t], w)
        for t in range(1, n_steps):
            np.add.at(trans, (paths[:, t - 1], paths[:, t]), w)
        best = int(np.argmax(joint))
        out["log_lik"].append(ll)
        out["resp"].append(resp)
        out["transitions"].append(trans)
        out["viterbi"].append(paths[best])
        out["viterbi_log_joint"].append(joint[best])
        out["entropy"].append(-np.sum(w[w > 0] * np.log(w[w > 0])))
    return Enumerated(**{k: np.array(v) for k, v in out.items()})


def forward_log_lik(log_init, trans, log_emission) -> float:
    """log p(y) summed over sequences: scaled forward recursion. Shapes (S, K), (K, K), (S, T, K).

    NaN rows of ``log_emission`` are not allowed; pass 0 for a missing step.
    """
    log_emission = np.asarray(log_emission, dtype=float)
    total = 0.0
    for s in range(log_emission.shape[0]):
        alpha = np.exp(log_init[s])
        for t in range(log_emission.shape[1]):
            if t:
                alpha = alpha @ trans
            m = log_emission[s, t].max()
            alpha = alpha * np.exp(log_emission[s, t] - m)
            c = alpha.sum()
            total += m + np.log(c)
            alpha = alpha / c
    return total


def softmax_rows(u: np.ndarray) -> np.ndarray:
    """Rows of probabilities from K - 1 free logits per row (the last logit fixed at 0)."""
    full = np.concatenate([u, np.zeros((*u.shape[:-1], 1))], axis=-1)
    return np.exp(full - special.logsumexp(full, axis=-1, keepdims=True))


def maximize(neg_log_lik, x0, *, newton_steps: int = 8, h: float = 1e-5) -> np.ndarray:
    """Minimize ``neg_log_lik`` (numerical gradients), then polish with Newton steps."""

    def grad(x):
        g = np.empty_like(x)
        for i in range(x.size):
            e = np.zeros_like(x)
            e[i] = h
            g[i] = (neg_log_lik(x + e) - neg_log_lik(x - e)) / (2 * h)
        return g

    res = optimize.minimize(
        neg_log_lik, x0, jac=grad, method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10}
    )
    x = res.x
    for _ in range(newton_steps):
        g = grad(x)
        hess = np.empty((x.size, x.size))
        for i in range(x.size):
            e = np.zeros_like(x)
            e[i] = 1e-4
            hess[:, i] = (grad(x + e) - grad(x - e)) / 2e-4
        step = np.linalg.solve(0.5 * (hess + hess.T), g)
        if not np.all(np.isfinite(step)):
            break
        x_new = x - step
        if neg_log_lik(x_new) <= neg_log_lik(x) + 1e-12:
            x = x_new
    return x
