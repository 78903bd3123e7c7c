"""Independent oracles for the pm_em fit tests.

Nothing in this module imports pm_em or PyMC. Every reference value is the mode of a
marginal (latents summed out) log density that is written out here in numpy/scipy:

    log p(y | theta) = sum_i logsumexp_k [log w_k + log f_k(y_i | theta)]
    log p(theta | y) = log p(y | theta) + log p(theta)          (up to log p(y))

and maximized directly with ``scipy.optimize.minimize`` (L-BFGS-B on analytic
gradients) followed by a few Newton steps on a finite-difference Hessian of the
analytic gradient, so the returned mode has a gradient at round-off level.

Conventions follow ``pm.find_MAP`` (and hence pm_em): densities are taken in the
constrained space, with no Jacobian of any transform. The optimizer works in an
unconstrained parameterization (log for positive parameters, softmax logits for
weights), which moves the optimizer's path but not the maximizer, because the objective
is always evaluated as a function of the constrained values. Log densities include all
normalizing constants, as PyMC's ``model.logp`` does (``Flat``/``HalfFlat`` are 0, and
``Dirichlet(ones(2))`` is log Gamma(2) = 0).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize, special, stats

DATA_DIR = Path(__file__).parent / "data"
LOG_2PI = np.log(2.0 * np.pi)


# --------------------------------------------------------------------------- seeds, data


def make_rng(default_seed: int) -> np.random.Generator:
    """The test's own generator: a fixed default, or ``$PM_EM_TEST_SEED`` to sweep seeds."""
    seed = os.environ.get("PM_EM_TEST_SEED")
    return np.random.default_rng(default_seed if seed is None else int(seed))


def load_faithful() -> dict[str, np.ndarray]:
    """Old Faithful (R ``datasets::faithful``): columns ``eruptions`` and ``waiting``."""
    table = np.genfromtxt(DATA_DIR / "faithful.csv", delimiter=",", names=True)
    return {name: np.asarray(table[name], dtype=float) for name in table.dtype.names}


def draw_labels(rng: np.random.Generator, n: int, weights: Sequence[float]) -> np.ndarray:
    return rng.choice(len(weights), size=n, p=np.asarray(weights, dtype=float))


def normal_mixture_data(rng, n, weights, means, sds):
    z = draw_labels(rng, n, weights)
    return rng.normal(np.asarray(means)[z], np.asarray(sds)[z]), z


def poisson_mixture_data(rng, n, weights, rates):
    z = draw_labels(rng, n, weights)
    return rng.poisson(np.asarray(rates)[z]), z


def student_t_mixture_data(rng, n, weights, means, scales, nu):
    z = draw_labels(rng, n, weights)
    return np.asarray(means)[z] + np.asarray(scales)[z] * rng.standard_t(nu, size=n), z


def regression_mixture_data(rng, n, weights, intercepts, slopes, sds, x_range=(-3.0, 3.0)):
    z = draw_labels(rng, n, weights)
    x = rng.uniform(*x_range, size=n)
    y = (
        np.asarray(intercepts)[z]
        + np.asarray(slopes)[z] * x
        + np.asarray(sds)[z] * rng.normal(size=n)
    )
    return x, y, z


def mvnormal_mixture_data(rng, n, weights, means, covs):
    z = draw_labels(rng, n, weights)
    chols = np.linalg.cholesky(np.asarray(covs, dtype=float))
    eps = rng.normal(size=(n, chols.shape[-1]))
    return np.asarray(means, dtype=float)[z] + np.einsum("nij,nj->ni", chols[z], eps), z


# --------------------------------------------------------------------------- priors


@dataclass(frozen=True)
class NormalPrior:
    mu: float
    sigma: float

    def logpdf(self, x):
        return stats.norm.logpdf(x, self.mu, self.sigma)

    def dlogpdf(self, x):
        return -(x - self.mu) / self.sigma**2


