"""Closed-form M-steps, recognized from the PyMC graph.

For the models people fit most, the expected complete-data log posterior

    Q(θ) = Σ_i Σ_k r_ik log p(z_i = k, y_i | θ) + log p(θ)

has a known maximizer, a function of a few weighted sums over the data (the sufficient
statistics). This module reads a model's graph, recognizes such structures, and describes for
each latent:

- which free variables have a closed-form update ("claimed") and which the update merely
  reads (their current values enter the formulas);
- the component log densities as a broadcast (n, K) graph (no ``mu[z]`` gathers), from which
  the lean E-step computes responsibilities;
- the sufficient statistics as graphs of the responsibilities and the data;
- the update, statistics → new constrained values → the flat unconstrained vector, through
  each variable's transform.

Recognized structures are one function each in the registries below: `_PRIORS` (a free
variable's prior, keyed on its Op type), `_FORWARD` (a transform, keyed on its type) and
`_COMPONENTS` (an observed variable that depends on the latent, keyed on its Op type). The
latent's own prior (mixture weights) is `_match_weights`. Anything unexpected leaves the
variables involved unclaimed, and the numeric M-step handles them.

Every update is the MAP in `pm.find_MAP`'s convention (constrained space, no Jacobian), so it
includes its prior's contribution; flat priors give the maximum-likelihood update. Where the
joint maximizer over a block has no closed form (a Normal prior on the locations together with
a free scale) the update is exact still: a one-dimensional root search per scale on the
profile, far cheaper than the joint L-BFGS of the numeric M-step.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.distributions.continuous import FlatRV, HalfFlatRV
from pymc.distributions.transforms import Ordered
from pymc.logprob.transforms import LogOddsTransform, LogTransform, SimplexTransform
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import ancestors
from pytensor.scalar.basic import Second
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.random.basic import (
    BernoulliRV,
    BetaRV,
    BinomialRV,
    CategoricalRV,
    DirichletRV,
    ExponentialRV,
    GammaRV,
    HalfNormalRV,
    InvGammaRV,
    MvNormalRV,
    NormalRV,
    PoissonRV,
)
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.subtensor import AdvancedSubtensor
from scipy.optimize import brentq

from pm_em.problem import EMProblem

__all__ = ["ClosedFormPlan", "match_closed_form"]

# Mode for the one-off evaluation of constrained shapes: no backend compile.
_CHECK_MODE = "FAST_COMPILE"


# --------------------------------------------------------------------------- transforms
# Constrained value -> unconstrained value, in numpy, per transform type. A closed-form update
# is computed in the constrained space and written back to the flat vector through these.
_FORWARD: dict[type, Callable[[object, np.ndarray], np.ndarray]] = {}


def _register_forward(cls: type):
    def register(fn):
        _FORWARD[cls] = fn
        return fn

    return register


@_register_forward(type(None))
def _identity(transform, value):
    return value


@_register_forward(LogTransform)
def _log(transform, value):
    return np.log(value)


@_register_forward(LogOddsTransform)
def _logodds(transform, value):
    return np.log(value / (1.0 - value))


@_register_forward(SimplexTransform)
def _simplex(transform, value):
    log_value = np.log(value)
    return log_value[..., :-1] - log_value.mean(axis=-1, keepdims=True)


@_register_forward(Ordered)
def _ordered(transform, value):
    if not transform.ascending:
        value = value[..., ::-1]
    first = np.log(value[..., :1]) if transform.positive else value[..., :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.concatenate([first, np.log(np.diff(value, axis=-1))], axis=-1)


def _forward(transform, value: np.ndarray) -> np.ndarray | None:
    """Map to the unconstrained space; None where the value is outside the transform's range."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = _FORWARD[type(transform)](transform, np.asarray(value, dtype="float64"))
    return out if np.all(np.isfinite(out)) else None


# --------------------------------------------------------------------------- priors
@dataclass(frozen=True)
class Prior:
    """A free variable's prior, recognized: its kind and constant hyperparameters."""

    kind: str
    args: tuple[np.ndarray, ...] = ()


