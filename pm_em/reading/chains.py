"""The reader of chain latents: `pm_em.MarkovChain` and pymc-extras' ``DiscreteMarkovChain``.

A chain z of shape (*batch, T) is a latent whose elements couple along time: z_t depends on
z_{t-1}. It reaches the E-step as every latent does (`pm_em.reading.problem.Latent`): the
dependents' joint log density at each time step and state (the emissions, built by the same
enumeration as explicit latents, from the dependents only: the chain's own density couples
two steps and is carried instead by the log initial probabilities and log P), with
``coupling="chain"``. The E-step runs forward–backward on it.

Refused with a ValueError that names the variable: a chain whose number of states is not a
constant, a transition matrix that is not square or not row-stochastic, an initial
distribution that is not a distribution over the states, a chain of higher order or with
time-varying P (pymc-extras), and dependents that couple two time steps of the chain.
"""

import numpy as np
import pytensor.tensor as pt
from pymc.pytensorf import constant_fold, resolve_shapes
from pytensor.graph.basic import Variable
from pytensor.tensor.random.basic import CategoricalRV

from pm_em.compiling import CHECK_MODE, compile_with_data
from pm_em.distributions.markov_chain import MarkovChainRV
from pm_em.reading.latents import (
    LatentDraft,
    Term,
    dependents,
    enumerated_joint,
    group_terms,
    latent_dims,
)
from pm_em.reading.observed import observed_data
from pm_em.reading.problem import EMProblem, Latent
from pm_em.reading.separable import check_separable

__all__ = ["chain_parts", "is_chain", "read_chains"]

# Rows of P (and the initial probabilities) must sum to 1 to this relative tolerance.
_STOCHASTIC_TOL = 1e-6


def _is_pymc_extras_chain(op) -> bool:
    # Recognized by name: pymc-extras is never imported by pm_em (it is an optional
    # environment), and a graph can only hold its Op when the user imported it.
    cls = type(op)
    return cls.__name__ == "DiscreteMarkovChainRV" and cls.__module__.startswith("pymc_extras")


def is_chain(rv: Variable) -> bool:
    """Whether ``rv`` is a Markov chain that this reader handles (or refuses with a reason)."""
    op = getattr(rv.owner, "op", None)
    return isinstance(op, MarkovChainRV) or _is_pymc_extras_chain(op)


def chain_parts(rv: Variable) -> tuple[Variable, Variable, Variable]:
    """Return the chain's transition matrix P, its initial Categorical and that one's ``p``.

    Raises
    ------
    ValueError
        For a pymc-extras chain of order above 1, with a time-varying P, or whose initial
        distribution is not a Categorical.
    """
    name, op = rv.name, rv.owner.op
    P, _steps, init_dist, _rng = rv.owner.inputs
    if _is_pymc_extras_chain(op):
        if op.n_lags != 1:
            raise ValueError(
                f"Latent '{name}' is a DiscreteMarkovChain with n_lags={op.n_lags}: each state "
                "depends on more than the previous one. pm_em's forward–backward handles "
                "first-order chains; recode the chain over tuples of consecutive states (K^"
                f"{op.n_lags} states) as a first-order `pm_em.MarkovChain`."
            )
        if op.time_varying_P:
            raise ValueError(
                f"Latent '{name}' is a DiscreteMarkovChain with a time-varying P, which pm_em "
                "does not support: use one transition matrix for every step (batch dims of P "
                "are sequences, not time)."
            )
    if not isinstance(getattr(init_dist.owner, "op", None), CategoricalRV):
        raise ValueError(
            f"The initial distribution of chain '{name}' is "
            f"{type(init_dist.owner.op).__name__.removesuffix('RV')}, not a Categorical over "
            "the chain's states. Pass `init_dist=pm.Categorical.dist(p=p0)`."
        )
    (p,) = init_dist.owner.op.dist_params(init_dist.owner)
    return P, init_dist, p


def read_chains(ctx) -> list[LatentDraft]:
    """Find every Markov chain among the free variables, each with its dependents.

    Parameters
    ----------
    ctx : pm_em.reading.build.ReadContext

    Returns
    -------
    list of LatentDraft
    """
    model = ctx.model
    return [
        LatentDraft(
            name=z.name,
            rv=z,
            absorbs=tuple(dependents(model, z, ctx.blockers)),
            build=build_chain,
            check=check_chain,
        )
        for z in model.free_RVs
        if is_chain(z)
    ]


def _constant_int(var: Variable, what: str, name: str) -> int:
    (shape,) = resolve_shapes([var])  # keeps the RV (and its generator) out of the fold
    (value,) = constant_fold([shape], raise_not_constant=False)
    if isinstance(value, Variable):
        raise ValueError(
            f"The {what} of chain '{name}' is not a constant of the model (it depends on "
            "other variables or on `pm.Data`). EM enumerates the chain's states once, so "
            "the transition matrix P must have a fixed shape (K, K)."
        )
    return int(value)