@dataclass(frozen=True)
class HalfNormalPrior:
    sigma: float

    def logpdf(self, x):
        return stats.halfnorm.logpdf(x, scale=self.sigma)

    def dlogpdf(self, x):
        return -x / self.sigma**2


@dataclass(frozen=True)
class GammaPrior:
    """Gamma(alpha, beta) with beta a rate, as ``pm.Gamma(alpha=, beta=)``."""

    alpha: float
    beta: float

    def logpdf(self, x):
        return stats.gamma.logpdf(x, self.alpha, scale=1.0 / self.beta)

    def dlogpdf(self, x):
        return (self.alpha - 1.0) / x - self.beta


def _prior_logpdf(prior, x) -> float:
    return 0.0 if prior is None else float(np.sum(prior.logpdf(x)))


def _prior_dlogpdf(prior, x) -> np.ndarray:
    return np.zeros_like(x, dtype=float) if prior is None else prior.dlogpdf(x)


# --------------------------------------------------------------------------- mixtures


@dataclass
class MixtureMode:
    """A mode of the marginal log posterior found by direct maximization."""

    params: dict[str, np.ndarray]
    log_posterior: float
    log_likelihood: float
    max_abs_grad: float  # of the log posterior w.r.t. the unconstrained coordinates
    newton_step: float  # max |H^-1 g| there: an estimate of the remaining parameter error
    all_log_posteriors: list[float] = field(default_factory=list)  # one per start


class Mixture:
    """K-component mixture; subclasses define the components and their parameters.

    The unconstrained vector is ``[weight logits (K-1, if weights are free), component
    parameters]``; weights are ``softmax([logits, 0])``.
    """

    def __init__(self, K: int, weights=None, dirichlet_alpha=None):
        self.K = K
        if weights is not None:
            self.fixed_log_w = np.log(np.asarray(weights, dtype=float))
            self.alpha = None
        else:
            self.fixed_log_w = None
            self.alpha = (
                np.ones(K) if dirichlet_alpha is None else np.asarray(dirichlet_alpha, float)
            )

    # -- subclass interface
    def _unpack_comp(self, v) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _pack_comp(self, params) -> np.ndarray:
        raise NotImplementedError

    def component_logpdf(self, params) -> np.ndarray:
        """(n, K) log f_k(y_i | theta), without the weights."""
        raise NotImplementedError

    def _comp_grad(self, params, R) -> np.ndarray:
        """Gradient w.r.t. the unconstrained component coordinates of
        sum_i sum_k R_ik log f_k(y_i) + log prior(component parameters)."""
        raise NotImplementedError

    def _comp_log_prior(self, params) -> float:
        raise NotImplementedError

    # -- shared machinery
    @property
    def _n_logits(self) -> int:
        return 0 if self.fixed_log_w is not None else self.K - 1

    def unpack(self, u) -> dict[str, np.ndarray]:
        u = np.asarray(u, dtype=float)
        params = self._unpack_comp(u[self._n_logits :])
        if self.fixed_log_w is None:
            params["w"] = special.softmax(np.append(u[: self._n_logits], 0.0))
        return params

    def pack(self, params) -> np.ndarray:
        comp = self._pack_comp(params)
        if self.fixed_log_w is None:
            log_w = np.log(np.asarray(params["w"], dtype=float))
            return np.concatenate([log_w[:-1] - log_w[-1], comp])
        return comp

    def log_weights(self, params) -> np.ndarray:
        return self.fixed_log_w if self.fixed_log_w is not None else np.log(params["w"])

    def joint_logpdf(self, params) -> np.ndarray:
        """(n, K) log w_k + log f_k(y_i): the brute-force enumeration of z."""
        return self.component_logpdf(params) + self.log_weights(params)

    def pointwise_log_likelihood(self, params) -> np.ndarray:
        return special.logsumexp(self.joint_logpdf(params), axis=1)

    def responsibilities(self, params) -> np.ndarray:
        L = self.joint_logpdf(params)
        return np.exp(L - special.logsumexp(L, axis=1, keepdims=True))

    def log_likelihood(self, params) -> float:
        return float(self.pointwise_log_likelihood(params).sum())

    def log_prior(self, params) -> float:
        lp = self._comp_log_prior(params)
        if self.fixed_log_w is None:
            a = self.alpha
            lp += special.gammaln(a.sum()) - special.gammaln(a).sum()
            lp += float(np.sum((a - 1.0) * np.log(params["w"])))
        return float(lp)

    def log_posterior(self, params) -> float:
        return self.log_likelihood(params) + self.log_prior(params)

    def value_and_grad(self, u) -> tuple[float, np.ndarray]:
        params = self.unpack(u)
        L = self.joint_logpdf(params)
        lse = special.logsumexp(L, axis=1)
        if not np.all(np.isfinite(lse)):
            return -np.inf, np.zeros_like(u)
        R = np.exp(L - lse[:, None])
        value = lse.sum() + self.log_prior(params)
        grads = [self._comp_grad(params, R)]
        if self.fixed_log_w is None:
            w, a = params["w"], self.alpha
            g_w = R.sum(0) - R.shape[0] * w + (a - 1.0) - w * (a - 1.0).sum()
            grads.insert(0, g_w[:-1])
        return float(value), np.concatenate(grads)


