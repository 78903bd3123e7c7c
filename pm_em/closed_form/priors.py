"""The priors a closed-form update understands, recognized from the graph, one entry per Op.

Each entry of `PRIORS` maps the constant hyperparameters of a free variable's prior to a
`Prior` (a kind and its arguments), or None when the variant has no closed form. A prior
not listed here leaves its variable to the numeric M-step.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pymc.distributions.continuous import FlatRV, HalfFlatRV
from pytensor.graph.basic import Variable
from pytensor.tensor.random.basic import (
    BetaRV,
    DirichletRV,
    ExponentialRV,
    GammaRV,
    HalfNormalRV,
    InvGammaRV,
    NormalRV,
)

from pm_em.closed_form.graph import constant_value

__all__ = ["PRIORS", "Prior", "read_prior"]


@dataclass(frozen=True)
class Prior:
    """A free variable's prior, recognized: its kind and constant hyperparameters."""

    kind: str
    args: tuple[np.ndarray, ...] = ()


PRIORS: dict[type, Callable[[tuple[np.ndarray, ...]], Prior | None]] = {
    FlatRV: lambda args: Prior("flat"),
    HalfFlatRV: lambda args: Prior("flat"),
    NormalRV: lambda args: Prior("normal", args),
    HalfNormalRV: lambda args: Prior("halfnormal", args[1:]) if np.all(args[0] == 0) else None,
    InvGammaRV: lambda args: Prior("invgamma", args),
    DirichletRV: lambda args: Prior("dirichlet", args),
    BetaRV: lambda args: Prior("beta", args),
    GammaRV: lambda args: Prior("gamma", args),  # (shape α, scale θ)
    ExponentialRV: lambda args: Prior("gamma", (np.ones_like(args[0]), args[0])),
}


def read_prior(rv: Variable, shape: tuple[int, ...]) -> Prior | None:
    """Recognize ``rv``'s prior; None if its Op is not registered or a parameter is random.

    The hyperparameters are broadcast to ``shape``, the variable's (constrained) shape.
    """
    make = PRIORS.get(type(rv.owner.op))
    if make is None:
        return None
    params = [constant_value(p) for p in rv.owner.op.dist_params(rv.owner)]
    if any(p is None for p in params):
        return None
    prior = make(tuple(np.asarray(p, dtype="float64") for p in params))
    if prior is None:
        return None
    try:
        # A Dirichlet's parameter has the variable's shape; every other is elementwise.
        args = tuple(np.broadcast_to(a, shape).copy() for a in prior.args)
    except ValueError:
        return None
    return Prior(prior.kind, args)
