"""Markov chains in closed form: the transition matrix P, the initial distribution, emissions.

For a chain latent Q is

    Σ_t Σ_k γ_t[k] log p(y_t | z_t = k) + Σ_ij ξ[i, j] log P_ij + Σ_k γ_0[k] log p0_k + log p(θ),

with γ the smoothed marginals, ξ the expected transition counts and γ_0 the first step's
marginals (`pm_em.reading.problem.ChainExpectations`). Its emission part is a mixture's
Σ r log f with r = γ, so the emission families of `registry.COMPONENTS` apply unchanged with
the smoothed marginals as responsibilities. P's rows and p0 under Dirichlet(a) priors have
the mixture weights' update, row by row: P_i = (ξ_i + a_i − 1) / Σ_j (ξ_ij + a_ij − 1)
(MAP in the constrained space; a ≥ 1 keeps it inside the simplex, else the numeric step).

A stationary initial distribution (``init_dist="stationary"``, or any p0 that is a function
of P) couples P to the start through log π(P): no closed form, so P is left to the numeric
M-step, warm-started at the other blocks' updates, while the emissions keep theirs.
"""

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors

from pm_em.closed_form.block import Block, Context
from pm_em.closed_form.components import explicit_components
from pm_em.closed_form.graph import NoMatch, strip_expand
from pm_em.closed_form.priors import read_prior
from pm_em.closed_form.registry import COMPONENTS
from pm_em.reading.chains import chain_parts
from pm_em.reading.problem import Latent

__all__ = ["match_chain"]

# Smallest probability an update gives a row entry (relative to the row's total): a
# maximizer on the simplex's boundary, kept in the interior where transforms are finite.
_FLOOR = 1e-300


def _sum_to(stat: Variable, shape: tuple[int, ...]) -> Variable:
    """Sum a per-sequence statistic (*batch, *core) over the batch axes ``shape`` lacks."""
    extra = stat.type.ndim - len(shape)
    return stat.sum(axis=tuple(range(extra))) if extra > 0 else stat


class _DirichletRows(Block):
    """Rows of a Dirichlet(a) probability table from expected counts: (n + a − 1), normalized.

    ``part`` names the chain expectation the counts come from: ``"transitions"`` for P,
    ``"initial"`` for the initial distribution.
    """

    n_stats = 1
    takes_chain = True  # its statistics come from a ChainExpectations, not (n, K) weights

    def __init__(self, name: str, alpha: np.ndarray, part: str):
        self.name, self.alpha, self.part = name, alpha, part
        self.claims = (name,)

    def stats(self, expect, values):
        return [_sum_to(getattr(expect, self.part), self.alpha.shape)]

    def update(self, stats, current):
        (counts,) = stats
        numerator = counts + self.alpha - 1.0
        # A negative coefficient (a < 1 and too few counts) makes the density unbounded at
        # the simplex's boundary: no mode, the numeric step decides.
        if not np.all(numerator >= 0) or not np.all(numerator.sum(axis=-1) > 0):
            return None
        # A zero coefficient (a = 1 and no expected count: the start of one sequence, a
        # transition never taken) puts the maximizer on the boundary, where the unconstrained
        # value is infinite. `_FLOOR` keeps it finite; Q moves by at most _FLOOR · 690.
        numerator = np.maximum(numerator, _FLOOR * numerator.sum(axis=-1, keepdims=True))
        return {self.name: numerator / numerator.sum(axis=-1, keepdims=True)}


def _dirichlet_block(ctx: Context, param: Variable, z: Variable, part: str) -> Block | None:
    """Match a free Dirichlet ``param`` that only the chain ``z`` uses, or return None."""
    param = strip_expand(param)
    if param not in ctx.free or not ctx.claimable(param, {z}):
        return None
    prior = read_prior(param, ctx.shapes[param.name])
    if prior is None or prior.kind != "dirichlet":
        return None
    alpha = prior.args[0]
    if ctx.shapes[param.name] != alpha.shape:
        return None
    return _DirichletRows(param.name, alpha, part)


def _shapes_match(dep_shape: tuple, lat_shape: tuple) -> bool:
    lead = tuple(dep_shape[: len(lat_shape)])
    return len(lead) == len(lat_shape) and all(
        d is None or d == n for d, n in zip(lead, lat_shape, strict=True)
    )


def match_chain(ctx: Context, lat: Latent, z: Variable) -> tuple[Block | None, list]:
    """Recognize the closed-form blocks of a chain latent.

    Returns
    -------
    init : Block or None
        The initial distribution's block (p0 a free Dirichlet), or None.
    components : list of Block or None
        P's block (None when P has no closed form: not a Dirichlet, shared with other
        variables, or entering a stationary start), then one per dependent (an emission
        family of `registry.COMPONENTS`, or None).
    """
    model = ctx.problem.model
    P, _, p = chain_parts(z)
    stationary = strip_expand(P) in set(ancestors([p]))
    init = _dirichlet_block(ctx, p, z, "initial")
    trans = None if stationary else _dirichlet_block(ctx, P, z, "transitions")
    components: list = [trans]
    n_support = lat.support.size
    for dep_name in lat.dependents:
        dep = model[dep_name]
        match = COMPONENTS.get(type(dep.owner.op)) if dep in model.observed_RVs else None
        block = None
        if match is not None and _shapes_match(dep.type.shape, lat.shape):
            try:
                block = match(ctx, explicit_components(ctx, dep, z, n_support))
            except NoMatch:
                block = None
        components.append(block)
    return init, components


def emission_weights(expect, n_support: int) -> Variable:
    """Return the smoothed marginals as an emission block's (n, K) responsibilities."""
    return pt.as_tensor(expect.resp).reshape((-1, n_support))
