"""Categorical components: observed y_i ~ Categorical(p[z_i]) with Dirichlet rows."""

import numpy as np
import pymc as pm
import pytensor.tensor as pt

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.components import Components
from pm_em.closed_form.graph import data_graph
from pm_em.closed_form.priors import read_prior

__all__ = ["match_categorical"]


class _CategoricalComponents(Block):
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


def match_categorical(ctx: Context, comps: Components) -> Block | None:
    """Match Categorical components ``Categorical(p[k])`` with Dirichlet rows of ``p``, or None."""
    y = comps.y
    if y.type.ndim != comps.element_ndim:  # one entry per latent element
        return None
    (role,) = comps.roles
    if role is None or role.kind != "indexed" or len(ctx.shapes[role.rv.name]) != 2:
        return None
    prior = read_prior(role.rv, ctx.shapes[role.rv.name])
    if prior is None or prior.kind != "dirichlet" or not ctx.claimable(role.rv, {y}):
        return None
    return _CategoricalComponents(
        data_graph(ctx.problem.model, y, dtype=None), role.rv.name, prior.args[0]
    )