class LocationScaleMixture(Mixture):
    """Normal or Student-t components with location ``X @ beta_k`` and scale ``sigma_k``.

    ``X=None`` is a plain location mixture (one coefficient per component, ``mu``);
    otherwise the parameters are ``beta`` (K, p). ``sigma`` may be fixed (a constant)
    or free with a ``HalfNormalPrior`` or flat (``None``) prior.
    """

    def __init__(
        self,
        y,
        K=2,
        *,
        X=None,
        family="normal",
        nu=None,
        weights=None,
        dirichlet_alpha=None,
        loc_prior=None,
        sigma=None,
        sigma_prior=None,
    ):
        super().__init__(K, weights, dirichlet_alpha)
        self.y = np.asarray(y, dtype=float)
        self.plain = X is None
        self.X = np.ones((self.y.size, 1)) if X is None else np.asarray(X, dtype=float)
        self.p = self.X.shape[1]
        if family not in ("normal", "t"):
            raise ValueError(family)
        if family == "t" and nu is None:
            raise ValueError("the Student-t family needs nu")
        self.family, self.nu = family, nu
        self.loc_prior, self.sigma_prior = loc_prior, sigma_prior
        self.fixed_sigma = (
            None if sigma is None else np.broadcast_to(np.asarray(sigma, float), (K,))
        )

    def _unpack_comp(self, v):
        kp = self.K * self.p
        beta = v[:kp].reshape(self.K, self.p)
        sigma = self.fixed_sigma if self.fixed_sigma is not None else np.exp(v[kp : kp + self.K])
        out = {"sigma": np.array(sigma)}
        if self.plain:
            out["mu"] = beta[:, 0].copy()
        else:
            out["beta"] = beta.copy()
        return out

    def _pack_comp(self, params):
        parts = [self._beta(params).ravel()]
        if self.fixed_sigma is None:
            parts.append(np.log(np.asarray(params["sigma"], dtype=float)))
        return np.concatenate(parts)

    def _beta(self, params):
        return (
            np.asarray(params["mu"], float)[:, None]
            if self.plain
            else np.asarray(params["beta"], float)
        )

    def _sigma(self, params):
        return (
            self.fixed_sigma if self.fixed_sigma is not None else np.asarray(params["sigma"], float)
        )

    def _standardized(self, params):
        loc = self.X @ self._beta(params).T  # (n, K)
        return (self.y[:, None] - loc) / self._sigma(params)

    def component_logpdf(self, params):
        u = self._standardized(params)
        if self.family == "normal":
            return stats.norm.logpdf(u) - np.log(self._sigma(params))
        return stats.t.logpdf(u, self.nu) - np.log(self._sigma(params))

    def _comp_log_prior(self, params):
        lp = _prior_logpdf(self.loc_prior, self._beta(params))
        if self.fixed_sigma is None:
            lp += _prior_logpdf(self.sigma_prior, self._sigma(params))
        return lp

    def _comp_grad(self, params, R):
        sigma = self._sigma(params)
        u = self._standardized(params)
        if self.family == "normal":
            score_loc = u / sigma  # d log f / d loc
            score_log_sigma = u**2 - 1.0
        else:
            nu = self.nu
            score_loc = (nu + 1.0) * u / (sigma * (nu + u**2))
            score_log_sigma = (nu + 1.0) * u**2 / (nu + u**2) - 1.0
        beta = self._beta(params)
        g_beta = (R * score_loc).T @ self.X + _prior_dlogpdf(self.loc_prior, beta)  # (K, p)
        parts = [g_beta.ravel()]
        if self.fixed_sigma is None:
            g_ls = (R * score_log_sigma).sum(0) + sigma * _prior_dlogpdf(self.sigma_prior, sigma)
            parts.append(g_ls)
        return np.concatenate(parts)


