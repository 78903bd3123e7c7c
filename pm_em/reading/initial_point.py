"""A model's initial point, evaluated without compiling: `initial_point`.

PyMC compiles a function for a model's initial point each time one is asked for
(`pymc.initial_point.make_initial_point_fn`, in ``FAST_COMPILE`` mode): about a tenth of a
second for a mixture, several times per fit, for a graph evaluated once. The same graph
(PyMC's own, with its strategies, ``initval``s and overrides, in the transformed space) is
evaluated here node by node (`pm_em.compiling.evaluate`), its random generators seeded as
PyMC seeds them, so the values are PyMC's.
"""

from collections.abc import Mapping

import pymc as pm
from pymc.initial_point import make_initial_point_expression
from pymc.model.core import Point
from pymc.pytensorf import find_rng_nodes, replace_rng_nodes, reseed_rngs
from pymc.util import get_transformed_name

from pm_em.compiling import evaluate

__all__ = ["initial_point"]


def initial_point(
    model: pm.Model, overrides: Mapping | None = None, seed=None
) -> dict[str, object]:
    """Return ``model``'s initial point in the transformed space, as `pm.Model.initial_point`.

    Parameters
    ----------
    model : pm.Model
    overrides : dict of {Variable: value or strategy}, optional
        Start values in place of the model's ``initval``s (no jitter is added).
    seed : optional
        Seed of the prior draws of variables without a support point (PyMC's meaning).

    Returns
    -------
    dict of {str: ndarray}
        Value variable name -> value.
    """
    strategies = {**model.rvs_to_initial_values, **dict(overrides or {})}
    graphs = make_initial_point_expression(
        free_rvs=model.free_RVs,
        rvs_to_transforms=model.rvs_to_transforms,
        initval_strategies=strategies,
        jitter_rvs=set(),
        return_transformed=True,
    )
    # Fresh generators, seeded as PyMC seeds its initial-point function's.
    graphs = replace_rng_nodes(graphs)
    reseed_rngs(find_rng_nodes(graphs), seed)
    names = []
    for rv in model.free_RVs:
        transform = model.rvs_to_transforms[rv]
        names.append(get_transformed_name(rv.name, transform) if transform is not None else rv.name)
    return Point(dict(zip(names, evaluate(graphs), strict=True)), model=model)
