"""Read a PyMC model once and describe its EM problem: `build_problem`.

The steps, in order: check the data; find PyMC's imputed variables; ask every latent reader in
`READERS` for the latents it recognizes; give each dependent variable to one latent; collect
the parameters, the log prior and the likelihood terms no latent takes; build each latent's
enumerated joint log density and the missing values' moments; express every graph in one flat
parameter vector; run each reader's own checks.

Adding a kind of latent (e.g. a Markov chain) is one new reader module, whose
``read(ctx) -> list[LatentDraft]`` finds the latents and says which variables' densities each
takes over, plus one entry in `READERS`: the explicit latents (`pm_em.reading.latents`) and
the component assignments of marginal mixtures (`pm_em.reading.mixtures`) are read so.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.pytensorf import join_nonshared_inputs
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors

from pm_em.reading.chains import read_chains
from pm_em.reading.initial_point import initial_point
from pm_em.reading.latents import LatentDraft, read_explicit_latents
from pm_em.reading.missing import Imputed, find_imputed, missing_values, mvnormal_rows
from pm_em.reading.mixtures import latent_name, read_marginal_mixtures
from pm_em.reading.observed import check_observed, observed_data
from pm_em.reading.problem import EMProblem, Latent, MissingValues, Parameter
from pm_em.timing import stage

__all__ = ["READERS", "ReadContext", "build_problem"]

# Every kind of latent has one reader: ``reader(ctx) -> list[LatentDraft]``. Readers are
# asked in this order, and a free variable an earlier reader found is not offered to a later
# one (a Markov chain is a discrete free variable too; the chain reader takes it first).
READERS = (read_chains, read_explicit_latents, read_marginal_mixtures)


@dataclass(frozen=True, eq=False)
class ReadContext:
    """What readers need to know about the model being read.

    Attributes
    ----------
    model : pm.Model
    latent : tuple of str or None
        The names the user asked to sum out, or None for every latent found.
    point : dict
        The model's initial point (value variable name -> value).
    all_imputed : tuple of Imputed
        Every variable PyMC imputes.
    imputed : tuple of Imputed
        Those whose missing entries EM integrates out (the others are estimated as parameters).
    """

    model: pm.Model
    latent: tuple[str, ...] | None
    point: dict = field(repr=False)
    all_imputed: tuple[Imputed, ...]
    imputed: tuple[Imputed, ...]

    @cached_property
    def blockers(self) -> frozenset[Variable]:
        """Every basic random variable: dependence is traced up to them, not through them."""
        return frozenset(self.model.basic_RVs)

    @cached_property
    def by_observed(self) -> dict[Variable, Imputed]:
        """The imputed variables, keyed on PyMC's ``<name>_observed`` random variable."""
        return {self.model[imp.observed]: imp for imp in self.imputed}

    @cached_property
    def _logp_terms(self) -> dict[Variable, Variable]:
        # One call for every variable: PyMC rewrites the whole model's graph at each call.
        variables = [*self.model.basic_RVs, *self.model.potentials]
        try:
            terms = self.model.logp(vars=variables, jacobian=False, sum=False)
        except Exception:  # a variable PyMC cannot give a density alone: one call each
            return {}
        return dict(zip(variables, terms, strict=True))

    def logp_of(self, var: Variable) -> Variable:
        """Elementwise log density of a model variable or potential (no Jacobian)."""
        term = self._logp_terms.get(var)
        if term is None:
            (term,) = self.model.logp(vars=[var], jacobian=False, sum=False)
        return term

    @cached_property
    def unobserved(self) -> dict[Variable, Imputed]:
        """The imputed variables, keyed on PyMC's ``<name>_unobserved`` random variable."""
        return {self.model[imp.unobserved]: imp for imp in self.imputed}