_PRIORS: dict[type, Callable[[tuple[np.ndarray, ...]], Prior | None]] = {
    FlatRV: lambda args: Prior("flat"),
    HalfFlatRV: lambda args: Prior("flat"),
    NormalRV: lambda args: Prior("normal", args),
    HalfNormalRV: lambda args: Prior("halfnormal", args[1:]) if np.all(args[0] == 0) else None,
    InvGammaRV: lambda args: Prior("invgamma", args),
    DirichletRV: lambda args: Prior("dirichlet", args),
    BetaRV: lambda args: Prior("beta", args),
    GammaRV: lambda args: Prior("gamma", args),  # (shape α, scale θ)
    ExponentialRV: lambda args: Prior("gamma", (np.ones_like(args[0]), args[0])),
}


def _prior(rv: Variable, shape: tuple[int, ...]) -> Prior | None:
    """Recognize ``rv``'s prior; None if its Op is not registered or a parameter is random.

    The hyperparameters are broadcast to ``shape``, the variable's (constrained) shape.
    """
    make = _PRIORS.get(type(rv.owner.op))
    if make is None:
        return None
    params = [_constant(p) for p in rv.owner.op.dist_params(rv.owner)]
    if any(p is None for p in params):
        return None
    prior = make(tuple(np.asarray(p, dtype="float64") for p in params))
    if prior is None:
        return None
    try:
        # A Dirichlet's parameter has the variable's shape; every other is elementwise.
        args = tuple(np.broadcast_to(a, shape).copy() for a in prior.args)
    except ValueError:
        return None
    return Prior(prior.kind, args)


# --------------------------------------------------------------------------- graph reading
def _strip_expand(var: Variable) -> Variable:
    """Remove the broadcasts PyMC adds to batch a parameter.

    Leading broadcast axes (``ExpandDims``), and ``second(other, var)``, which broadcasts
    ``var`` against ``other`` (MvNormal's mean against its covariance).
    """
    while var.owner is not None:
        op = var.owner.op
        if isinstance(op, DimShuffle) and op.is_left_expand_dims:
            var = var.owner.inputs[0]
        elif isinstance(op, Elemwise) and isinstance(op.scalar_op, Second):
            var = var.owner.inputs[1]
        else:
            break
    return var


def _constant(var: Variable, _depth: int = 0) -> np.ndarray | None:
    """Return the value of a graph that depends on no variable, else None.

    Evaluates the small constant graphs of hyperparameters (``ExpandDims(5.0)``,
    ``Reciprocal(2.0)``) node by node with each Op's ``perform``: no compilation, and none of
    the graph rewrites `constant_fold` would run (a tenth of a second per call).
    """
    if isinstance(var, Constant):
        return np.asarray(var.data)
    node = var.owner
    if node is None or _depth > 20 or isinstance(node.op, RandomVariable):
        return None
    inputs = [_constant(v, _depth + 1) for v in node.inputs]
    if any(v is None for v in inputs):
        return None
    storage = [[None] for _ in node.outputs]
    try:
        node.op.perform(node, inputs, storage)
    except Exception:  # an Op without a Python implementation: not worth folding
        return None
    return np.asarray(storage[node.outputs.index(var)][0])


@dataclass(frozen=True)
class Role:
    """How one distribution parameter of an observed variable relates to the latent ``z``.

    ``kind`` is ``"indexed"`` (``P[z]``, one value per support value), ``"shared"`` (``P``,
    the same for every component) or ``"const"``. ``rv`` is the free variable ``P``; for a
    constant, ``value`` broadcasts against the (K,) components.
    """

    kind: str
    rv: Variable | None = None
    value: np.ndarray | None = None


def _role(param: Variable, z: Variable, free: set[Variable], n_support: int) -> Role | None:
    param = _strip_expand(param)
    node = param.owner
    if (
        node is not None
        and isinstance(node.op, AdvancedSubtensor)
        and tuple(node.op.idx_list) == (0,)
        and len(node.inputs) == 2
        and node.inputs[1] is z
    ):
        base = _strip_expand(node.inputs[0])
        if base in free:
            return Role("indexed", rv=base)
        value = _constant(base)
        if value is not None and value.ndim >= 1 and value.shape[0] == n_support:
            return Role("const", value=value.astype("float64"))
        return None
    if param in free:
        return Role("shared", rv=param)
    if z in set(ancestors([param])):
        return None
    value = _constant(param)
    if value is not None and value.size == 1:
        return Role("const", value=value.astype("float64").reshape(()))
    return None


