"""The K component distributions of an observed variable, read alike from both forms of mixture.

A closed-form family (`normal`, `mvnormal`, `counts`, `categorical`) recognizes components of
one distribution and how each of their parameters varies over the components. Two forms of a
mixture give them:

- explicit: ``z = pm.Categorical(...)``, ``y = pm.Normal(mu[z], sigma[z])``: the parameter of
  component k is ``mu[k]``, read from the gather ``mu[z]``;
- marginal (`pm.NormalMixture`, `pm.Mixture`): component k is the k-th distribution of the
  list (``pm.Normal.dist(mu[k], sigma[k])``), or the k-th slice along the component axis of
  one batched distribution (``pm.Normal.dist(mu, sigma, shape=(n, K))``).

`Components` holds, per distribution parameter, the `Role` it plays (one value per component
of a free variable, a free variable shared by all components, a constant), so that every
family matcher reads one structure whatever the form of the model.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pytensor.graph.basic import Variable
from pytensor.graph.op import Op
from pytensor.tensor.subtensor import Subtensor

from pm_em.closed_form.block import Context
from pm_em.closed_form.graph import Role, constant_value, read_role, strip_expand
from pm_em.reading.component_logp import broadcasts_only, params_at
from pm_em.reading.mixture_graph import MarginalMixture

__all__ = ["Components", "explicit_components", "mixture_components"]


@dataclass(frozen=True)
class Components:
    """The component distributions of observed variable ``y``, one family for all K.

    Attributes
    ----------
    op : Op
        The distribution's Op (``NormalRV``, ...); `registry.COMPONENTS` is keyed on its type.
    y : Variable
        The observed variable whose density the components make (its data, and the variable
        that a claimed parameter may enter alone).
    roles : tuple of Role or None
        Per distribution parameter, in the Op's order: how it varies over the components
        (None: a structure the closed forms do not read).
    constants : tuple of ndarray or None
        Per distribution parameter, its value when it is a constant that is the same for
        every component (e.g. a Binomial's trials), broadcastable to the data; else None.
    n_support : int
        The number of components K.
    component : callable or None
        ``component(k) -> params``: component k's distribution parameters in the Op's order,
        graphs of the model's random variables with the component's core shape (leading
        length-1 axes allowed), for families whose parameters are graphs of several free
        variables (an MvNormal covariance from an LKJ Cholesky factor); None when they
        cannot be read per component.
    element_ndim : int
        The number of axes of the latent's elements (1 for a mixture over observations; 2
        for a chain over (sequence, time)); the data have these axes, plus the components'
        own core axes (one for MvNormal rows).
    """

    op: Op
    y: Variable
    roles: tuple[Role | None, ...]
    constants: tuple[np.ndarray | None, ...]
    n_support: int
    component: Callable[[int], tuple[Variable, ...]] | None = None
    element_ndim: int = 1


def explicit_components(ctx: Context, y: Variable, z: Variable, n_support: int) -> Components:
    """Read ``y``'s components given explicit latent ``z`` (e.g. ``y ~ Normal(mu[z], s[z])``)."""
    params = y.owner.op.dist_params(y.owner)
    roles = tuple(read_role(p, z, ctx.free, n_support) for p in params)
    constants = tuple(
        constant_value(p) if role is None or role.kind == "const" else None
        for p, role in zip(params, roles, strict=True)
    )
    component = None
    if None not in z.type.shape and broadcasts_only(list(params), z):

        def component(k: int) -> tuple[Variable, ...]:
            return tuple(params_at(list(params), z, k))

    return Components(
        y.owner.op, y, roles, constants, n_support, component, element_ndim=z.type.ndim
    )