class PoissonMixture(Mixture):
    """Poisson components with rates ``lam`` (flat prior if ``rate_prior`` is None)."""

    def __init__(self, y, K=2, *, weights=None, dirichlet_alpha=None, rate_prior=None):
        super().__init__(K, weights, dirichlet_alpha)
        self.y = np.asarray(y, dtype=float)
        self.rate_prior = rate_prior

    def _unpack_comp(self, v):
        return {"lam": np.exp(v[: self.K])}

    def _pack_comp(self, params):
        return np.log(np.asarray(params["lam"], dtype=float))

    def component_logpdf(self, params):
        return stats.poisson.logpmf(self.y[:, None], params["lam"])

    def _comp_log_prior(self, params):
        return _prior_logpdf(self.rate_prior, params["lam"])

    def _comp_grad(self, params, R):
        lam = params["lam"]
        return (R * (self.y[:, None] - lam)).sum(0) + lam * _prior_dlogpdf(self.rate_prior, lam)


def lkj_cholesky_cov_2d_logpdf(packed, eta: float, sd_prior: HalfNormalPrior) -> float:
    """Log density of PyMC's ``LKJCholeskyCov(n=2, eta=1, sd_dist=HalfNormal)`` value.

    The value is the packed lower Cholesky factor ``(L00, L10, L11)``. With sd0 = L00,
    sd1 = hypot(L10, L11) and rho = L10 / sd1, the density of (sd0, sd1, rho) is
    HalfNormal(sd0) HalfNormal(sd1) LKJ(rho), and LKJ(eta=1, n=2) is uniform on (-1, 1),
    density 1/2. The map (sd1, rho) -> (L10, L11) = sd1 (rho, sqrt(1 - rho^2)) has Jacobian
    sd1 / sqrt(1 - rho^2), so log p(L) = -log 2 + sum log HalfNormal(sd) + log L11 - 2 log sd1.
    """
    if eta != 1:
        raise NotImplementedError("only eta=1 is written out")
    L00, L10, L11 = np.asarray(packed, dtype=float)
    sd1 = np.hypot(L10, L11)
    return float(
        -np.log(2.0) + sd_prior.logpdf(L00) + sd_prior.logpdf(sd1) + np.log(L11) - 2.0 * np.log(sd1)
    )


def unpack_chol_2d(packed) -> np.ndarray:
    """PyMC's packed order is the row-major lower triangle: (0,0), (1,0), (1,1)."""
    L00, L10, L11 = np.asarray(packed, dtype=float)
    return np.array([[L00, 0.0], [L10, L11]])