# --------------------------------------------------------------------------- blocks
@dataclass
class _Context:
    """What blocks need to know about the model while they are being matched."""

    problem: EMProblem
    free: set[Variable]
    children: dict[Variable, set[Variable]]
    shapes: dict[str, tuple[int, ...]]

    def claimable(self, rv: Variable, owners: set[Variable]) -> bool:
        """``rv`` enters only ``owners``' densities, has a transform we can invert."""
        model = self.problem.model
        transform = model.rvs_to_transforms.get(rv)
        return self.children.get(rv, set()) <= owners and type(transform) in _FORWARD


class _Block:
    """One piece of Q with a closed-form maximizer: a latent's prior or one dependent."""

    claims: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    n_stats: int = 0
    # Whether the block also writes its terms one component at a time (`log_density_k`,
    # `stats_k`): K graphs over vectors of length n fuse and vectorize better than one graph
    # over (n, K), which the lean E-step then uses.
    unrolled: bool = False

    def log_density(self, values: dict[str, Variable]) -> Variable:
        """Return this block's term of log p(z_i = k, · | θ), broadcastable to (n, K)."""
        raise NotImplementedError

    def stats(self, resp: Variable, values: dict[str, Variable]) -> list[Variable]:
        """Sufficient statistics (small arrays) from the (n, K) responsibilities."""
        return []

    def log_density_k(self, values: dict[str, Variable], k: int) -> Variable:
        """Return the term of component ``k`` alone, broadcastable to (n,)."""
        raise NotImplementedError

    def stats_k(self, resp_k: Variable, values: dict[str, Variable], k: int) -> list[Variable]:
        """Return component ``k``'s entry of each statistic, from its responsibilities (n,)."""
        return []

    def update(
        self, stats: Sequence[np.ndarray], current: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray] | None:
        """Return new constrained values of ``claims``; None when no closed form applies."""
        return {}


class _FixedWeights(_Block):
    unrolled = True

    def __init__(self, p: np.ndarray):
        self.p = p

    def log_density(self, values):
        k = pt.arange(self.p.shape[-1])
        return pm.logp(pm.Categorical.dist(p=pt.as_tensor(self.p)), k)

    def log_density_k(self, values, k):
        return pm.logp(pm.Categorical.dist(p=pt.as_tensor(self.p)), pt.as_tensor(k))


class _DirichletWeights(_Block):
    """Mixture weights w ~ Dirichlet(a): w_k = (N_k + a_k - 1) / (N + Σa - K)."""

    n_stats = 1

    def __init__(self, name: str, alpha: np.ndarray):
        self.name = name
        self.alpha = alpha
        self.claims = (name,)

    unrolled = True

    def log_density(self, values):
        w = values[self.name]
        return pm.logp(pm.Categorical.dist(p=w), pt.arange(self.alpha.shape[-1]))

    def stats(self, resp, values):
        return [resp.sum(axis=0)]

    def log_density_k(self, values, k):
        return pm.logp(pm.Categorical.dist(p=values[self.name]), pt.as_tensor(k))

    def stats_k(self, resp_k, values, k):
        return [resp_k.sum()]

    def update(self, stats, current):
        (counts,) = stats
        numerator = counts + self.alpha - 1.0
        # A count below 1 - a_k puts the mode on the boundary of the simplex, where the
        # unconstrained parameter is infinite: no interior closed form.
        if not np.all(numerator > 0):
            return None
        return {self.name: numerator / numerator.sum()}


def _match_weights(ctx: _Context, z: Variable) -> _Block | None:
    """Match the latent's prior: Categorical with constant p, or p a free Dirichlet."""
    if not isinstance(z.owner.op, CategoricalRV):
        return None
    (p,) = z.owner.op.dist_params(z.owner)
    p = _strip_expand(p)
    if p in ctx.free:
        prior = _prior(p, ctx.shapes[p.name])
        if prior is None or prior.kind != "dirichlet" or not ctx.claimable(p, {z}):
            return None
        if ctx.shapes[p.name] != prior.args[0].shape:
            return None
        return _DirichletWeights(p.name, prior.args[0])
    value = _constant(p)
    if value is None or value.ndim != 1:
        return None
    return _FixedWeights(value.astype("float64"))


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


class _NormalComponents(_Block):
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


