"""A dependent's density with every element of a latent at one value, as PyMC's Mixture has it.

Enumerating a latent ``z`` by vectorizing the dependent's log density over the support keeps
the model's gathers: ``mu[z]`` becomes a (K, n) array and ``chol[z]`` a (K, n, d, d) one,
so an MvNormal dependent factors and solves K · n covariance matrices (a Python loop over
rows in PyTensor's ``Blockwise``), and its gradient as many again. With every element of z
at the one value k the gather is a broadcast of ``P[k]``, which is how PyMC's own
`pm.Mixture` writes a component: `component_logps` rebuilds the dependent's distribution
with each gather ``P[z]`` replaced by ``P[k]`` (with z's axes kept, of length 1: the
parameter graphs were built for that rank) and asks PyMC for its density at the observed
value. Its static types differ from the model's (which is why the broadcast is not
substituted into the model's own density graph, whose shape checks expect n rows); the
density is PyMC's, and `pm_em.reading.separable.check_separable` compares the enumeration
with the model's own joint density at random points.

It applies when z reaches the distribution's parameters only through elementwise
operations, axis permutations, ``Blockwise`` operations (``matmul``, solves), basic indexing
of trailing axes and gathers of a parameter along its first axis by z itself; anything else
(an index into the rows, a shape check, a reduction) keeps the vectorized enumeration.
"""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.distribution import SymbolicRandomVariable
from pytensor.graph.basic import Variable
from pytensor.graph.traversal import ancestors, toposort
from pytensor.tensor.basic import Join
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.subtensor import AdvancedSubtensor, Subtensor

__all__ = ["MAX_UNROLLED_SUPPORT", "broadcasts_only", "component_logps", "params_at"]

# One density graph per support value: above this many values, enumerating by vectorizing
# (one graph whatever K) compiles faster than K rebuilt densities.
MAX_UNROLLED_SUPPORT = 16

# Ops through which z may reach a parameter: they broadcast length-1 axes as they do n rows.
_BROADCASTING = (Elemwise, DimShuffle, Blockwise)


def _is_gather(node, zv: Variable) -> bool:
    """``P[z]``: advanced indexing of P's first axis by z itself."""
    return (
        isinstance(node.op, AdvancedSubtensor)
        and tuple(node.op.idx_list) == (0,)
        and len(node.inputs) == 2
        and node.inputs[1] is zv
        and zv not in ancestors([node.inputs[0]])
    )


def _keeps_leading_axes(node, zv: Variable) -> bool:
    """Whether the node is a basic index that leaves z's axes whole (``cov[..., -1]``)."""
    if not isinstance(node.op, Subtensor):
        return False
    idx = node.op.idx_list
    whole = slice(None, None, None)
    return len(idx) > zv.type.ndim and all(entry == whole for entry in idx[: zv.type.ndim])


def broadcasts_only(params: list[Variable], zv: Variable) -> bool:
    """Whether ``zv`` reaches ``params`` only through gathers and broadcasting operations.

    ``zv`` is the latent's value variable, or its random variable in graphs of the model's
    random variables.
    """
    for node in toposort(params):
        if not any(inp is zv or zv in ancestors([inp]) for inp in node.inputs):
            continue
        if _is_gather(node, zv) or _keeps_leading_axes(node, zv):
            continue
        if not isinstance(node.op, _BROADCASTING):
            return False
    return True


def _entry(base: Variable, k: int) -> Variable:
    """``base[k]``; of a stack ``pt.stack([P_0, P_1, ...])``, the graph ``P_k`` itself.

    So a component's parameter depends on that component's variables only (e.g. one of K
    LKJ Cholesky factors stacked and gathered as ``pt.stack(chols)[z]``).
    """
    node = base.owner
    if node is not None and isinstance(node.op, Join) and node.op.axis == 0:
        parts = node.inputs
        if len(parts) > k and all(p.type.shape[:1] == (1,) for p in parts):
            part = parts[k]
            if part.owner is not None and isinstance(part.owner.op, DimShuffle):
                if (
                    part.owner.op.is_left_expand_dims
                    and part.owner.inputs[0].type.ndim == part.type.ndim - 1
                ):
                    return part.owner.inputs[0]
            return part[0]
    return base[k]


def params_at(params: list[Variable], zv: Variable, k: int) -> list[Variable]:
    """Return the parameters with z at k: ``P[z]`` as ``P[k]``, z's axes of length 1.

    Only the nodes that depend on z are rebuilt (with their types inferred anew); the rest
    of the graph, random variables included, is shared with the model's.

    Parameters
    ----------
    params : list of Variable
        Graphs in which `broadcasts_only` holds.
    zv : Variable
        The latent (value variable or random variable), of static shape.
    k : int
    """
    memo: dict = {zv: pt.full(zv.type.shape, k, dtype=zv.dtype)}  # any other use of z's value
    nodes = list(toposort(params))
    depends = {zv}
    for node in nodes:
        if _is_gather(node, zv):
            base = node.inputs[0]
            memo[node.outputs[0]] = pt.expand_dims(_entry(base, k), tuple(range(zv.type.ndim)))
            depends.update(node.outputs)
        elif any(inp in depends for inp in node.inputs):
            depends.update(node.outputs)
    for node in nodes:
        if node.outputs[0] in memo or not any(inp in depends for inp in node.inputs):
            continue
        new = node.clone_with_new_inputs([memo.get(inp, inp) for inp in node.inputs], strict=False)
        memo.update(zip(node.outputs, new.outputs, strict=True))
    return [memo.get(p, p) for p in params]


def component_logps(
    model: pm.Model, zv: Variable, dep: Variable, support: np.ndarray
) -> list[Variable] | None:
    """Return ``dep``'s log density at its observed value with z at each support value.

    Parameters
    ----------
    model : pm.Model
    zv : Variable
        The latent's value variable (its shape must be static).
    dep : Variable
        An observed variable of the model that depends on z.
    support : ndarray of shape (K,)

    Returns
    -------
    list of Variable or None
        K graphs in value-variable terms, each with ``dep``'s elementwise shape (or
        broadcastable to it); None when the structure is not the one described in the
        module docstring.
    """
    node = dep.owner
    if (
        dep not in model.observed_RVs
        or node is None
        or not isinstance(node.op, RandomVariable)
        or isinstance(node.op, SymbolicRandomVariable)
        or None in zv.type.shape
        or not 1 < support.size <= MAX_UNROLLED_SUPPORT
    ):
        return None
    op = node.op
    params = model.replace_rvs_by_values(list(op.dist_params(node)))
    if not any(zv in ancestors([p]) for p in params) or not broadcasts_only(params, zv):
        return None
    value = model.rvs_to_values[dep]
    logps = []
    for k in support:
        params_k = params_at(params, zv, int(k))
        rv_k = op.make_node(op.rng_param(node), op.size_param(node), *params_k).default_output()
        logps.append(pm.logp(rv_k, value, warn_rvs=False).astype("float64"))
    return logps
