"""Reading the graph of an observed variable's parameters: constants, broadcasts, ``P[z]``."""

from dataclasses import dataclass

import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.traversal import ancestors
from pytensor.scalar.basic import Second
from pytensor.tensor.elemwise import DimShuffle, Elemwise
from pytensor.tensor.random.op import RandomVariable
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.subtensor import AdvancedSubtensor

__all__ = ["NoMatch", "Role", "constant_value", "data_graph", "read_role", "strip_expand"]


class NoMatch(Exception):
    """Raised inside the matchers when a structure is not the expected one."""


def strip_expand(var: Variable) -> Variable:
    """Remove the broadcasts PyMC adds to batch a parameter.

    Leading broadcast axes (``ExpandDims``), and ``second(other, var)``, which broadcasts
    ``var`` against ``other`` (MvNormal's mean against its covariance).
    """
    while var.owner is not None:
        op = var.owner.op
        if isinstance(op, DimShuffle) and op.is_left_expand_dims:
            var = var.owner.inputs[0]
        elif isinstance(op, Elemwise) and isinstance(op.scalar_op, Second):
            var = var.owner.inputs[1]
        else:
            break
    return var


def constant_value(var: Variable, _depth: int = 0) -> np.ndarray | None:
    """Return the value of a graph that depends on no variable, else None.

    Evaluates the small constant graphs of hyperparameters (``ExpandDims(5.0)``,
    ``Reciprocal(2.0)``) node by node with each Op's ``perform``: no compilation, and none of
    the graph rewrites `constant_fold` would run (a tenth of a second per call).
    """
    if isinstance(var, Constant):
        return np.asarray(var.data)
    node = var.owner
    if node is None or _depth > 20 or isinstance(node.op, RandomVariable):
        return None
    inputs = [constant_value(v, _depth + 1) for v in node.inputs]
    if any(v is None for v in inputs):
        return None
    storage = [[None] for _ in node.outputs]
    try:
        node.op.perform(node, inputs, storage)
    except Exception:  # an Op without a Python implementation: not worth folding
        return None
    return np.asarray(storage[node.outputs.index(var)][0])


@dataclass(frozen=True)
class Role:
    """How one distribution parameter of an observed variable relates to the latent ``z``.

    ``kind`` is ``"indexed"`` (``P[z]``, one value per support value), ``"shared"`` (``P``,
    the same for every component) or ``"const"``. ``rv`` is the free variable ``P``; for a
    constant, ``value`` broadcasts against the (K,) components.
    """

    kind: str
    rv: Variable | None = None
    value: np.ndarray | None = None


def read_role(param: Variable, z: Variable, free: set[Variable], n_support: int) -> Role | None:
    """Say how the distribution parameter ``param`` depends on the latent ``z``, or None.

    ``P[z]`` with ``P`` a free variable (or a constant of length ``n_support``) is
    ``"indexed"``; a free variable itself is ``"shared"``; a scalar constant is ``"const"``.
    Anything else (another function of ``z``, a graph of several variables) is None.
    """
    param = strip_expand(param)
    node = param.owner
    if (
        node is not None
        and isinstance(node.op, AdvancedSubtensor)
        and tuple(node.op.idx_list) == (0,)
        and len(node.inputs) == 2
        and node.inputs[1] is z
    ):
        base = strip_expand(node.inputs[0])
        if base in free:
            return Role("indexed", rv=base)
        value = constant_value(base)
        if value is not None and value.ndim >= 1 and value.shape[0] == n_support:
            return Role("const", value=value.astype("float64"))
        return None
    if param in free:
        return Role("shared", rv=param)
    if z in set(ancestors([param])):
        return None
    value = constant_value(param)
    if value is not None and value.size == 1:
        return Role("const", value=value.astype("float64").reshape(()))
    return None


def data_graph(model, y: Variable, dtype: str | None = "float64") -> Variable:
    """Return the observed values of ``y`` as a graph (constant or shared), cast to ``dtype``.

    One entry (or one row) per latent element: the leading axes of a latent with several
    (a batch of chains, (sequence, time)) are flattened, in the order the responsibilities
    are flattened to (n, K). Raises `NoMatch` when the values are neither constant nor
    shared (the family then does not apply).
    """
    value = model.rvs_to_values[y]
    if not isinstance(value, Constant | TensorSharedVariable):
        raise NoMatch
    value = pt.as_tensor(value)
    event = y.owner.op.ndim_supp
    if value.type.ndim > event + 1:
        value = value.reshape((-1, *tuple(value.shape)[value.type.ndim - event :]))
    return value.astype(dtype) if dtype else value