def _match_normal(ctx: _Context, y: Variable, z: Variable, n_support: int) -> _Block | None:
    if y.type.ndim != 1:
        return None
    mu_param, sigma_param = y.owner.op.dist_params(y.owner)
    mu = _role(mu_param, z, ctx.free, n_support)
    sigma = _role(sigma_param, z, ctx.free, n_support)
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
        mu_prior = _prior(mu.rv, ctx.shapes[mu.rv.name])
        if mu_prior is not None and mu_prior.kind in _LOCATION_PRIORS and ctx.claimable(mu.rv, {y}):
            claims.append(mu.rv.name)
    if sigma.kind in ("indexed", "shared"):
        sigma_prior = _prior(sigma.rv, ctx.shapes[sigma.rv.name])
        if (
            sigma_prior is not None
            and sigma_prior.kind in _SCALE_PRIORS
            and ctx.claimable(sigma.rv, {y})
        ):
            claims.append(sigma.rv.name)
    return _NormalComponents(
        _data(ctx, y), mu, sigma, mu_prior, sigma_prior, tuple(dict.fromkeys(claims))
    )


def _data(ctx: _Context, y: Variable, dtype: str | None = "float64") -> Variable:
    """Return the observed values of ``y`` as a graph (constant or shared), cast to ``dtype``."""
    value = ctx.problem.model.rvs_to_values[y]
    if not isinstance(value, Constant | TensorSharedVariable):
        raise _NoMatch
    value = pt.as_tensor(value)
    return value.astype(dtype) if dtype else value


class _MvNormalComponents(_Block):
    """Observed rows y_i ~ MvNormal(mu[z_i], cov[z_i]), d-dimensional.

    Statistics per component k, centred at the current mean c_k: N_k = Σ r_ik,
    A_k = Σ r_ik (y_i - c_k) (d,), B_k = Σ r_ik (y_i - c_k)(y_i - c_k)ᵀ (d, d). With flat
    priors the update is the weighted mean m_k = c_k + A_k / N_k and the weighted covariance
    B_k / N_k - (A_k / N_k)(A_k / N_k)ᵀ (symmetric: a Flat covariance enters the density
    through its lower triangle only, so the symmetric matrix is one of its maximizers).
    """

    n_stats = 3

    def __init__(self, data: Variable, mu: Role, cov: Role, claims):
        self.data = data
        self.mu, self.cov = mu, cov
        self.claims = claims
        self.reads = tuple(r.rv.name for r in (mu, cov) if r.rv is not None)

    def _param(self, role: Role, values) -> Variable:
        return pt.as_tensor(role.value) if role.rv is None else values[role.rv.name]

    def log_density(self, values):
        mu = self._param(self.mu, values)  # (K, d)
        cov = self._param(self.cov, values)  # (K, d, d)
        chol = pt.linalg.cholesky(cov, lower=True, on_error="nan")
        # Inverse Cholesky factors of the K covariances, then only elementwise work on data.
        eye = pt.eye(cov.shape[-1])
        inv_chol = pt.linalg.solve_triangular(chol, pt.broadcast_to(eye, cov.shape), lower=True)
        diff = self.data[:, None, :] - mu[None, :, :]  # (n, K, d)
        white = (inv_chol[None, :, :, :] * diff[:, :, None, :]).sum(axis=-1)  # (n, K, d)
        log_det = pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)  # (K,)
        d = pt.cast(cov.shape[-1], "float64")
        log_p = -0.5 * (white**2).sum(axis=-1) - log_det - 0.5 * d * np.log(2 * np.pi)
        # A covariance that is not positive definite has no density (PyMC's check, as -inf).
        ok = ~pt.any(pt.isnan(chol), axis=(-2, -1))
        return pt.switch(ok[None, :], log_p, -np.inf)

    def stats(self, resp, values):
        centre = self._param(self.mu, values)
        diff = self.data[:, None, :] - centre[None, :, :]  # (n, K, d)
        weighted = resp[:, :, None] * diff
        scatter = pt.einsum("nki,nkj->kij", weighted, diff)
        return [resp.sum(axis=0), weighted.sum(axis=0), scatter]

    def update(self, stats, current):
        n, a, b = stats
        c = np.broadcast_to(self._value(self.mu, current), a.shape).astype("float64")
        if np.any(n <= 0):
            return None
        shift = a / n[:, None]  # (K, d)
        out = {}
        mu_name = self.mu.rv.name if self.mu.rv is not None else None
        cov_name = self.cov.rv.name if self.cov.rv is not None else None
        m = c + shift if mu_name in self.claims else c
        if mu_name in self.claims:
            out[mu_name] = m
        if cov_name in self.claims:
            delta = m - c
            cov = (
                b / n[:, None, None]
                - np.einsum("ki,kj->kij", shift, delta)
                - np.einsum("ki,kj->kij", delta, shift)
                + np.einsum("ki,kj->kij", delta, delta)
            )
            cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))
            if not np.all(np.linalg.eigvalsh(cov) > 0):
                return None
            out[cov_name] = cov
        return out

    @staticmethod
    def _value(role: Role, current):
        return role.value if role.rv is None else current[role.rv.name]