def mixture_components(ctx: Context, mixture: MarginalMixture, n_support: int) -> Components | None:
    """Read the components of a marginal mixture; None unless all are of one family.

    A point mass (zero-inflated families) or a hurdle's truncated part is no family of the
    closed forms, so those mixtures leave their components to the numeric M-step.
    """
    comps = mixture.components
    op = comps[0].owner.op
    if mixture.kind != "Mixture" or any(type(c.owner.op) is not type(op) for c in comps):
        return None
    if mixture.rv.type.ndim - op.ndim_supp != 1:  # one axis of mixture elements, as the
        return None  # families' statistics expect (no flattened (n, d) univariate data)
    per_param = list(zip(*(c.owner.op.dist_params(c.owner) for c in comps), strict=True))
    core = tuple(op.ndims_params)
    if mixture.batched:
        roles = tuple(
            _batched_role(ctx, params[0], n_dim, n_support)
            for params, n_dim in zip(per_param, core, strict=True)
        )
        constants = tuple(_batched_constant(params[0]) for params in per_param)
        component = None
    else:
        roles = tuple(_listed_role(ctx, params, n_support) for params in per_param)
        constants = tuple(_listed_constant(params) for params in per_param)

        def component(k: int) -> tuple[Variable, ...]:
            return tuple(params[k] for params in per_param)

    return Components(op, mixture.rv, roles, constants, n_support, component)


def _batched_role(ctx: Context, param: Variable, core_ndim: int, n_support: int) -> Role | None:
    """Role of a batched component's parameter: the component axis leads its core dims.

    A parameter with one more dim than its core (``mu`` of shape (K,), an MvNormal mean of
    shape (K, d)) has one value per component; one with its core dims only is shared.
    """
    param = strip_expand(param)
    if param in ctx.free:
        shape = ctx.shapes[param.name]
        if len(shape) == core_ndim + 1 and shape[0] == n_support:
            return Role("indexed", rv=param)
        if len(shape) == core_ndim:
            return Role("shared", rv=param)
        return None
    value = constant_value(param)
    if value is None:
        return None
    if value.ndim == core_ndim + 1 and value.shape[0] == n_support:
        return Role("const", value=value.astype("float64"))
    if value.size == 1:
        return Role("const", value=value.astype("float64").reshape(()))
    return None


def _listed_role(ctx: Context, params: tuple[Variable, ...], n_support: int) -> Role | None:
    """Role of a parameter given per component: ``P[k]`` for every k, one ``P``, or constants."""
    stripped = [strip_expand(p) for p in params]
    bases = [_indexed_base(p, k, n_support) for k, p in enumerate(stripped)]
    if bases[0] is not None and bases[0] in ctx.free and all(b is bases[0] for b in bases):
        return Role("indexed", rv=bases[0])
    if stripped[0] in ctx.free and all(p is stripped[0] for p in stripped):
        return Role("shared", rv=stripped[0])
    values = [constant_value(p) for p in stripped]
    if any(v is None for v in values) or len({v.shape for v in values}) != 1:
        return None
    if all(v.size == 1 for v in values) and all(np.array_equal(v, values[0]) for v in values):
        return Role("const", value=values[0].astype("float64").reshape(()))
    if values[0].ndim <= 2:  # a scalar, vector or matrix per component: stack them
        return Role("const", value=np.stack(values).astype("float64"))
    return None


def _indexed_base(param: Variable, k: int, n_support: int) -> Variable | None:
    """``P`` if ``param`` is ``P[k]`` (a constant integer index on the first axis), else None."""
    node = param.owner
    if node is None or not isinstance(node.op, Subtensor) or len(node.op.idx_list) != 1:
        return None
    if isinstance(node.op.idx_list[0], slice) or len(node.inputs) != 2:
        return None
    index = constant_value(node.inputs[1])
    if index is None or index.ndim or int(index) not in (k, k - n_support):
        return None
    return strip_expand(node.inputs[0])


def _batched_constant(param: Variable) -> np.ndarray | None:
    value = constant_value(strip_expand(param))
    return value if value is not None and value.ndim == 0 else None


def _listed_constant(params: tuple[Variable, ...]) -> np.ndarray | None:
    values = [constant_value(strip_expand(p)) for p in params]
    if any(v is None for v in values) or len({v.shape for v in values}) != 1:
        return None
    return values[0] if all(np.array_equal(v, values[0]) for v in values) else None