def build_problem(model: pm.Model, latent: Sequence[str] | None = None) -> EMProblem:
    """Describe the EM problem of ``model``.

    Parameters
    ----------
    model : pm.Model
        The model, with discrete latent variables as free variables, and NaN in observed
        data for missing values.
    latent : sequence of str, optional
        Names of the latent variables to sum out: discrete free variables, the component
        assignments of marginal mixtures (``"y_component"``, or the mixture ``"y"`` itself),
        and imputed variables (by the user's name ``y`` or PyMC's ``y_unobserved``). Default:
        all of them. An imputed variable left out is estimated as a parameter (its MAP
        value); a mixture left out keeps PyMC's own density as a likelihood term.

    Returns
    -------
    EMProblem

    Raises
    ------
    ValueError
        For a latent with infinite support, latents whose elements interact, observed data
        that is not finite, missing values that other variables depend on, or a discrete
        free variable left out of ``latent``.
    """
    with stage("check data, initial point"):
        check_observed(model)
        ctx = _read_context(model, latent)
    with stage("find latents"):
        drafts = _select(ctx, _first_reader_wins([d for reader in READERS for d in reader(ctx)]))
        drafts, owner_of = _assign_dependents(ctx, drafts)
    params_rvs = _parameters(ctx, drafts)
    with stage("log prior, other likelihood terms"):
        prior_terms = _prior_terms(ctx, params_rvs, owner_of)
        log_lik_rest, log_lik_dims = _likelihood_rest(ctx, owner_of)
    with stage("enumerate latents"):
        built = [draft.build(ctx, draft) for draft in drafts]
    latents = [spec for spec, _ in built]
    missing = [_missing_values(ctx, imp, drafts, latents, owner_of) for imp in ctx.imputed]
    with stage("flatten parameters"):
        problem = _flatten(
            ctx,
            params_rvs,
            latents,
            missing,
            prior_terms,
            log_lik_rest,
            _deterministics(ctx, drafts),
        )
    problem = replace(
        problem, log_lik_dims={**log_lik_dims, **{lat.name: lat.dims for lat in latents}}
    )
    with stage("separability check"):
        for draft, spec, (_, terms) in zip(drafts, problem.latents, built, strict=True):
            if draft.check is not None:
                draft.check(problem, spec, terms)
    return problem


def _read_context(model: pm.Model, latent: Sequence[str] | None) -> ReadContext:
    all_imputed = tuple(find_imputed(model))
    if isinstance(latent, str):
        latent = [latent]
    if latent is None:
        imputed = all_imputed
    else:
        names = set(latent)
        # A mixture's missing entries go with its component latent (`pm_em.reading.mixtures`).
        imputed = tuple(
            imp for imp in all_imputed if {imp.name, imp.unobserved, latent_name(imp.name)} & names
        )
    return ReadContext(
        model=model,
        latent=None if latent is None else tuple(latent),
        point=initial_point(model),
        all_imputed=all_imputed,
        imputed=imputed,
    )


def _first_reader_wins(drafts: list[LatentDraft]) -> list[LatentDraft]:
    """Keep one draft per free variable: the first reader's (drafts with no variable stay)."""
    seen: set = set()
    kept = []
    for draft in drafts:
        if draft.rv is not None and draft.rv in seen:
            continue
        seen.add(draft.rv)
        kept.append(draft)
    return kept


def _select(ctx: ReadContext, candidates: list[LatentDraft]) -> list[LatentDraft]:
    """Keep the latents named in ``latent`` (all by default); refuse names that are none."""
    if ctx.latent is None:
        return candidates
    model = ctx.model
    known = {name for d in candidates for name in (d.name, *d.aliases)} | {
        name for imp in ctx.all_imputed for name in (imp.name, imp.unobserved)
    }
    for name in ctx.latent:
        if name in known:
            continue
        if name not in model.named_vars:
            raise ValueError(
                f"`latent` names '{name}', which is not a variable of the model. "
                f"Free variables: {[rv.name for rv in model.free_RVs]}."
            )
        raise ValueError(
            f"`latent` names '{name}', which is neither a discrete free variable nor a "
            "variable with missing values. EM sums out discrete latents and integrates "
            "out missing values; continuous variables are estimated by the M-step."
        )
    left = [d.name for d in candidates if d.rv is not None and d.name not in ctx.latent]
    if left:
        raise ValueError(
            f"Discrete free variable(s) {left} are not in `latent`. The M-step can only "
            "optimize continuous parameters: add them to `latent`, or fix their values "
            "with `pm.do`/`pm.observe`."
        )
    return [d for d in candidates if {d.name, *d.aliases} & set(ctx.latent)]