def _match_mvnormal(ctx: _Context, y: Variable, z: Variable, n_support: int) -> _Block | None:
    if y.type.ndim != 2:
        return None
    mu_param, cov_param = y.owner.op.dist_params(y.owner)
    mu = _role(mu_param, z, ctx.free, n_support)
    cov = _role(cov_param, z, ctx.free, n_support)
    if mu is None or cov is None or "shared" in (mu.kind, cov.kind):
        return None
    d = y.type.shape[-1]
    if d is None:
        return None
    expected = {id(mu): (n_support, d), id(cov): (n_support, d, d)}
    for role in (mu, cov):
        shape = ctx.shapes[role.rv.name] if role.rv is not None else role.value.shape
        if role.kind == "indexed" and tuple(shape) != expected[id(role)]:
            return None
        if role.kind == "const" and role.value.ndim and role.value.shape[0] != n_support:
            return None
    claims = []
    for role in (mu, cov):
        if role.rv is None:
            continue
        prior = _prior(role.rv, ctx.shapes[role.rv.name])
        if prior is not None and prior.kind == "flat" and ctx.claimable(role.rv, {y}):
            claims.append(role.rv.name)
    return _MvNormalComponents(_data(ctx, y), mu, cov, tuple(claims))


class _CountComponents(_Block):
    """One parameter per component with a conjugate update from two weighted sums.

    Poisson rate λ (Gamma or flat prior): Q_k = S_k log λ - N_k λ + (α - 1) log λ - λ / θ,
    so λ = (S_k + α - 1) / (N_k + 1/θ). Bernoulli/Binomial probability p (Beta or flat
    prior): Q_k = S_k log p + (T_k - S_k) log(1 - p) + (a - 1) log p + (b - 1) log(1 - p),
    so p = (S_k + a - 1) / (T_k + a + b - 2), with S_k = Σ r_ik y_i, T_k = Σ r_ik n_i (n_i the
    trials; N_k = Σ r_ik for the Poisson).
    """

    n_stats = 2

    def __init__(self, kind, data, param: Role, prior: Prior | None, trials, claims):
        self.kind = kind
        self.data, self.param, self.prior = data, param, prior
        self.trials = trials  # Binomial n (constant, broadcastable to the data), else None
        self.claims = claims
        self.reads = (param.rv.name,) if param.rv is not None else ()

    def log_density(self, values):
        theta = pt.as_tensor(self.param.value) if self.param.rv is None else values[self.reads[0]]
        y = self.data[:, None]
        if self.kind == "poisson":
            dist = pm.Poisson.dist(mu=theta)
        elif self.trials is None:
            dist = pm.Bernoulli.dist(p=theta)
        else:
            dist = pm.Binomial.dist(n=pt.as_tensor(self.trials)[..., None], p=theta)
        return pm.logp(dist, y)

    def stats(self, resp, values):
        y = self.data.astype("float64")[:, None]
        if self.kind == "poisson":
            total = resp.sum(axis=0)
        elif self.trials is None:
            total = resp.sum(axis=0)
        else:
            trials = pt.as_tensor(self.trials).astype("float64")
            total = (resp * pt.broadcast_to(trials, self.data.shape)[:, None]).sum(axis=0)
        return [(resp * y).sum(axis=0), total]

    def update(self, stats, current):
        s, t = stats
        kind, args = (self.prior.kind, self.prior.args) if self.prior else ("flat", ())
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.kind == "poisson":
                alpha, scale = args if kind == "gamma" else (1.0, np.inf)
                value = (s + alpha - 1.0) / (t + 1.0 / scale)
            else:
                a, b = args if kind == "beta" else (1.0, 1.0)
                value = (s + a - 1.0) / (t + a + b - 2.0)
        upper = np.inf if self.kind == "poisson" else 1.0
        if not np.all((value > 0) & (value < upper)):
            return None  # a mode on the boundary: no interior closed form
        name = self.reads[0]
        return {name: value.reshape(current[name].shape)}


