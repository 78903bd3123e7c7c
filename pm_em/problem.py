"""Read a PyMC model once and describe its EM problem.

All knowledge of PyMC's graph internals lives in this module. `build_problem` turns a model
into an `EMProblem`: the finite discrete latents with their supports and the pytensor graph of
their joint log density for every support value at once, the continuous parameters as one
flat vector in the unconstrained space, the log prior, and what the results need (constrained
values, Deterministics, pointwise log likelihoods). Nothing here is compiled for speed; the
E- and M-steps compile what they need from these graphs.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from pymc.pytensorf import join_nonshared_inputs
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.replace import vectorize_graph
from pytensor.graph.traversal import ancestors
from pytensor.tensor.sharedvar import TensorSharedVariable

from pm_em.missing import Imputed, find_imputed, mvnormal_rows, split_moments
from pm_em.support import finite_support

__all__ = ["EMProblem", "Latent", "MissingValues", "build_problem"]

# Python-linked compilation: the one-off checks below run once per model, and must not pay
# the backend's (numba's) compile time.
_CHECK_MODE = "FAST_COMPILE"


@dataclass(frozen=True)
class Latent:
    """A finite discrete latent variable and its enumerated joint log density.

    Attributes
    ----------
    name : str
        The model variable.
    support : ndarray of shape (n_support,)
        The values it can take.
    shape : tuple of int
        Its shape (the batch of independent latent elements).
    dims : tuple of str
        Dim names of its elements: the model's, or ``"<name>_dim_<i>"``.
    support_dim : str
        Name of the trailing dim that indexes ``support`` (``"<name>_support"``).
    kind : str
        Its distribution (``"Categorical"``, ``"Bernoulli"``, ...).
    dependents : tuple of str
        The observed variables and potentials whose density involves it.
    observed : tuple of str
        The observed ones among them.
    values_per_element : int
        How many observed values each latent element explains (1 for a univariate mixture,
        d for rows of length d).
    log_joint : TensorVariable of shape (*shape, n_support)
        log p(z_i = k, dependents_i | θ) for every element i and support value k, as a
        function of the flat parameter vector `EMProblem.x`.
    """

    name: str
    support: np.ndarray
    shape: tuple[int, ...]
    dims: tuple[str, ...]
    support_dim: str
    kind: str
    dependents: tuple[str, ...]
    observed: tuple[str, ...]
    values_per_element: int
    log_joint: Variable = field(repr=False)


@dataclass(frozen=True)
class MissingValues:
    """Missing entries of one observed variable, integrated out; graphs for their imputation.

    Attributes
    ----------
    name : str
        The user's variable (PyMC's Deterministic holding the completed data).
    unobserved : str
        PyMC's ``<name>_unobserved``: the flat vector of missing entries.
    dims : tuple of str
        Dims of ``unobserved``.
    mask : ndarray of bool, full shape
        True where missing.
    data : ndarray, full shape
        The data, NaN where missing.
    partial : bool
        MvNormal rows (True) or an elementwise likelihood (False); see `pm_em.missing`.
    latent : str or None
        The latent whose value the entries' distribution depends on, if any.
    element : ndarray of int or None
        With a latent: for each missing entry (elementwise) or each row (MvNormal), the flat
        index of its latent element.
    mean, var : TensorVariable
        Conditional mean and variance given the data, functions of `EMProblem.x`: of the
        missing entries (elementwise) or of whole rows (MvNormal, 0 variance where observed);
        with a latent, one per support value on a leading axis.
    """

    name: str
    unobserved: str
    dims: tuple[str, ...]
    mask: np.ndarray = field(repr=False)
    data: np.ndarray = field(repr=False)
    partial: bool
    latent: str | None
    element: np.ndarray | None = field(repr=False)
    mean: Variable = field(repr=False)
    var: Variable = field(repr=False)


@dataclass(frozen=True)
class Parameter:
    """A continuous free variable, estimated by the M-step."""

    name: str
    value_name: str
    shape: tuple[int, ...]
    size: int


@dataclass(frozen=True)
class EMProblem:
    """What EM needs to know about a model, as graphs of one flat parameter vector ``x``.

    The observed-data log posterior is
    ``log_prior + sum(log_lik_rest) + sum_j sum_i logsumexp_k latents[j].log_joint[i, k]``,
    with missing values integrated out (see `pm_em.missing`). ``data`` holds each observed
    variable's data under the user's name, NaN where missing; ``log_lik_dims`` the dims of
    each pointwise log likelihood (keyed by latent name for latent groups; None: the model's).
    """

    model: pm.Model
    latents: tuple[Latent, ...]
    params: tuple[Parameter, ...]
    missing: tuple[MissingValues, ...]
    x: Variable = field(repr=False)
    log_prior: Variable = field(repr=False)
    prior_terms: dict[str, Variable] = field(repr=False)
    log_lik_rest: dict[str, Variable] = field(repr=False)
    constrained: dict[str, Variable] = field(repr=False)
    deterministics: dict[str, Variable] = field(repr=False)
    data: dict[str, np.ndarray] = field(repr=False)
    log_lik_dims: dict[str, tuple[str, ...] | None] = field(repr=False)
    start: np.ndarray = field(repr=False)

    @property
    def n_params(self) -> int:
        """Length of the unconstrained parameter vector."""
        return sum(p.size for p in self.params)

    def to_x(self, point: dict[str, np.ndarray]) -> np.ndarray:
        """Ravel a point {value variable name: value} into the flat vector."""
        parts = [np.asarray(point[p.value_name], dtype="float64").ravel() for p in self.params]
        return np.concatenate(parts) if parts else np.zeros(0)

    def from_x(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Split the flat vector into {value variable name: value}."""
        out, i = {}, 0
        for p in self.params:
            out[p.value_name] = np.asarray(x[i : i + p.size]).reshape(p.shape)
            i += p.size
        return out


def build_problem(model: pm.Model, latent: Sequence[str] | None = None) -> EMProblem:
    """Describe the EM problem of ``model``.

    Parameters
    ----------
    model : pm.Model
        The model, with discrete latent variables as free variables, and NaN in observed
        data for missing values.
    latent : sequence of str, optional
        Names of the latent variables to sum out: discrete free variables, and imputed
        variables (by the user's name ``y`` or PyMC's ``y_unobserved``). Default: all of
        them. An imputed variable left out is estimated as a parameter (its MAP value).

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
    _check_observed(model)
    imputed = find_imputed(model)
    latent_rvs, imputed = _select_latents(model, latent, imputed)
    initial_point = model.initial_point()
    blockers = set(model.basic_RVs)
    by_observed = {model[imp.observed]: imp for imp in imputed}
    unobserved = {model[imp.unobserved]: imp for imp in imputed}

    groups = {z: _dependents(model, z, blockers) for z in latent_rvs}
    owner_of: dict[Variable, Variable] = {}
    for z, deps in groups.items():
        for dep in deps:
            if dep in unobserved:  # integrated out with its observed twin
                continue
            _check_dependent(model, z, dep, latent_rvs, owner_of)
            owner_of[dep] = z
        groups[z] = [d for d in deps if d not in unobserved]

    params_rvs = [rv for rv in model.free_RVs if rv not in latent_rvs and rv not in unobserved]
    params = tuple(
        Parameter(
            name=rv.name,
            value_name=model.rvs_to_values[rv].name,
            shape=np.shape(initial_point[model.rvs_to_values[rv].name]),
            size=int(np.size(initial_point[model.rvs_to_values[rv].name])),
        )
        for rv in params_rvs
    )
    # The log prior: free parameters (no Jacobian, as find_MAP) and parameter-only potentials.
    prior_vars = params_rvs + [p for p in model.potentials if p not in owner_of]
    prior_terms = dict(
        zip(
            [v.name for v in prior_vars],
            [t.sum() for t in model.logp(vars=prior_vars, jacobian=False, sum=False)]
            if prior_vars
            else [],
            strict=True,
        )
    )
    log_lik_rest, log_lik_dims = {}, {}
    for rv in model.observed_RVs:
        if rv in owner_of:
            continue
        imp = by_observed.get(rv)
        if imp is not None and imp.partial:
            log_lik_rest[imp.name] = mvnormal_rows(model, imp)[0]
            user_dims = model.named_vars_to_dims.get(imp.name) or ()
            log_lik_dims[imp.name] = tuple(user_dims[:-1]) if user_dims else None
        else:
            name = imp.name if imp else rv.name
            (log_lik_rest[name],) = model.logp(vars=[rv], jacobian=False, sum=False)
            # With missing entries, one term per observed entry (PyMC's flat y_observed).
            log_lik_dims[name] = (f"{imp.observed}_dim_0",) if imp else None
    latents_raw = [
        _latent_graph(model, z, groups[z], initial_point, by_observed) for z in latent_rvs
    ]
    missing_raw = [
        _missing_graphs(model, imp, owner_of.get(model[imp.observed]), latents_raw)
        for imp in imputed
    ]
    hidden = set(latent_rvs) | set(unobserved)
    deterministics = {
        d.name: d
        for d in model.deterministics
        if not (set(ancestors([d], blockers=blockers)) & hidden)
    }
    det_graphs = model.replace_rvs_by_values(list(deterministics.values()))
    constrained = model.replace_rvs_by_values(params_rvs)

    # One flat input for every graph, so that the E-step, M-step and results share it.
    outputs = [
        *(spec.log_joint for spec, _ in latents_raw),
        *(g for spec in missing_raw for g in (spec.mean, spec.var)),
        *prior_terms.values(),
        *log_lik_rest.values(),
        *constrained,
        *det_graphs,
    ]
    value_vars = [model.rvs_to_values[rv] for rv in params_rvs]
    point = {v.name: initial_point[v.name] for v in value_vars}
    if value_vars:
        outputs, x = join_nonshared_inputs(point, outputs, value_vars)
    else:
        x = pt.vector("x", dtype="float64")
    outputs = list(outputs)

    def take(n):
        taken = outputs[:n]
        del outputs[:n]
        return taken

    latents = tuple(
        replace(spec, log_joint=lg)
        for (spec, _), lg in zip(latents_raw, take(len(latents_raw)), strict=True)
    )
    missing = tuple(replace(spec, mean=take(1)[0], var=take(1)[0]) for spec in missing_raw)
    prior_terms = dict(zip(prior_terms, take(len(prior_terms)), strict=True))
    log_lik_rest = dict(zip(log_lik_rest, take(len(log_lik_rest)), strict=True))
    constrained = dict(zip([rv.name for rv in params_rvs], take(len(params_rvs)), strict=True))
    deterministics = dict(zip(deterministics, take(len(deterministics)), strict=True))
    log_prior = pt.add(*prior_terms.values()) if prior_terms else pt.constant(0.0, dtype="float64")

    data = {}
    for rv in model.observed_RVs:
        imp = by_observed.get(rv)
        if imp is not None:
            data[imp.name] = imp.data
        elif (values := _observed_data(model, rv)) is not None:
            data[rv.name] = values
    problem = EMProblem(
        model=model,
        latents=latents,
        params=params,
        missing=missing,
        x=x,
        log_prior=log_prior,
        prior_terms=prior_terms,
        log_lik_rest=log_lik_rest,
        constrained=constrained,
        deterministics=deterministics,
        data=data,
        log_lik_dims={**log_lik_dims, **{lat.name: lat.dims for lat in latents}},
        start=np.zeros(0),
    )
    start = problem.to_x(point) if value_vars else np.zeros(0)
    problem = replace(problem, start=start)
    for spec, (_, terms) in zip(latents, latents_raw, strict=True):
        _check_separable(problem, spec, terms)
    return problem


def _observed_data(model: pm.Model, rv: Variable) -> np.ndarray | None:
    value = model.rvs_to_values.get(rv)
    if isinstance(value, Constant):
        return np.asarray(value.data)
    if isinstance(value, TensorSharedVariable):
        return np.asarray(value.get_value())
    return None


def _check_observed(model: pm.Model) -> None:
    if not model.observed_RVs:
        raise ValueError(
            "The model has no observed variable: EM needs data. Pass `observed=` to the likelihood."
        )
    for rv in model.observed_RVs:
        data = _observed_data(model, rv)
        if data is None or not np.issubdtype(data.dtype, np.number):
            continue
        if data.size == 0:
            raise ValueError(
                f"Observed variable '{rv.name}' has no data (an empty array). EM needs at "
                "least one observation: pass data or remove the variable."
            )
        if np.isnan(data).any():
            raise ValueError(
                f"Observed variable '{rv.name}' contains NaN that PyMC did not impute (NaN "
                "inside `pm.Data` is passed on as is). Pass the data as a plain or masked "
                "array to `observed=` so that PyMC imputes it, or drop the incomplete rows."
            )
        if np.isinf(data).any():
            raise ValueError(
                f"Observed variable '{rv.name}' contains infinite values. Remove or correct "
                "those entries; EM needs finite data."
            )


def _is_discrete(rv: Variable) -> bool:
    return rv.type.dtype.startswith(("int", "uint", "bool"))


def _select_latents(
    model: pm.Model, latent: Sequence[str] | None, imputed: list[Imputed]
) -> tuple[list[Variable], list[Imputed]]:
    # PyMC's <name>_unobserved of a discrete likelihood is integrated out, not enumerated.
    unobserved = {imp.unobserved for imp in imputed}
    discrete = [rv for rv in model.free_RVs if _is_discrete(rv) and rv.name not in unobserved]
    if latent is None:
        return discrete, imputed
    if isinstance(latent, str):
        latent = [latent]
    by_name = {name: imp for imp in imputed for name in (imp.name, imp.unobserved)}
    chosen, chosen_imputed = [], []
    for name in latent:
        if name in by_name:
            chosen_imputed.append(by_name[name])
            continue
        if name not in model.named_vars:
            raise ValueError(
                f"`latent` names '{name}', which is not a variable of the model. "
                f"Free variables: {[rv.name for rv in model.free_RVs]}."
            )
        rv = model[name]
        if rv not in model.free_RVs or not _is_discrete(rv):
            raise ValueError(
                f"`latent` names '{name}', which is neither a discrete free variable nor a "
                "variable with missing values. EM sums out discrete latents and integrates "
                "out missing values; continuous variables are estimated by the M-step."
            )
        chosen.append(rv)
    left = [rv.name for rv in discrete if rv not in chosen]
    if left:
        raise ValueError(
            f"Discrete free variable(s) {left} are not in `latent`. The M-step can only "
            "optimize continuous parameters: add them to `latent`, or fix their values "
            "with `pm.do`/`pm.observe`."
        )
    return chosen, chosen_imputed


def _dependents(model: pm.Model, z: Variable, blockers: set[Variable]) -> list[Variable]:
    """Variables and potentials whose density involves ``z`` directly (not through an RV)."""
    others = blockers - {z}
    deps = []
    for rv in model.basic_RVs:
        if rv is z:
            continue
        if z in ancestors(rv.owner.inputs, blockers=others):
            deps.append(rv)
    deps.extend(p for p in model.potentials if z in ancestors([p], blockers=others))
    return deps


def _check_dependent(model, z, dep, latent_rvs, owner_of) -> None:
    if dep in owner_of:
        raise ValueError(
            f"'{dep.name}' depends on both latent '{owner_of[dep].name}' and latent '{z.name}'. "
            "pm_em enumerates each latent on its own, which is exact only when no variable "
            "depends on two latents; combine them into one Categorical over the joint states."
        )
    if dep in latent_rvs:
        raise ValueError(
            f"Latent '{dep.name}' depends on latent '{z.name}'. pm_em enumerates each latent on "
            "its own, which is exact only for independent latents; combine them into one "
            "Categorical over the joint states."
        )
    if (
        dep.name.endswith("_unobserved")
        and dep.name.removesuffix("_unobserved") in model.named_vars
    ):
        name = dep.name.removesuffix("_unobserved")
        raise ValueError(
            f"The missing values of '{name}' depend on latent '{z.name}', but '{name}' is not in "
            f"`latent`. Add '{name}' to `latent` so that EM integrates them out with '{z.name}'."
        )
    if dep in model.free_RVs:
        raise ValueError(
            f"Free variable '{dep.name}' depends on latent '{z.name}'. The M-step estimates "
            "continuous variables given the latents' distribution, which needs them to be "
            "parameters, not children, of the latent. Reparameterize so that only observed "
            "variables and potentials depend on a latent."
        )


def _shapes(model: pm.Model, graphs: list[Variable], point: dict) -> list[tuple[int, ...]]:
    inputs = [v for v in model.value_vars if v.name in point]
    fn = pytensor.function(
        inputs, [g.shape for g in graphs], mode=_CHECK_MODE, on_unused_input="ignore"
    )
    return [tuple(int(s) for s in shp) for shp in fn(*(point[v.name] for v in inputs))]


@dataclass(frozen=True)
class _Term:
    """One dependent's elementwise log density, and where its elements sit."""

    name: str
    graph: Variable
    shape: tuple[int, ...]
    # Elementwise likelihood with missing entries: its terms fill these flat positions of
    # the full data shape; the missing positions contribute 0 (integrated out).
    positions: np.ndarray | None = None
    full_shape: tuple[int, ...] | None = None


def _group_terms(model, z, deps, by_observed, point) -> list[_Term]:
    terms = []
    for var in [z, *deps]:
        imp = by_observed.get(var)
        if imp is not None and imp.partial:
            graph = mvnormal_rows(model, imp)[0]
            terms.append(_Term(imp.name, graph, imp.mask.shape[:-1]))
            continue
        (graph,) = model.logp(vars=[var], jacobian=False, sum=False)
        if imp is not None:
            positions = np.flatnonzero(~imp.mask.ravel())
            terms.append(_Term(imp.name, graph, (positions.size,), positions, imp.mask.shape))
        else:
            terms.append(_Term(var.name, graph, None))
    shapes = _shapes(model, [t.graph for t in terms], point)
    return [
        t if t.shape is not None else replace(t, shape=s)
        for t, s in zip(terms, shapes, strict=True)
    ]


def _enumerated(zv, support: np.ndarray, z_shape: tuple[int, ...]) -> Variable:
    """Every element of z at support value k, for each k: shape (K, *z_shape)."""
    k_first = pt.as_tensor(support.reshape((-1,) + (1,) * len(z_shape)))
    return pt.broadcast_to(k_first, (support.size, *z_shape)).astype(zv.dtype)


def _latent_graph(model, z, deps, point, by_observed) -> tuple[Latent, list[_Term]]:
    """Build log p(z_i = k, deps_i | θ) of shape (*z.shape, K), in value-variable terms.

    Also returns the unbatched terms it was built from, for the separability check.
    """
    name = z.name
    support = finite_support(z, name)
    zv = model.rvs_to_values[z]
    z_shape = tuple(np.shape(point[zv.name]))
    n_support = support.size
    enumerated = _enumerated(zv, support, z_shape)
    parts = []
    terms = _group_terms(model, z, deps, by_observed, point)
    for term in terms:
        # Entry [k, ...] is the term with every element of z at support value k.
        batched = vectorize_graph(term.graph, replace={zv: enumerated})
        batched = pt.broadcast_to(batched, (n_support, *term.shape)).astype("float64")
        shape = term.shape
        if term.positions is not None:
            full = pt.zeros((n_support, int(np.prod(term.full_shape))), dtype="float64")
            full = pt.set_subtensor(full[:, term.positions], batched)
            batched, shape = full.reshape((n_support, *term.full_shape)), term.full_shape
        parts.append(_align(batched, shape, z_shape, term.name, name))
    log_joint = pt.moveaxis(pt.add(*parts), 0, -1)  # (*z_shape, K)
    dims = model.named_vars_to_dims.get(name) or _dims_from_dependents(
        model, deps, z_shape, by_observed
    )
    dims = tuple(
        d if d is not None else f"{name}_dim_{i}"
        for i, d in enumerate(dims or [None] * len(z_shape))
    )
    observed = tuple(
        by_observed[d].name if d in by_observed else d.name for d in deps if d in model.observed_RVs
    )
    n_elements = max(int(np.prod(z_shape)), 1)
    n_values = sum(int(np.size(_observed_data(model, d))) for d in deps if d in model.observed_RVs)
    spec = Latent(
        name=name,
        support=support,
        shape=z_shape,
        dims=dims,
        support_dim=f"{name}_support",
        kind=type(z.owner.op).__name__.removesuffix("RV"),
        dependents=tuple(d.name for d in deps),
        observed=observed,
        values_per_element=max(n_values // n_elements, 1),
        log_joint=log_joint,
    )
    return spec, terms


def _dims_from_dependents(model, deps, z_shape, by_observed) -> tuple | None:
    """Borrow the latent's dims from an observed dependent's, so both share the model's coords."""
    nz = len(z_shape)
    for dep in deps:
        imp = by_observed.get(dep)
        name = imp.name if imp is not None else dep.name
        dep_dims = model.named_vars_to_dims.get(name)
        data = imp.data if imp is not None else _observed_data(model, dep)
        if not dep_dims or data is None or not nz:
            continue
        how = _axes_map(tuple(data.shape), z_shape)
        if how in ("same", "leading"):
            return tuple(dep_dims[:nz])
        if how == "trailing":
            return tuple(dep_dims[-nz:])
    return None


def _axes_map(shape, z_shape) -> str | None:
    """How a dependent's axes line up with the latent's: "same", "leading", "trailing"."""
    nz = len(z_shape)
    if shape == z_shape:
        return "same"
    if nz == 0:
        return "all"
    if len(shape) > nz and shape[:nz] == z_shape:
        return "leading"
    if len(shape) > nz and shape[-nz:] == z_shape:
        return "trailing"
    return None


def _align(batched, shape, z_shape, dep_name, z_name):
    """Reduce a (K, *shape) log density to one term per latent element: (K, *z_shape)."""
    how = _axes_map(shape, z_shape)
    nz, nd = len(z_shape), len(shape)
    if how == "same":
        return batched
    if how == "all":
        return batched.reshape((batched.shape[0], -1)).sum(axis=1)
    if how == "leading":
        return batched.sum(axis=tuple(range(1 + nz, 1 + nd)))
    if how == "trailing":
        return batched.sum(axis=tuple(range(1, 1 + nd - nz)))
    raise ValueError(
        f"The density of '{dep_name}' (elementwise shape {shape}) does not split into one term "
        f"per element of latent '{z_name}' (shape {z_shape}), so the latent's elements interact "
        "and enumerating each element on its own would be wrong. Give the dependent one entry "
        "(or one row) per latent element."
    )


def _element_of(flat_positions: np.ndarray, shape, z_shape) -> np.ndarray:
    """Flat index of the latent element that each flat position of ``shape`` belongs to."""
    how = _axes_map(tuple(shape), tuple(z_shape))
    n_z = max(int(np.prod(z_shape)), 1)
    if how == "same":
        return flat_positions
    if how == "all":
        return np.zeros_like(flat_positions)
    if how == "leading":
        return flat_positions // (int(np.prod(shape)) // n_z)
    return flat_positions % n_z  # trailing


def _missing_graphs(model, imp: Imputed, z, latents_raw) -> MissingValues:
    if imp.partial:
        _, mean, var = mvnormal_rows(model, imp)
    else:
        mean, var = split_moments(model, imp)
    element = None
    if z is not None:
        spec = next(s for s, _ in latents_raw if s.name == z.name)
        zv = model.rvs_to_values[z]
        enumerated = _enumerated(zv, spec.support, spec.shape)
        mean, var = (vectorize_graph(g, replace={zv: enumerated}) for g in (mean, var))
        lead = (spec.support.size,)
        if imp.partial:
            rows = imp.mask.shape[:-1]
            element = _element_of(np.arange(int(np.prod(rows))), rows, spec.shape)
        else:
            element = _element_of(np.flatnonzero(imp.mask.ravel()), imp.mask.shape, spec.shape)
    else:
        lead = ()
    entries = imp.mask.shape if imp.partial else (int(imp.mask.sum()),)
    mean, var = (pt.broadcast_to(g, (*lead, *entries)) for g in (mean, var))
    dims = model.named_vars_to_dims.get(imp.unobserved) or (f"{imp.unobserved}_dim_0",)
    return MissingValues(
        name=imp.name,
        unobserved=imp.unobserved,
        dims=tuple(dims),
        mask=imp.mask,
        data=imp.data,
        partial=imp.partial,
        latent=z.name if z is not None else None,
        element=element,
        mean=mean,
        var=var,
    )


def _check_separable(problem: EMProblem, spec: Latent, terms: list[_Term]) -> None:
    """Refuse a latent whose joint density does not split into one term per element.

    Enumeration computes each element's term with every element set to the same value.
    That equals the true joint density only if element i's term depends on z_i alone, so
    compare the two on random assignments at a random parameter point: they agree exactly
    for a separable density and (almost surely) differ otherwise.
    """
    model = problem.model
    z = model[spec.name]
    zv = model.rvs_to_values[z]
    joint = pt.add(*[t.graph.sum().astype("float64") for t in terms])
    value_vars = [model.rvs_to_values[model[p.name]] for p in problem.params]
    [joint_x], x = (
        join_nonshared_inputs(
            {p.value_name: np.zeros(p.shape) for p in problem.params}, [joint], value_vars
        )
        if value_vars
        else ([joint], problem.x)
    )
    # pymc's compile turns parameter checks (e.g. a non-PD covariance at the random test
    # point) into -inf instead of raising.
    joint_fn = compile_pymc([x, zv], joint_x, mode=_CHECK_MODE, on_unused_input="ignore")
    log_joint_fn = compile_pymc(
        [problem.x], spec.log_joint, mode=_CHECK_MODE, on_unused_input="ignore"
    )
    rng = np.random.default_rng(20261122)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    # Several assignments: a structured one (a palindrome for z[::-1]) can agree by chance.
    for attempt in range(8):
        if attempt % 4 == 0:
            x_test = start + rng.normal(0.0, 0.5, size=start.shape)
            table = np.asarray(log_joint_fn(x_test))  # (*shape, K)
        # Mixed assignments, uniform over each element's possible values: an assignment
        # with every element equal is exactly what enumeration computes, and proves nothing.
        feasible = np.isfinite(table)
        weights = np.where(feasible.any(axis=-1, keepdims=True), feasible, 1.0)
        cdf = np.cumsum(weights / weights.sum(axis=-1, keepdims=True), axis=-1)
        u = rng.uniform(size=(*spec.shape, 1))
        idx = np.minimum((cdf < u).sum(axis=-1), table.shape[-1] - 1)
        enumerated = np.take_along_axis(table, idx[..., None], axis=-1).sum()
        if not np.isfinite(enumerated):
            continue
        direct = float(joint_fn(x_test, spec.support[idx].astype(zv.dtype)))
        # float32 logp terms (DiscreteUniform's) carry ~1e-7 relative error; an interaction
        # between elements changes the sum by far more at a random point.
        if not np.isclose(enumerated, direct, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"The joint density of latent '{spec.name}' and {list(spec.dependents)} does "
                f"not split into one term per element of '{spec.name}': some element's "
                "density depends on other elements of the latent (e.g. through a sum or a "
                "chain). Enumerating each element on its own would be wrong, so pm_em refuses "
                "this model. Only latents whose elements are conditionally independent are "
                "supported."
            )