def _assign_dependents(
    ctx: ReadContext, drafts: list[LatentDraft]
) -> tuple[list[LatentDraft], dict[Variable, str]]:
    """Give every absorbed variable to its one latent; refuse what enumeration cannot handle.

    Returns the drafts and ``{variable: latent name}``. The unobserved twin of an imputed
    variable is dropped from the drafts: it is integrated out with its observed part.
    """
    latent_rvs = {d.rv for d in drafts if d.rv is not None}
    owner_of: dict[Variable, str] = {}
    assigned = []
    for draft in drafts:
        kept = []
        for dep in draft.absorbs:
            if dep in ctx.unobserved:
                continue
            _check_dependent(ctx.model, draft.name, dep, latent_rvs, owner_of)
            owner_of[dep] = draft.name
            kept.append(dep)
        assigned.append(replace(draft, absorbs=tuple(kept)))
    return assigned, owner_of


def _check_dependent(model, z_name, dep, latent_rvs, owner_of) -> None:
    if dep in owner_of:
        raise ValueError(
            f"'{dep.name}' depends on both latent '{owner_of[dep]}' and latent '{z_name}'. "
            "pm_em enumerates each latent on its own, which is exact only when no variable "
            "depends on two latents; combine them into one Categorical over the joint states."
        )
    if dep in latent_rvs:
        raise ValueError(
            f"Latent '{dep.name}' depends on latent '{z_name}'. pm_em enumerates each latent on "
            "its own, which is exact only for independent latents; combine them into one "
            "Categorical over the joint states, or, for a sequence where each state depends "
            "on the previous one only, declare the whole sequence as one `pm_em.MarkovChain`."
        )
    if (
        dep.name.endswith("_unobserved")
        and dep.name.removesuffix("_unobserved") in model.named_vars
    ):
        name = dep.name.removesuffix("_unobserved")
        raise ValueError(
            f"The missing values of '{name}' depend on latent '{z_name}', but '{name}' is not in "
            f"`latent`. Add '{name}' to `latent` so that EM integrates them out with '{z_name}'."
        )
    if dep in model.free_RVs:
        raise ValueError(
            f"Free variable '{dep.name}' depends on latent '{z_name}'. The M-step estimates "
            "continuous variables given the latents' distribution, which needs them to be "
            "parameters, not children, of the latent. Reparameterize so that only observed "
            "variables and potentials depend on a latent."
        )


def _parameters(ctx: ReadContext, drafts: list[LatentDraft]) -> list[Variable]:
    """Return the continuous free variables: what the M-step estimates."""
    hidden = {d.rv for d in drafts} | set(ctx.unobserved)
    return [rv for rv in ctx.model.free_RVs if rv not in hidden]


def _prior_terms(ctx: ReadContext, params_rvs, owner_of) -> dict[str, Variable]:
    """Return the log prior per term: parameters (no Jacobian, as find_MAP), their potentials."""
    prior_vars = params_rvs + [p for p in ctx.model.potentials if p not in owner_of]
    return {v.name: ctx.logp_of(v).sum() for v in prior_vars}


def _likelihood_rest(ctx: ReadContext, owner_of):
    """Elementwise log likelihood of the observed variables no latent takes, and its dims."""
    model = ctx.model
    log_lik_rest, log_lik_dims = {}, {}
    for rv in model.observed_RVs:
        if rv in owner_of:
            continue
        imp = ctx.by_observed.get(rv)
        if imp is not None and imp.partial:
            log_lik_rest[imp.name] = mvnormal_rows(model, imp)[0]
            user_dims = model.named_vars_to_dims.get(imp.name) or ()
            log_lik_dims[imp.name] = tuple(user_dims[:-1]) if user_dims else None
        else:
            name = imp.name if imp else rv.name
            log_lik_rest[name] = ctx.logp_of(rv)
            # With missing entries, one term per observed entry (PyMC's flat y_observed).
            log_lik_dims[name] = (f"{imp.observed}_dim_0",) if imp else None
    return log_lik_rest, log_lik_dims