def _match_count(ctx, y, z, n_support, kind, param, trials) -> _Block | None:
    if y.type.ndim != 1:
        return None
    role = _role(param, z, ctx.free, n_support)
    if role is None or role.kind == "shared":
        return None
    if role.kind == "indexed" and ctx.shapes[role.rv.name] != (n_support,):
        return None
    claims, prior = (), None
    if role.rv is not None:
        prior = _prior(role.rv, ctx.shapes[role.rv.name])
        allowed = ("flat", "gamma") if kind == "poisson" else ("flat", "beta")
        if prior is not None and prior.kind in allowed and ctx.claimable(role.rv, {y}):
            claims = (role.rv.name,)
    return _CountComponents(kind, _data(ctx, y, dtype=None), role, prior, trials, claims)


def _match_poisson(ctx: _Context, y: Variable, z: Variable, n_support: int) -> _Block | None:
    (rate,) = y.owner.op.dist_params(y.owner)
    return _match_count(ctx, y, z, n_support, "poisson", rate, None)


def _match_binomial(ctx: _Context, y: Variable, z: Variable, n_support: int) -> _Block | None:
    params = y.owner.op.dist_params(y.owner)
    if isinstance(y.owner.op, BernoulliRV):
        return _match_count(ctx, y, z, n_support, "binomial", params[0], None)
    trials = _constant(params[0])
    if trials is None or trials.ndim > 1:
        return None
    return _match_count(ctx, y, z, n_support, "binomial", params[1], trials)


class _CategoricalComponents(_Block):
    """Observed y_i ~ Categorical(p[z_i]) with p (K, C) ~ Dirichlet(a) per component.

    S_kc = Σ_i r_ik [y_i = c]; p_kc = (S_kc + a_kc - 1) / Σ_c (S_kc + a_kc - 1).
    """

    n_stats = 1

    def __init__(self, data, name: str, alpha: np.ndarray):
        self.data, self.name, self.alpha = data, name, alpha
        self.claims = self.reads = (name,)

    def log_density(self, values):
        p = values[self.name]  # (K, C)
        return pm.logp(pm.Categorical.dist(p=p[None, :, :]), self.data[:, None])

    def stats(self, resp, values):
        n_categories = self.alpha.shape[-1]
        onehot = pt.eq(self.data[:, None], pt.arange(n_categories)[None, :]).astype("float64")
        return [pt.dot(resp.T, onehot)]  # (K, C)

    def update(self, stats, current):
        (counts,) = stats
        numerator = counts + self.alpha - 1.0
        if not np.all(numerator > 0):
            return None
        return {self.name: numerator / numerator.sum(axis=-1, keepdims=True)}


def _match_categorical(ctx: _Context, y: Variable, z: Variable, n_support: int) -> _Block | None:
    if y.type.ndim != 1:
        return None
    (p,) = y.owner.op.dist_params(y.owner)
    role = _role(p, z, ctx.free, n_support)
    if role is None or role.kind != "indexed" or len(ctx.shapes[role.rv.name]) != 2:
        return None
    prior = _prior(role.rv, ctx.shapes[role.rv.name])
    if prior is None or prior.kind != "dirichlet" or not ctx.claimable(role.rv, {y}):
        return None
    return _CategoricalComponents(_data(ctx, y, dtype=None), role.rv.name, prior.args[0])


class _NoMatch(Exception):
    """Raised inside the matchers when a structure is not the expected one."""


# Observed variables that depend on a latent, keyed on their Op type.
_COMPONENTS: dict[type, Callable[[_Context, Variable, Variable, int], _Block | None]] = {
    NormalRV: _match_normal,
    MvNormalRV: _match_mvnormal,
    PoissonRV: _match_poisson,
    BernoulliRV: _match_binomial,
    BinomialRV: _match_binomial,
    CategoricalRV: _match_categorical,
}


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _ParamSlot:
    name: str
    index: slice
    value_shape: tuple[int, ...]
    transform: object


