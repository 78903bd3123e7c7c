"""Mixture weights: constant or Dirichlet, as an explicit latent's prior or a mixture's weights."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.tensor.random.basic import CategoricalRV

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.graph import constant_value, strip_expand
from pm_em.closed_form.priors import read_prior
from pm_em.reading.mixture_graph import MarginalMixture

__all__ = ["match_mixture_weights", "match_weights"]


class _FixedWeights(Block):
    unrolled = True

    def __init__(self, p: np.ndarray):
        self.p = p

    def log_density(self, values):
        k = pt.arange(self.p.shape[-1])
        return pm.logp(pm.Categorical.dist(p=pt.as_tensor(self.p)), k)

    def log_density_k(self, values, k):
        return pm.logp(pm.Categorical.dist(p=pt.as_tensor(self.p)), pt.as_tensor(k))


class _DirichletWeights(Block):
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


def match_weights(ctx: Context, z: Variable) -> Block | None:
    """Match an explicit latent's prior: Categorical with constant p, or p a free Dirichlet."""
    if not isinstance(z.owner.op, CategoricalRV):
        return None
    (p,) = z.owner.op.dist_params(z.owner)
    return _weights(ctx, strip_expand(p), z)


def match_mixture_weights(ctx: Context, mixture: MarginalMixture) -> Block | None:
    """Match a marginal mixture's weights: constant, or a free Dirichlet of shape (K,)."""
    return _weights(ctx, strip_expand(mixture.weights), mixture.rv)


def _weights(ctx: Context, p: Variable, owner: Variable) -> Block | None:
    """Weights ``p`` entering ``owner``'s density alone: a Dirichlet variable or a constant."""
    if p in ctx.free:
        prior = read_prior(p, ctx.shapes[p.name])
        if prior is None or prior.kind != "dirichlet" or not ctx.claimable(p, {owner}):
            return None
        if ctx.shapes[p.name] != prior.args[0].shape or len(ctx.shapes[p.name]) != 1:
            return None
        return _DirichletWeights(p.name, prior.args[0])
    value = constant_value(p)
    if value is None or value.ndim != 1:
        return None
    return _FixedWeights(value.astype("float64"))
