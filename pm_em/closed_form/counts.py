"""Count components: Poisson rates, Bernoulli and Binomial probabilities, with conjugate priors."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.tensor.random.basic import BernoulliRV

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.components import Components
from pm_em.closed_form.graph import Role, data_graph
from pm_em.closed_form.priors import Prior, read_prior

__all__ = ["match_binomial", "match_poisson"]


class _CountComponents(Block):
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


def _match_count(ctx, comps: Components, kind, role: Role | None, trials) -> Block | None:
    y, n_support = comps.y, comps.n_support
    if y.type.ndim != comps.element_ndim:  # one entry per latent element
        return None
    if role is None or role.kind == "shared":
        return None
    if role.kind == "indexed" and ctx.shapes[role.rv.name] != (n_support,):
        return None
    claims, prior = (), None
    if role.rv is not None:
        prior = read_prior(role.rv, ctx.shapes[role.rv.name])
        allowed = ("flat", "gamma") if kind == "poisson" else ("flat", "beta")
        if prior is not None and prior.kind in allowed and ctx.claimable(role.rv, {y}):
            claims = (role.rv.name,)
    return _CountComponents(
        kind, data_graph(ctx.problem.model, y, dtype=None), role, prior, trials, claims
    )


def match_poisson(ctx: Context, comps: Components) -> Block | None:
    """Match Poisson components ``Poisson(rate[k])``, or return None."""
    (rate,) = comps.roles
    return _match_count(ctx, comps, "poisson", rate, None)


def match_binomial(ctx: Context, comps: Components) -> Block | None:
    """Match ``Bernoulli(p[k])`` or ``Binomial(n, p[k])`` components (constant ``n``), or None."""
    if isinstance(comps.op, BernoulliRV):
        return _match_count(ctx, comps, "binomial", comps.roles[0], None)
    trials = comps.constants[0]
    if trials is None or trials.ndim > 1 or (trials.ndim and comps.element_ndim > 1):
        return None  # trials per entry of a flattened (sequence, time) latent: not handled
    return _match_count(ctx, comps, "binomial", comps.roles[1], trials)