class MvNormalLKJMixture(Mixture):
    """2-D MvNormal components, ``mu_k`` (prior ``loc_prior`` or flat) and a per-component
    ``LKJCholeskyCov(n=2, eta=1, sd_dist=HalfNormal(sd_scale))`` packed Cholesky factor
    (parameter ``chol``, shape (K, 3)). Unconstrained: (log L00, L10, log L11).
    ``sd_scale=None``: a flat prior on the covariance (the maximum-likelihood covariance)."""

    def __init__(
        self, Y, K=2, *, weights=None, dirichlet_alpha=None, loc_prior=None, sd_scale=10.0
    ):
        super().__init__(K, weights, dirichlet_alpha)
        self.Y = np.asarray(Y, dtype=float)
        if self.Y.shape[1] != 2:
            raise NotImplementedError("2-D only")
        self.loc_prior = loc_prior
        self.sd_prior = None if sd_scale is None else HalfNormalPrior(sd_scale)

    def _unpack_comp(self, v):
        K = self.K
        mu = v[: 2 * K].reshape(K, 2)
        c = v[2 * K : 5 * K].reshape(K, 3)
        chol = np.column_stack([np.exp(c[:, 0]), c[:, 1], np.exp(c[:, 2])])
        return {"mu": mu.copy(), "chol": chol}

    def _pack_comp(self, params):
        chol = np.asarray(params["chol"], dtype=float)
        c = np.column_stack([np.log(chol[:, 0]), chol[:, 1], np.log(chol[:, 2])])
        return np.concatenate([np.asarray(params["mu"], float).ravel(), c.ravel()])

    def _whiten(self, params, k):
        L00, L10, L11 = params["chol"][k]
        e = self.Y - params["mu"][k]
        v0 = e[:, 0] / L00
        v1 = (e[:, 1] - L10 * v0) / L11
        return v0, v1

    def component_logpdf(self, params):
        out = np.empty((self.Y.shape[0], self.K))
        for k in range(self.K):
            L00, _, L11 = params["chol"][k]
            v0, v1 = self._whiten(params, k)
            out[:, k] = -0.5 * (v0**2 + v1**2) - np.log(L00) - np.log(L11) - LOG_2PI
        return out

    def _comp_log_prior(self, params):
        lp = _prior_logpdf(self.loc_prior, params["mu"])
        for k in range(self.K if self.sd_prior is not None else 0):
            lp += lkj_cholesky_cov_2d_logpdf(params["chol"][k], 1.0, self.sd_prior)
        return lp

    def _comp_grad(self, params, R):
        K = self.K
        g_mu = np.empty((K, 2))
        g_c = np.empty((K, 3))
        s2 = self.sd_prior.sigma**2 if self.sd_prior is not None else np.inf
        for k in range(K):
            L00, L10, L11 = params["chol"][k]
            v0, v1 = self._whiten(params, k)
            # g = L^-T v is the score for mu; d(-1/2 |L^-1 e|^2)/dL = g v^T (lower part).
            g1 = v1 / L11
            g0 = (v0 - L10 * g1) / L00
            r = R[:, k]
            g_mu[k] = [np.sum(r * g0), np.sum(r * g1)]
            dL00 = np.sum(r * (g0 * v0 - 1.0 / L00))
            dL10 = np.sum(r * g1 * v0)
            dL11 = np.sum(r * (g1 * v1 - 1.0 / L11))
            if self.sd_prior is not None:
                # LKJ prior, see lkj_cholesky_cov_2d_logpdf (sd1^2 = L10^2 + L11^2).
                q = L10**2 + L11**2
                dL00 += -L00 / s2
                dL10 += -L10 / s2 - 2.0 * L10 / q
                dL11 += -L11 / s2 + 1.0 / L11 - 2.0 * L11 / q
            g_c[k] = [dL00 * L00, dL10, dL11 * L11]
        g_mu += _prior_dlogpdf(self.loc_prior, params["mu"])
        return np.concatenate([g_mu.ravel(), g_c.ravel()])


# --------------------------------------------------------------------------- maximization


