"""The reader of explicit latents: finite discrete free variables such as ``pm.Categorical``.

For each discrete free variable ``z`` it finds the observed variables and potentials whose
density involves ``z`` (its dependents), and builds log p(z_i = k, dependents_i | θ) for every
element i and support value k at once, by replacing z's value with its enumerated support
(`pm_em.reading.enumerate`). Every reader returns the same `LatentDraft`s (see
`pm_em.reading.build`), so the E- and M-steps never know which reader found a latent.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pytensor.graph.basic import Variable
from pytensor.graph.replace import vectorize_graph
from pytensor.graph.traversal import ancestors

from pm_em.compiling import CHECK_MODE, compile_with_data
from pm_em.reading.component_logp import component_logps
from pm_em.reading.enumerate import align, axes_map, enumerated
from pm_em.reading.missing import Imputed, mvnormal_rows
from pm_em.reading.observed import observed_data
from pm_em.reading.problem import Latent
from pm_em.reading.separable import check_separable
from pm_em.reading.support import finite_support

__all__ = ["LatentDraft", "Term", "enumerated_joint", "is_discrete", "read_explicit_latents"]


@dataclass(frozen=True)
class Term:
    """One dependent's elementwise log density, and where its elements sit."""

    name: str
    graph: Variable
    shape: tuple[int, ...] | None
    # Elementwise likelihood with missing entries: its terms fill these flat positions of
    # the full data shape; the missing positions contribute 0 (integrated out).
    positions: np.ndarray | None = None
    full_shape: tuple[int, ...] | None = None
    # The model variable whose plain density this is (None: imputed, rows, potentials).
    var: Variable | None = None


@dataclass(frozen=True, eq=False)
class LatentDraft:
    """A latent a reader found, before its graphs are built.

    Attributes
    ----------
    name : str
        The latent's name in the results.
    rv : Variable or None
        Its random variable, when it is a free variable of the model (else None).
    absorbs : tuple of Variable
        The model variables and potentials whose density the latent's enumerated joint takes
        over (its dependents). Each may belong to one latent only.
    build : callable
        ``build(ctx, draft) -> (Latent, terms)``: the latent with its joint log density in
        value-variable terms, and whatever `check` needs.
    check : callable or None
        ``check(problem, latent, terms)``, run once the problem is assembled; raises when the
        enumeration would be wrong for this model (e.g. elements that interact).
    aliases : tuple of str
        Other names by which `latent=` may select it (e.g. the mixture's observed variable).
    missing : callable or None
        ``missing(ctx, imputed, latent) -> MissingValues`` for missing entries of a variable it
        absorbs, when the latent integrates them out itself; None: `missing.missing_values`.
    """

    name: str
    rv: Variable | None
    absorbs: tuple[Variable, ...]
    build: Callable
    check: Callable | None = None
    aliases: tuple[str, ...] = ()
    missing: Callable | None = None


def is_discrete(rv: Variable) -> bool:
    """Whether ``rv`` takes integer (or boolean) values."""
    return rv.type.dtype.startswith(("int", "uint", "bool"))


def read_explicit_latents(ctx) -> list[LatentDraft]:
    """Find every discrete free variable, each with its dependents.

    Parameters
    ----------
    ctx : pm_em.reading.build.ReadContext

    Returns
    -------
    list of LatentDraft
        One per discrete free variable (PyMC's ``<name>_unobserved`` of a discrete likelihood
        excepted: missing values are integrated out, not enumerated).
    """
    model = ctx.model
    unobserved = {imp.unobserved for imp in ctx.all_imputed}
    return [
        LatentDraft(
            name=z.name,
            rv=z,
            absorbs=tuple(dependents(model, z, ctx.blockers)),
            build=build_explicit,
            check=check_separable,
        )
        for z in model.free_RVs
        if is_discrete(z) and z.name not in unobserved
    ]


def dependents(model: pm.Model, z: Variable, blockers: frozenset[Variable]) -> list[Variable]:
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


def term_shapes(model: pm.Model, graphs: list[Variable], point: dict) -> list[tuple[int, ...]]:
    """Return the shapes of ``graphs``: static ones as they are, others at the initial point."""
    static = [g.type.shape for g in graphs]
    if all(None not in shape for shape in static):
        return [tuple(int(s) for s in shape) for shape in static]
    inputs = [v for v in model.value_vars if v.name in point]
    fn = compile_with_data(
        model, inputs, [g.shape for g in graphs], name="term shapes", mode=CHECK_MODE
    )
    return [tuple(int(s) for s in shp) for shp in fn(*(point[v.name] for v in inputs))]