def _missing_values(ctx: ReadContext, imp: Imputed, drafts, latents, owner_of) -> MissingValues:
    """Return the missing values of ``imp``, integrated out by the latent owning them, if any."""
    owner = owner_of.get(ctx.model[imp.observed])
    pairs = [(d, lat) for d, lat in zip(drafts, latents, strict=True) if lat.name == owner]
    draft, latent = pairs[0] if pairs else (None, None)
    if draft is not None and draft.missing is not None:
        return draft.missing(ctx, imp, latent)
    return missing_values(ctx.model, imp, latent)


def _deterministics(ctx: ReadContext, drafts: list[LatentDraft]) -> dict[str, Variable]:
    """Return the Deterministics with one value at the estimate (no latent or missing value)."""
    hidden = {d.rv for d in drafts if d.rv is not None} | set(ctx.unobserved)
    return {
        d.name: d
        for d in ctx.model.deterministics
        if not (set(ancestors([d], blockers=ctx.blockers)) & hidden)
    }


def _flatten(
    ctx: ReadContext,
    params_rvs: list[Variable],
    latents: list[Latent],
    missing: list[MissingValues],
    prior_terms: dict[str, Variable],
    log_lik_rest: dict[str, Variable],
    deterministics: dict[str, Variable],
) -> EMProblem:
    """Express every graph in one flat parameter vector ``x``, shared by all compiled steps."""
    model = ctx.model
    det_graphs = model.replace_rvs_by_values(list(deterministics.values()))
    outputs = [
        *(g for lat in latents for g in lat.graphs),
        *(g for spec in missing for g in (spec.mean, spec.var)),
        *prior_terms.values(),
        *log_lik_rest.values(),
        *model.replace_rvs_by_values(params_rvs),
        *det_graphs,
    ]
    value_vars = [model.rvs_to_values[rv] for rv in params_rvs]
    point = {v.name: ctx.point[v.name] for v in value_vars}
    if value_vars:
        outputs, x = join_nonshared_inputs(point, outputs, value_vars)
    else:
        x = pt.vector("x", dtype="float64")
    outputs = list(outputs)

    def take(n):
        taken = outputs[:n]
        del outputs[:n]
        return taken

    latents = [lat.with_graphs(take(len(lat.graphs))) for lat in latents]
    missing = [replace(spec, mean=take(1)[0], var=take(1)[0]) for spec in missing]
    prior_terms = dict(zip(prior_terms, take(len(prior_terms)), strict=True))
    log_lik_rest = dict(zip(log_lik_rest, take(len(log_lik_rest)), strict=True))
    constrained = dict(zip([rv.name for rv in params_rvs], take(len(params_rvs)), strict=True))
    deterministics = dict(zip(deterministics, take(len(deterministics)), strict=True))
    params = tuple(
        Parameter(
            name=rv.name,
            value_name=model.rvs_to_values[rv].name,
            shape=np.shape(ctx.point[model.rvs_to_values[rv].name]),
            size=int(np.size(ctx.point[model.rvs_to_values[rv].name])),
        )
        for rv in params_rvs
    )
    problem = EMProblem(
        model=model,
        latents=tuple(latents),
        params=params,
        missing=tuple(missing),
        x=x,
        log_prior=pt.add(*prior_terms.values())
        if prior_terms
        else pt.constant(0.0, dtype="float64"),
        prior_terms=prior_terms,
        log_lik_rest=log_lik_rest,
        constrained=constrained,
        deterministics=deterministics,
        data=_data(ctx),
        log_lik_dims={},
        start=np.zeros(0),
    )
    return replace(problem, start=problem.to_x(point) if value_vars else np.zeros(0))


def _data(ctx: ReadContext) -> dict[str, np.ndarray]:
    """Each observed variable's data under the user's name, NaN where missing."""
    data = {}
    for rv in ctx.model.observed_RVs:
        imp = ctx.by_observed.get(rv)
        if imp is not None:
            data[imp.name] = imp.data
        elif (values := observed_data(ctx.model, rv)) is not None:
            data[rv.name] = values
    return data