def build_chain(ctx, draft: LatentDraft) -> tuple[Latent, list[Term]]:
    """Build the chain's emissions (*z.shape, K), log initial probabilities and log P.

    Also returns the dependents' terms, for the check that no observation couples two steps.
    """
    model, z, deps = ctx.model, draft.rv, list(draft.absorbs)
    name = z.name
    P, _, p = chain_parts(z)
    n_states = _constant_int(P.shape[-1], "number of states (the last axis of P)", name)
    support = np.arange(n_states)
    zv = model.rvs_to_values[z]
    z_shape = tuple(np.shape(ctx.point[zv.name]))
    batch = z_shape[:-1]
    terms = group_terms(model, deps, ctx.by_observed, ctx.point, ctx.logp_of)
    try:
        emission = (
            pt.moveaxis(enumerated_joint(model, zv, support, z_shape, terms, name), 0, -1)
            if terms
            else pt.zeros((*z_shape, n_states), dtype="float64")
        )
    except ValueError as err:
        raise _coupling_error(name, [t.name for t in terms]) from err
    P_v, p_v = model.replace_rvs_by_values([P, p])
    log_init = pt.log(pt.as_tensor(p_v).astype("float64"))
    if _is_pymc_extras_chain(z.owner.op):  # one initial state per lag: p of (*batch, 1, K)
        log_init = pt.broadcast_to(log_init, (*batch, 1, n_states))[..., 0, :]
    observed = tuple(
        ctx.by_observed[d].name if d in ctx.by_observed else d.name
        for d in deps
        if d in model.observed_RVs
    )
    n_values = sum(int(np.size(observed_data(model, d))) for d in deps if d in model.observed_RVs)
    spec = Latent(
        name=name,
        support=support,
        shape=z_shape,
        dims=latent_dims(ctx, name, deps, z_shape),
        support_dim=f"{name}_support",
        kind="MarkovChain",
        dependents=tuple(d.name for d in deps),
        observed=observed,
        values_per_element=max(n_values // max(int(np.prod(z_shape)), 1), 1),
        log_joint=emission,  # (*batch, T, K)
        coupling="chain",
        log_init=pt.broadcast_to(log_init, (*batch, n_states)),
        log_trans=pt.log(pt.as_tensor(P_v).astype("float64")),  # (*b, K, K)
    )
    return spec, terms


def _coupling_error(name: str, deps: list[str]) -> ValueError:
    return ValueError(
        f"The density of {deps} does not split into one term per time step of chain '{name}': "
        f"some observation depends on '{name}' at more than one time step (e.g. "
        f"mu[{name}[1:]] + mu[{name}[:-1]]). Forward–backward needs the observations at step t "
        f"to depend on {name}[t] alone; covariates and lagged observations may enter as data. "
        "Give each dependent one entry (or one row) per time step."
    )


def check_chain(problem: EMProblem, spec: Latent, terms: list[Term]) -> None:
    """Refuse a chain that forward–backward would get wrong.

    Its P and initial probabilities must be distributions over the states, and no dependent
    may couple two time steps.
    """
    _check_stochastic(problem, spec)
    if terms:
        try:
            check_separable(problem, spec, terms)
        except ValueError as err:
            raise _coupling_error(spec.name, list(spec.dependents)) from err


def _check_stochastic(problem: EMProblem, spec: Latent) -> None:
    """Rows of P and the initial probabilities must be ≥ 0 and sum to 1 wherever evaluated."""
    model = problem.model
    P, _, _ = chain_parts(model[spec.name])
    P_name = P.name or "P"
    fn = compile_with_data(
        model,
        [problem.x],
        [pt.exp(spec.log_trans), pt.exp(spec.log_init)],
        name="stochastic check",
        mode=CHECK_MODE,
    )
    rng = np.random.default_rng(20261201)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    for attempt in range(4):
        x = start if attempt == 0 else start + rng.normal(0.0, 0.5, size=start.shape)
        trans, init = (np.asarray(v) for v in fn(x))
        if trans.shape[-2] != trans.shape[-1]:
            raise ValueError(
                f"The transition matrix of chain '{spec.name}' ('{P_name}') is not square: "
                f"shape {trans.shape}; its last two axes must both be the K states."
            )
        for what, value in (("transition matrix", trans), ("initial distribution", init)):
            bad = _not_stochastic(value)
            if bad is None:
                continue
            label = f"'{P_name}'" if what == "transition matrix" else "p of `init_dist`"
            fix = (
                f"Give {P_name} a Dirichlet prior per row (`pm.Dirichlet('{P_name}', "
                "a=np.ones((K, K)))`) or normalize it (`P / P.sum(-1, keepdims=True)`)"
                if what == "transition matrix"
                else "Pass probabilities that sum to 1 (e.g. a Dirichlet)"
            )
            where = "at the model's initial point" if attempt == 0 else "at a test point"
            raise ValueError(
                f"The {what} of chain '{spec.name}' ({label}) is not row-stochastic {where}: "
                f"{bad}. Each row must hold probabilities that sum to 1. {fix}."
            )


def _not_stochastic(value: np.ndarray) -> str | None:
    """Describe the first row that is not a probability vector, or None."""
    if not np.all(np.isfinite(value)):
        return "it has non-finite entries"
    if np.any(value < 0):
        return f"it has negative entries (min {value.min():.3g})"
    sums = value.sum(axis=-1)
    off = np.abs(sums - 1.0)
    if np.any(off > _STOCHASTIC_TOL):
        index = np.unravel_index(int(np.argmax(off)), sums.shape)
        return f"row {tuple(int(i) for i in index)} sums to {sums[index]:.6g}"
    return None