@dataclass
class _LatentPlan:
    latent_index: int
    weights: _Block | None
    components: list[_Block | None]

    @property
    def blocks(self) -> list[_Block]:
        return [b for b in [self.weights, *self.components] if b is not None]

    @property
    def complete(self) -> bool:
        """Whether every term of this latent's joint density was recognized."""
        return self.weights is not None and all(b is not None for b in self.components)


@dataclass
class ClosedFormPlan:
    """The closed-form part of a model's M-step.

    Attributes
    ----------
    problem : EMProblem
    claimed : tuple of str
        Free variables updated in closed form.
    unclaimed : tuple of str
        Free variables left to the numeric M-step.
    complete : bool
        Every parameter is claimed and every latent's joint density was recognized: the
        lean E-step (statistics only, no responsibilities) suffices.
    """

    problem: EMProblem
    latents: list[_LatentPlan]
    slots: dict[str, _ParamSlot]
    claimed: tuple[str, ...]
    unclaimed: tuple[str, ...]
    reads: tuple[str, ...] = field(default=())

    @property
    def complete(self) -> bool:
        """Whether the closed form covers every parameter and latent."""
        return (
            not self.unclaimed
            and len(self.latents) == len(self.problem.latents)
            and all(lp.complete for lp in self.latents)
        )

    def log_joint(self, latent_index: int) -> Variable:
        """Return the latent's joint log density, (n, K), from broadcasts, not gathers."""
        (lp,) = [lp for lp in self.latents if lp.latent_index == latent_index]
        values = self.problem.constrained
        terms = [b.log_density(values) for b in lp.blocks]
        return pt.add(*(pt.as_tensor(t).astype("float64") for t in terms))

    def unrolled_terms(self, latent_index: int) -> tuple[Variable, list[Variable]] | None:
        """Return the log marginal (n,) and the statistics, computed component by component.

        None unless every block of the latent writes its terms one component at a time.
        The statistics are in the order of `stat_graphs` (without the values read).
        """
        matches = [lp for lp in self.latents if lp.latent_index == latent_index]
        if not matches or not all(b.unrolled for b in matches[0].blocks):
            return None
        (lp,) = matches
        values = self.problem.constrained
        n_support = self.problem.latents[latent_index].support.size
        logs = [
            pt.add(*(pt.as_tensor(b.log_density_k(values, k)).astype("float64") for b in lp.blocks))
            for k in range(n_support)
        ]  # K graphs of shape (n,)
        top = logs[0]
        for log_k in logs[1:]:
            top = pt.maximum(top, log_k)
        top = pt.switch(pt.isinf(top), 0.0, top)  # no possible value: lse = log 0 = -inf
        lse = top + pt.log(pt.add(*(pt.exp(log_k - top) for log_k in logs)))
        safe = pt.switch(pt.isinf(lse), 0.0, lse)
        resps = [pt.exp(log_k - safe) for log_k in logs]
        stats = []
        for block in lp.blocks:
            per_k = [block.stats_k(resps[k], values, k) for k in range(n_support)]
            stats.extend(
                pt.stack([per_k[k][i] for k in range(n_support)]) for i in range(block.n_stats)
            )
        return lse, stats

    def stat_graphs(
        self, resps: Sequence[Variable], unrolled: dict[int, list[Variable]] | None = None
    ) -> list[Variable]:
        """Statistics of every block, then the current values of every variable read.

        ``resps`` holds the (n, K) responsibilities of every latent of the problem;
        ``unrolled`` the statistics already computed by `unrolled_terms`, per latent index.
        """
        values = self.problem.constrained
        unrolled = unrolled or {}
        out = []
        for lp in self.latents:
            if lp.latent_index in unrolled:
                out.extend(unrolled[lp.latent_index])
                continue
            for block in lp.blocks:
                out.extend(block.stats(resps[lp.latent_index], values))
        out.extend(pt.as_tensor(values[name]).astype("float64") for name in self.reads)
        return out

    def update(self, x: np.ndarray, stats: Sequence[np.ndarray]) -> np.ndarray | None:
        """Return the flat vector with claimed variables updated; None if a form fails."""
        stats = list(stats)
        current = dict(zip(self.reads, stats[len(stats) - len(self.reads) :], strict=True))
        new_values: dict[str, np.ndarray] = {}
        i = 0
        for lp in self.latents:
            for block in lp.blocks:
                block_stats = stats[i : i + block.n_stats]
                i += block.n_stats
                if not block.claims:
                    continue
                # Conditional maximization: later blocks see earlier blocks' new values.
                result = block.update(block_stats, {**current, **new_values})
                if result is None:
                    return None
                new_values.update(result)
        x_new = np.array(x, dtype="float64", copy=True)
        for name, value in new_values.items():
            slot = self.slots[name]
            u = _forward(slot.transform, value)
            if u is None or u.size != slot.index.stop - slot.index.start:
                return None
            x_new[slot.index] = u.ravel()
        return x_new


