"""MvNormal components whose covariances are graphs of free variables (e.g. LKJ Cholesky).

Rows y_i ~ MvNormal(mu[z_i], Σ_{z_i}) where each Σ_k is a function of free variables of
its own (``pm.LKJCholeskyCov`` factors, standard deviations and a correlation, ...), with
any priors, and mu flat or Normal. The M-step is an ECM step on the weighted statistics of
`pm_em.closed_form.mvnormal` (N_k, A_k, B_k, centred at the current means c_k):

1. the means given the current covariances, in closed form: with mu_k ~ Normal(m0_k, τ_k)
   elementwise, (N_k Σ_k⁻¹ + diag(τ_k⁻²)) mu_k = Σ_k⁻¹ (N_k c_k + A_k) + m0_k / τ_k²
   (a flat prior: the weighted mean c_k + A_k / N_k);
2. the covariances given the new means: the scatter S_k = Σ_i r_ik (y_i - mu_k)(y_i - mu_k)ᵀ
   follows from the statistics, and the covariance variables maximize
   -N_k/2 log|Σ_k| - tr(Σ_k⁻¹ S_k)/2 + their log prior, which involves no data: L-BFGS on a
   compiled function of size K · d², one group of components at a time (components that
   share a covariance variable form one group; separate LKJ factors: one per component).

Each conditional step maximizes Q over its block given the others, so Q, and the log
posterior, never decrease. The E-step (`MvNormalComponents.log_density`) evaluates the
K covariances from the same graphs: one Cholesky factor per component, then elementwise
work on the rows.
"""

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors
from scipy.optimize import minimize

from pm_em.closed_form.block import Context
from pm_em.closed_form.components import Components
from pm_em.closed_form.graph import Role, data_graph
from pm_em.closed_form.mvnormal import MvNormalComponents
from pm_em.closed_form.priors import Prior, read_prior
from pm_em.compiling import LazyFunction, compile_with_data, stats_mode

__all__ = ["match_mvnormal_cov"]


class _CovarianceComponents(MvNormalComponents):
    """MvNormal components with covariances Σ_k(θ_k): the ECM step of the module docstring."""

    uses_x = True

    def __init__(self, ctx: Context, data, mu: Role, mu_prior: Prior | None, covs, groups, d: int):
        self.data, self.mu, self.mu_prior, self.d = data, mu, mu_prior, d
        self.covs = covs  # K graphs (d, d) of the model's random variables
        self.groups = groups  # [(component indices, covariance variables)]
        self.problem = ctx.problem
        cov_names = [rv.name for _, rvs in groups for rv in rvs]
        mu_claim = (mu.rv.name,) if mu.rv is not None and mu_prior is not None else ()
        self.claims = (*mu_claim, *cov_names)
        self.reads = (mu.rv.name,) if mu.rv is not None else ()
        offsets = np.cumsum([0, *(p.size for p in self.problem.params)])
        where = {p.name: i for i, p in enumerate(self.problem.params)}
        self.slots = {
            rv.name: np.arange(offsets[where[rv.name]], offsets[where[rv.name] + 1])
            for _, rvs in groups
            for rv in rvs
        }
        self.objective = LazyFunction(self._compile)

    def _covariances(self, values) -> Variable:
        replace = {rv: values[rv.name] for _, rvs in self.groups for rv in rvs}
        return pt.stack(graph_replace(self.covs, replace, strict=False))  # (K, d, d)

    def _compile(self):
        """Compile ``(x, N, S) -> (value, gradient, Σ, constrained values of the variables)``."""
        problem = self.problem
        values = problem.constrained
        cov = self._covariances(values)
        n = pt.vector("n_k", dtype="float64")
        scatter = pt.tensor3("scatter_k", dtype="float64")
        chol = pt.linalg.cholesky(cov, lower=True, on_error="nan")
        log_det = 2.0 * pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)  # (K,)
        eye = pt.broadcast_to(pt.eye(cov.shape[-1]), cov.shape)
        inv_chol = pt.linalg.solve_triangular(chol, eye, lower=True)
        trace = (pt.matmul(inv_chol, scatter) * inv_chol).sum(axis=(-2, -1))  # tr(Σ⁻¹ S)
        names = [rv.name for _, rvs in self.groups for rv in rvs]
        value = (-0.5 * (n * log_det + trace)).sum() + pt.add(
            *(problem.prior_terms[name] for name in names)
        )
        outputs = [value, cov, *(pt.as_tensor(values[name]) for name in names)]
        return compile_with_data(
            problem.model,
            [problem.x, n, scatter],
            outputs,
            name="covariance step",
            grad_of=0,
            disconnected_inputs="ignore",
            mode=stats_mode(),
        )

    def _means(self, n, a, c, covs) -> np.ndarray:
        """Return the means maximizing Q given the covariances (the module docstring's step 1)."""
        if self.mu_prior is None or self.mu_prior.kind == "flat":
            return c + a / n[:, None]
        m0, tau = (np.broadcast_to(v, c.shape) for v in self.mu_prior.args)
        precision = np.linalg.inv(covs)  # (K, d, d)
        lhs = n[:, None, None] * precision + np.einsum("ki,ij->kij", tau**-2.0, np.eye(c.shape[1]))
        rhs = np.einsum("kij,kj->ki", precision, n[:, None] * c + a) + m0 / tau**2
        return np.linalg.solve(lhs, rhs[..., None])[..., 0]

    def _covariance_step(self, x, n, scatter) -> np.ndarray:
        """L-BFGS over each group's coordinates of x (step 2); never a lower value."""
        x = np.array(x, dtype="float64", copy=True)
        for _, rvs in self.groups:
            idx = np.concatenate([self.slots[rv.name] for rv in rvs])

            def neg(u, idx=idx):
                trial = x.copy()
                trial[idx] = u
                value, grad, *_ = self.objective(trial, n, scatter)
                if not np.isfinite(value):
                    return np.inf, np.zeros_like(u)
                return -float(value), -np.asarray(grad)[idx]

            start = x[idx].copy()
            f0, _ = neg(start)
            res = minimize(
                neg, start, jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-10}
            )
            if np.all(np.isfinite(res.x)) and res.fun <= f0:
                x[idx] = res.x
        return x

    def update(self, stats, current, x=None):
        """Return the new means and covariance variables (constrained); None if none apply."""
        n, a, b = stats
        if np.any(n <= 0) or x is None:
            return None
        c = np.broadcast_to(self._value(self.mu, current), a.shape).astype("float64")
        _, _, covs, *_ = self.objective(x, n, b)
        if not np.all(np.isfinite(covs)):
            return None
        m = self._means(n, a, c, covs) if self.mu_prior is not None else c
        delta = m - c
        scatter = (
            b
            - np.einsum("ki,kj->kij", a, delta)
            - np.einsum("ki,kj->kij", delta, a)
            + n[:, None, None] * np.einsum("ki,kj->kij", delta, delta)
        )
        scatter = 0.5 * (scatter + np.swapaxes(scatter, -1, -2))
        x_new = self._covariance_step(x, n, scatter)
        _, _, _, *constrained = self.objective(x_new, n, scatter)
        names = [rv.name for _, rvs in self.groups for rv in rvs]
        out = dict(zip(names, (np.asarray(v) for v in constrained), strict=True))
        if self.mu_prior is not None and self.mu.rv is not None:
            out[self.mu.rv.name] = m
        if not all(np.all(np.isfinite(v)) for v in out.values()):
            return None
        return out


