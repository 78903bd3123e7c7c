"""Normal components: y_i ~ Normal(mu[z_i], sigma[z_i]), locations and scales with their priors."""

from collections.abc import Callable

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from scipy.optimize import brentq

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.components import Components
from pm_em.closed_form.graph import Role, data_graph
from pm_em.closed_form.priors import Prior, read_prior

__all__ = ["match_normal"]


def _scale_update(prior: Prior | None, n: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """Maximize -n log s - ss / (2 s²) + log p(s) over s > 0 (elementwise)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if prior.kind == "flat":
            return np.sqrt(ss / n)
        if prior.kind == "halfnormal":
            (tau,) = prior.args
            # s² solves s⁴/τ² + n s² - ss = 0; the stable root.
            return np.sqrt(2.0 * ss / (n + np.sqrt(n * n + 4.0 * ss / tau**2)))
        if prior.kind == "invgamma":
            alpha, beta = prior.args
            # s solves (n + α + 1) s² - β s - ss = 0.
            a = n + alpha + 1.0
            return (beta + np.sqrt(beta * beta + 4.0 * a * ss)) / (2.0 * a)
    raise AssertionError(prior.kind)


def _log_scale_prior(prior: Prior, s: np.ndarray) -> np.ndarray:
    """Return log p(s) up to a constant, and s · d log p / ds, elementwise."""
    if prior.kind == "flat":
        return np.zeros_like(s), np.zeros_like(s)
    if prior.kind == "halfnormal":
        (tau,) = prior.args
        return -0.5 * (s / tau) ** 2, -((s / tau) ** 2)
    if prior.kind == "invgamma":
        alpha, beta = prior.args
        return -(alpha + 1.0) * np.log(s) - beta / s, -(alpha + 1.0) + beta / s
    raise AssertionError(prior.kind)


_SCALE_PRIORS = ("flat", "halfnormal", "invgamma")
_LOCATION_PRIORS = ("flat", "normal")


class _NormalComponents(Block):
    """Observed y_i ~ Normal(mu[z_i], sigma[z_i]) (or a shared / constant mu or sigma).

    Statistics per component k, centred at the current location c_k for accuracy:
    N_k = Σ r_ik, A_k = Σ r_ik (y_i - c_k), B_k = Σ r_ik (y_i - c_k)². Then
    Σ_i r_ik (y_i - m)² = B_k - 2 (m - c_k) A_k + N_k (m - c_k)².
    """

    n_stats = 3

    def __init__(self, data: Variable, mu: Role, sigma: Role, mu_prior, sigma_prior, claims):
        self.data = data
        self.mu, self.sigma = mu, sigma
        self.mu_prior, self.sigma_prior = mu_prior, sigma_prior
        self.claims = claims
        self.reads = tuple(r.rv.name for r in (mu, sigma) if r.rv is not None)

    def _param(self, role: Role, values) -> Variable:
        if role.rv is None:
            return pt.as_tensor(role.value)
        return values[role.rv.name]

    def log_density(self, values):
        mu = self._param(self.mu, values)
        sigma = self._param(self.sigma, values)
        y = self.data[:, None]  # (n, 1) against (K,) parameters
        return pm.logp(pm.Normal.dist(mu=mu, sigma=sigma), y)

    def stats(self, resp, values):
        centre = self._param(self.mu, values)
        d = self.data[:, None] - centre  # (n, K)
        rd = resp * d
        return [resp.sum(axis=0), rd.sum(axis=0), (rd * d).sum(axis=0)]

    unrolled = True

    def _param_k(self, role: Role, values, k: int) -> Variable:
        if role.rv is None:
            value = np.asarray(role.value)
            return pt.as_tensor(value[k] if value.ndim else value)
        value = values[role.rv.name]
        return value[k] if role.kind == "indexed" else value.reshape(())

    def log_density_k(self, values, k):
        mu = self._param_k(self.mu, values, k)
        sigma = self._param_k(self.sigma, values, k)
        return pm.logp(pm.Normal.dist(mu=mu, sigma=sigma), self.data)

    def stats_k(self, resp_k, values, k):
        d = self.data - self._param_k(self.mu, values, k)  # (n,)
        rd = resp_k * d
        return [resp_k.sum(), rd.sum(), (rd * d).sum()]

    def update(self, stats, current):
        n, a, b = stats
        k = n.shape[0]
        c = np.broadcast_to(self._value(self.mu, current), (k,)).astype("float64")
        sigma_now = np.broadcast_to(self._value(self.sigma, current), (k,)).astype("float64")
        mu_name = self.mu.rv.name if self.mu.rv is not None else None
        sigma_name = self.sigma.rv.name if self.sigma.rv is not None else None
        update_mu = mu_name in self.claims
        update_sigma = sigma_name in self.claims
        shared = self.sigma.kind == "shared"
        out = {}

        def ss_at(m):
            return b - 2.0 * (m - c) * a + n * (m - c) ** 2

        if update_mu and update_sigma and self.mu_prior.kind == "normal":
            m0, tau = (np.broadcast_to(v, (k,)) for v in self.mu_prior.args)
            mu_new, s_new = _profile_normal_scale(
                n, a, b, c, m0, tau, sigma_now, self.sigma_prior, shared
            )
        else:
            if update_mu and self.mu_prior.kind == "flat":
                with np.errstate(invalid="ignore", divide="ignore"):
                    mu_new = np.where(n > 0, c + a / np.where(n > 0, n, 1.0), c)
            elif update_mu:  # Normal prior, scale fixed at its current value
                m0, tau = (np.broadcast_to(v, (k,)) for v in self.mu_prior.args)
                s2, t2 = sigma_now**2, tau**2
                mu_new = (t2 * (n * c + a) + s2 * m0) / (t2 * n + s2)
            else:
                mu_new = c
            s_new = sigma_now
            if update_sigma:
                ss = ss_at(mu_new)
                if shared:
                    s_new = _scale_update(self.sigma_prior, n.sum(), ss.sum())
                else:
                    s_new = _scale_update(self.sigma_prior, n, ss)
        if update_mu:
            out[mu_name] = np.asarray(mu_new, dtype="float64")
        if update_sigma:
            s_new = np.asarray(s_new, dtype="float64")
            if not np.all(np.isfinite(s_new) & (s_new > 0)):
                return None
            out[sigma_name] = s_new.reshape(current[sigma_name].shape)
        if not all(np.all(np.isfinite(v)) for v in out.values()):
            return None
        return out

    @staticmethod
    def _value(role: Role, current):
        return role.value if role.rv is None else current[role.rv.name]


def _profile_normal_scale(n, a, b, c, m0, tau, sigma_now, sigma_prior, shared):
    """Joint MAP of (mu_k, s) with mu_k ~ Normal(m0_k, τ_k) and a scale prior.

    For a fixed s the location maximizer is closed form, mu_k(s) = (τ²(N c + A) + s² m0) /
    (τ² N + s²). By the envelope theorem, the derivative of the profile in t = log s is
    g(t) = -N + SS(mu(s)) / s² + s d log p(s)/ds, positive as s → 0 and negative as s → ∞;
    its root is found to machine precision (one root search per scale).
    """
    t2 = tau**2

    def mu_at(s2):
        return (t2 * (n * c + a) + s2 * m0) / (t2 * n + s2)

    def ss_at(m):
        return b - 2.0 * (m - c) * a + n * (m - c) ** 2

    def at(t, idx):
        s = np.exp(t)
        s2 = np.full(n.shape, s * s)
        m = mu_at(s2)[idx]
        ss = ss_at(mu_at(s2))[idx]
        prior = (
            sigma_prior
            if shared
            else Prior(sigma_prior.kind, tuple(a[idx] for a in sigma_prior.args))
        )
        log_p, s_dlogp = _log_scale_prior(prior, np.asarray(s))
        return s, m, ss, float(np.sum(log_p)), float(np.sum(s_dlogp))

    def profile(t, idx):
        s, m, ss, log_p, _ = at(t, idx)
        return np.sum(-n[idx] * t - ss / (2 * s * s) - (m - m0[idx]) ** 2 / (2 * t2[idx])) + log_p

    def slope(t, idx):
        s, _, ss, _, s_dlogp = at(t, idx)
        return float(np.sum(-n[idx] + ss / (s * s)) + s_dlogp)

    groups = [np.arange(len(n))] if shared else [np.array([k]) for k in range(len(n))]
    s_new = np.array(sigma_now, dtype="float64")
    for idx in groups:
        t0 = float(np.log(sigma_now[idx[0]]))
        root = _bracketed_root(lambda t, idx=idx: slope(t, idx), t0)
        if root is not None and profile(root, idx) >= profile(t0, idx):
            s_new[idx] = np.exp(root)
    mu_new = mu_at(s_new**2)
    return mu_new, s_new[:1] if shared else s_new


def _bracketed_root(g: Callable[[float], float], t0: float) -> float | None:
    """Root of a function positive on the left and negative on the right, found from t0."""
    lo = hi = t0
    step = 0.5
    for _ in range(200):
        g_lo = g(lo)
        if g_lo > 0:
            break
        lo -= step
        step *= 2
    else:
        return None
    step = 0.5
    for _ in range(200):
        g_hi = g(hi)
        if g_hi < 0:
            break
        hi += step
        step *= 2
    else:
        return None
    if not (np.isfinite(g_lo) and np.isfinite(g_hi)):
        return None
    return brentq(g, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200)


def match_normal(ctx: Context, comps: Components) -> Block | None:
    """Match Normal components ``Normal(mu[k], sigma[k])`` (or a shared / constant parameter).

    Returns None for any other structure.
    """
    y, n_support = comps.y, comps.n_support
    if y.type.ndim != comps.element_ndim:  # one entry per latent element
        return None
    mu, sigma = comps.roles
    if mu is None or sigma is None:
        return None
    for role in (mu, sigma):
        if role.kind == "indexed" and ctx.shapes[role.rv.name] != (n_support,):
            return None
        if role.kind == "const" and role.value.ndim > 1:
            return None
        if role.kind == "shared" and int(np.prod(ctx.shapes[role.rv.name])) != 1:
            return None
    claims = []
    mu_prior = sigma_prior = None
    if mu.kind == "indexed":
        mu_prior = read_prior(mu.rv, ctx.shapes[mu.rv.name])
        if mu_prior is not None and mu_prior.kind in _LOCATION_PRIORS and ctx.claimable(mu.rv, {y}):
            claims.append(mu.rv.name)
    if sigma.kind in ("indexed", "shared"):
        sigma_prior = read_prior(sigma.rv, ctx.shapes[sigma.rv.name])
        if (
            sigma_prior is not None
            and sigma_prior.kind in _SCALE_PRIORS
            and ctx.claimable(sigma.rv, {y})
        ):
            claims.append(sigma.rv.name)
    return _NormalComponents(
        data_graph(ctx.problem.model, y),
        mu,
        sigma,
        mu_prior,
        sigma_prior,
        tuple(dict.fromkeys(claims)),
    )