def _fd_hessian(grad: Callable[[np.ndarray], np.ndarray], u: np.ndarray) -> np.ndarray:
    """Central differences of an analytic gradient (error O(h^2) ~ 1e-10 relative)."""
    H = np.empty((u.size, u.size))
    for j in range(u.size):
        h = 1e-5 * max(1.0, abs(u[j]))
        e = np.zeros_like(u)
        e[j] = h
        H[:, j] = (grad(u + e) - grad(u - e)) / (2.0 * h)
    return 0.5 * (H + H.T)


def _newton_polish(model: Mixture, u: np.ndarray, max_steps: int = 30) -> tuple[np.ndarray, float]:
    """Newton steps on the gradient; a step is kept only if it lowers |grad| or raises f."""

    def grad(v):
        return model.value_and_grad(v)[1]

    f, g = model.value_and_grad(u)
    step_size = np.inf
    for _ in range(max_steps):
        H = _fd_hessian(grad, u)
        step = -np.linalg.solve(H, g)
        step_size = float(np.max(np.abs(step)))
        if step_size < 1e-13 * max(1.0, float(np.max(np.abs(u)))):
            break
        t = 1.0
        while t > 1e-6:
            f2, g2 = model.value_and_grad(u + t * step)
            if np.isfinite(f2) and (np.linalg.norm(g2) < np.linalg.norm(g) or f2 > f):
                u, f, g = u + t * step, f2, g2
                break
            t *= 0.5
        else:
            break
    H = _fd_hessian(grad, u)
    if np.any(np.linalg.eigvalsh(H) >= 0):
        raise RuntimeError("oracle optimum is not a strict local maximum (Hessian not < 0)")
    return u, float(np.max(np.abs(np.linalg.solve(H, g))))


def maximize_mixture(model: Mixture, starts: Sequence[dict]) -> MixtureMode:
    """Maximize the marginal log posterior of ``model`` from each start; keep the best."""
    best = None
    lps = []
    for start in starts:
        u0 = model.pack(start)
        res = optimize.minimize(
            lambda u: tuple(-a for a in model.value_and_grad(u)),
            u0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 20000, "maxfun": 40000, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-10},
        )
        f = -res.fun
        lps.append(float(f))
        if best is None or f > best[0]:
            best = (f, res.x)
    u, newton_step = _newton_polish(model, best[1])
    params = model.unpack(u)
    if "w" not in params:
        params["w"] = np.exp(model.fixed_log_w)
    _, g = model.value_and_grad(u)
    return MixtureMode(
        params=params,
        log_posterior=model.log_posterior(params),
        log_likelihood=model.log_likelihood(params),
        max_abs_grad=float(np.max(np.abs(g))),
        newton_step=newton_step,
        all_log_posteriors=lps,
    )


def sort_components(params: dict[str, np.ndarray], key: np.ndarray) -> dict[str, np.ndarray]:
    """Reorder every per-component array (leading axis K) by ``argsort(key)``."""
    order = np.argsort(np.asarray(key))
    K = order.size
    out = {}
    for name, value in params.items():
        value = np.asarray(value)
        out[name] = value[order] if value.ndim >= 1 and value.shape[0] == K else value
    return out


def sklearn_gmm_1d(x, K=2, **kwargs) -> dict[str, np.ndarray]:
    """scikit-learn's EM maximum-likelihood estimate, as {"w", "mu", "sigma"}."""
    from sklearn.mixture import GaussianMixture

    settings = dict(
        covariance_type="full", reg_covar=0.0, tol=1e-12, max_iter=10000, n_init=5, random_state=0
    )
    settings.update(kwargs)
    gm = GaussianMixture(K, **settings).fit(np.asarray(x, dtype=float).reshape(-1, 1))
    return {
        "w": gm.weights_.copy(),
        "mu": gm.means_[:, 0].copy(),
        "sigma": np.sqrt(gm.covariances_[:, 0, 0]),
    }