def _groups(covs, ctx: Context, y) -> list | None:
    """Components that share covariance variables, with those variables; None if unusable."""
    owned = []
    for cov in covs:
        rvs = {v for v in ancestors([cov], blockers=ctx.free) if v in ctx.free}
        if not rvs or not all(ctx.claimable(rv, {y}) for rv in rvs):
            return None
        for rv in rvs:  # a prior whose parameters are free variables is not the step's
            if {v for v in ancestors(rv.owner.inputs, blockers=ctx.free) if v in ctx.free}:
                return None
        owned.append(rvs)
    groups: list[tuple[list[int], set]] = []
    for k, rvs in enumerate(owned):
        joined = [g for g in groups if g[1] & rvs]
        merged = ([k], set(rvs))
        for g in joined:
            merged = (sorted(g[0] + merged[0]), g[1] | merged[1])
            groups.remove(g)
        groups.append(merged)
    order = {rv: i for i, rv in enumerate(ctx.problem.model.free_RVs)}
    return [(ks, tuple(sorted(rvs, key=order.__getitem__))) for ks, rvs in groups]


def match_mvnormal_cov(ctx: Context, comps: Components):
    """Match MvNormal components whose covariances are graphs of free variables.

    Returns None for any other structure (a covariance that is a free variable itself is
    `pm_em.closed_form.mvnormal`'s; shared means, a covariance variable that also enters
    the means or another likelihood, a prior with random parameters: not this block's).
    """
    y, n_support = comps.y, comps.n_support
    if y.type.ndim != comps.element_ndim + 1 or comps.component is None:  # a row per element
        return None
    mu = comps.roles[0]
    if mu is None or mu.kind == "shared":
        return None
    data = data_graph(ctx.problem.model, y)
    d = data.type.shape[-1]
    if d is None:
        return None
    covs = []
    for k in range(n_support):
        cov = comps.component(k)[1]
        if cov.type.ndim < 2 or not all(s == 1 for s in cov.type.shape[:-2]):
            return None
        covs.append(cov.reshape((d, d)))
    groups = _groups(covs, ctx, y)
    if groups is None:
        return None
    mu_prior = None
    if mu.kind == "indexed":
        if tuple(ctx.shapes[mu.rv.name]) != (n_support, d) or mu.rv in {
            rv for _, rvs in groups for rv in rvs
        }:
            return None
        prior = read_prior(mu.rv, ctx.shapes[mu.rv.name])
        if prior is not None and prior.kind in ("flat", "normal") and ctx.claimable(mu.rv, {y}):
            mu_prior = prior
    elif mu.value.ndim and mu.value.shape[0] != n_support:
        return None
    return _CovarianceComponents(ctx, data, mu, mu_prior, covs, groups, int(d))