def group_terms(
    model, variables, by_observed: dict[Variable, Imputed], point, logp_of=None
) -> list[Term]:
    """Return the elementwise log density of each of ``variables`` (missing ones integrated out).

    ``logp_of(var)``, if given, returns a variable's elementwise log density (no Jacobian).
    """
    if logp_of is None:

        def logp_of(var):
            return model.logp(vars=[var], jacobian=False, sum=False)[0]

    terms = []
    for var in variables:
        imp = by_observed.get(var)
        if imp is not None and imp.partial:
            graph = mvnormal_rows(model, imp)[0]
            terms.append(Term(imp.name, graph, imp.mask.shape[:-1]))
            continue
        graph = logp_of(var)
        if imp is not None:
            positions = np.flatnonzero(~imp.mask.ravel())
            terms.append(Term(imp.name, graph, (positions.size,), positions, imp.mask.shape))
        else:
            terms.append(Term(var.name, graph, None, var=var))
    shapes = term_shapes(model, [t.graph for t in terms], point)
    return [
        t if t.shape is not None else replace(t, shape=s)
        for t, s in zip(terms, shapes, strict=True)
    ]


def build_explicit(ctx, draft: LatentDraft) -> tuple[Latent, list[Term]]:
    """Build log p(z_i = k, deps_i | θ) of shape (*z.shape, K), in value-variable terms.

    Also returns the unbatched terms it was built from, for the separability check.
    """
    model, z, deps = ctx.model, draft.rv, list(draft.absorbs)
    name = z.name
    support = finite_support(z, name)
    zv = model.rvs_to_values[z]
    z_shape = tuple(np.shape(ctx.point[zv.name]))
    terms = group_terms(model, [z, *deps], ctx.by_observed, ctx.point, ctx.logp_of)
    joint = enumerated_joint(model, zv, support, z_shape, terms, name)
    log_joint = pt.moveaxis(joint, 0, -1)
    observed = tuple(
        ctx.by_observed[d].name if d in ctx.by_observed else d.name
        for d in deps
        if d in model.observed_RVs
    )
    n_elements = max(int(np.prod(z_shape)), 1)
    n_values = sum(int(np.size(observed_data(model, d))) for d in deps if d in model.observed_RVs)
    spec = Latent(
        name=name,
        support=support,
        shape=z_shape,
        dims=latent_dims(ctx, name, deps, z_shape),
        support_dim=f"{name}_support",
        kind=type(z.owner.op).__name__.removesuffix("RV"),
        dependents=tuple(d.name for d in deps),
        observed=observed,
        values_per_element=max(n_values // n_elements, 1),
        log_joint=log_joint,  # (*z_shape, K)
    )
    return spec, terms


def enumerated_joint(model, zv, support, z_shape, terms: list[Term], name: str) -> Variable:
    """Sum of the terms with every element of z at each support value: (K, *z_shape).

    A dependent whose parameters take z through gathers gets one density per support value,
    built as PyMC's Mixture builds a component's (`pm_em.reading.component_logp`); other
    terms are vectorized over the support.
    """
    n_support = support.size
    values = enumerated(zv, support, z_shape)
    parts = []
    for term in terms:
        logps = None if term.var is None else component_logps(model, zv, term.var, support)
        if logps is not None:
            batched = pt.stack([pt.broadcast_to(lp, term.shape) for lp in logps])
        else:
            # Entry [k, ...] is the term with every element of z at support value k.
            batched = vectorize_graph(term.graph, replace={zv: values})
        batched = pt.broadcast_to(batched, (n_support, *term.shape)).astype("float64")
        shape = term.shape
        if term.positions is not None:
            full = pt.zeros((n_support, int(np.prod(term.full_shape))), dtype="float64")
            full = pt.set_subtensor(full[:, term.positions], batched)
            batched, shape = full.reshape((n_support, *term.full_shape)), term.full_shape
        parts.append(align(batched, shape, z_shape, term.name, name))
    return pt.add(*parts)


def latent_dims(ctx, name: str, deps, z_shape) -> tuple[str, ...]:
    """Dim names of the latent's elements: its own, an observed dependent's, or generated."""
    dims = ctx.model.named_vars_to_dims.get(name) or _dims_from_dependents(ctx, deps, z_shape)
    return tuple(
        d if d is not None else f"{name}_dim_{i}"
        for i, d in enumerate(dims or [None] * len(z_shape))
    )


def _dims_from_dependents(ctx, deps, z_shape) -> tuple | None:
    """Borrow the latent's dims from an observed dependent's, so both share the model's coords."""
    model, nz = ctx.model, len(z_shape)
    for dep in deps:
        imp = ctx.by_observed.get(dep)
        name = imp.name if imp is not None else dep.name
        dep_dims = model.named_vars_to_dims.get(name)
        data = imp.data if imp is not None else observed_data(model, dep)
        if not dep_dims or data is None or not nz:
            continue
        how = axes_map(tuple(data.shape), z_shape)
        if how in ("same", "leading"):
            return tuple(dep_dims[:nz])
        if how == "trailing":
            return tuple(dep_dims[-nz:])
    return None