def _children(model: pm.Model, free: list[Variable]) -> dict[Variable, set[Variable]]:
    """For each free variable: the model variables and potentials whose density it enters."""
    basic = set(model.basic_RVs)
    out: dict[Variable, set[Variable]] = {rv: set() for rv in free}
    for var in [*model.basic_RVs, *model.potentials]:
        inputs = var.owner.inputs if var in basic else [var]
        for parent in ancestors(inputs, blockers=basic - {var}):
            if parent in out and parent is not var:
                out[parent].add(var)
    return out


def _constrained_shapes(problem: EMProblem) -> dict[str, tuple[int, ...]]:
    model = problem.model
    static = {name: model[name].type.shape for name in problem.constrained}
    if all(None not in shape for shape in static.values()):
        return static  # the usual case: no need to evaluate anything
    names = list(problem.constrained)
    fn = pytensor.function(
        [problem.x],
        [problem.constrained[k] for k in names],
        mode=_CHECK_MODE,
        on_unused_input="ignore",
    )
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    return {k: np.shape(v) for k, v in zip(names, fn(start), strict=True)}


def match_closed_form(problem: EMProblem) -> ClosedFormPlan | None:
    """Recognize the closed-form updates of ``problem``'s M-step.

    Parameters
    ----------
    problem : EMProblem

    Returns
    -------
    ClosedFormPlan or None
        None when no parameter has a closed-form update.
    """
    if getattr(problem, "missing", ()):
        # Missing entries are integrated out of the likelihood (pm_em.missing); the closed
        # forms here assume fully observed data.
        return None
    model = problem.model
    if not problem.latents or not problem.params:
        return None
    free = [model[p.name] for p in problem.params]
    ctx = _Context(
        problem=problem,
        free=set(free),
        children=_children(model, free),
        shapes=_constrained_shapes(problem),
    )
    latents = []
    for j, lat in enumerate(problem.latents):
        z = model[lat.name]
        if len(lat.shape) != 1 or not isinstance(z.owner.op, CategoricalRV):
            continue
        n_support = lat.support.size
        if not np.array_equal(lat.support, np.arange(n_support)):
            continue
        weights = _match_weights(ctx, z)
        components = []
        for dep_name in lat.dependents:
            dep = model[dep_name]
            match = _COMPONENTS.get(type(dep.owner.op)) if dep in model.observed_RVs else None
            block = None
            if match is not None and tuple(dep.type.shape[:1]) in ((lat.shape[0],), (None,)):
                try:
                    block = match(ctx, dep, z, n_support)
                except _NoMatch:
                    block = None
            components.append(block)
        latents.append(_LatentPlan(j, weights, components))
    # A variable is claimed by exactly one block.
    owners: dict[str, int] = {}
    for lp in latents:
        for block in lp.blocks:
            for name in block.claims:
                owners[name] = owners.get(name, 0) + 1
    claimed = tuple(p.name for p in problem.params if owners.get(p.name) == 1)
    if not claimed:
        return None
    for lp in latents:
        for block in lp.blocks:
            if any(owners[name] != 1 for name in block.claims):
                return None
    slots, i = {}, 0
    for p in problem.params:
        slots[p.name] = _ParamSlot(
            p.name, slice(i, i + p.size), p.shape, model.rvs_to_transforms.get(model[p.name])
        )
        i += p.size
    reads = tuple(
        dict.fromkeys(name for lp in latents for block in lp.blocks for name in block.reads)
    )
    unclaimed = tuple(p.name for p in problem.params if p.name not in claimed)
    return ClosedFormPlan(
        problem=problem,
        latents=latents,
        slots=slots,
        claimed=claimed,
        unclaimed=unclaimed,
        reads=reads,
    )
