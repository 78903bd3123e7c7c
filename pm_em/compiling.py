"""How pm_em compiles its graphs: backends, one-off checks, data as inputs, lazy functions.

The bottom layer of the package: every module that compiles a pytensor graph takes its
defaults and helpers from here.

- `default_compile_kwargs`: the options `pm_em.fit` uses when given none (C "CVM" by default,
  Numba for the per-iteration E-step of a large closed-form model).
- `CHECK_MODE`: Python-linked compilation for graphs evaluated once or twice (shape checks,
  start values), which must not pay a backend compile.
- `compile_with_data`: the observed values (and any other large constant) lifted out of the
  graph into inputs of the compiled function, bound to their values by a thin wrapper. Compile
  caches keyed on the graph (Numba's keys include constants) then hit for a new data set of
  the same model, and no rewrite spends time folding large constants.
- `LazyFunction`: compiled on first call, so a fit that never needs a function never pays.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.pytensorf import compile as compile_pymc
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors
from pytensor.tensor.variable import TensorConstant

__all__ = [
    "CHECK_MODE",
    "LazyFunction",
    "compile_with_data",
    "default_compile_kwargs",
    "pytensor_compile_kwargs",
]

# Python-linked compilation: one-off checks run once per model, and must not pay the
# backend's (Numba's or C's) compile time.
CHECK_MODE = "FAST_COMPILE"

# Constants at least this large are treated as data even when they are not an observed
# variable's value (covariates passed as plain arrays, for example).
_LIFT_MIN_SIZE = 512


def _data_constants(model: pm.Model, outputs: Sequence[Variable]) -> list[TensorConstant]:
    observed = {
        id(value)
        for value in (model.rvs_to_values[rv] for rv in model.observed_RVs)
        if isinstance(value, Constant)
    }
    found = []
    for var in ancestors(list(outputs)):
        if not isinstance(var, TensorConstant) or var.type.ndim == 0:
            continue
        if id(var) in observed or var.data.size >= _LIFT_MIN_SIZE:
            found.append(var)
    return list(dict.fromkeys(found))


def compile_with_data(
    model: pm.Model,
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    **compile_kwargs,
) -> Callable[..., list]:
    """Compile ``inputs -> outputs`` with the data as inputs of the compiled function.

    Parameters
    ----------
    model : pm.Model
        Tells which constants are observed data.
    inputs, outputs : sequence of Variable
    **compile_kwargs
        Passed to `pymc.pytensorf.compile` (e.g. ``mode``).

    Returns
    -------
    callable
        ``f(*input_values) -> list of outputs``; the data values are bound inside.
    """
    constants = _data_constants(model, outputs)
    # Static lengths become unknown (a new data set of another size hits the same cache
    # entry); length-1 axes stay broadcastable.
    lifted = [
        pt.tensor(
            dtype=c.type.dtype,
            shape=tuple(1 if s == 1 else None for s in c.type.shape),
            name=f"data_{i}",
        )
        for i, c in enumerate(constants)
    ]
    if constants:
        outputs = clone_replace(
            list(outputs), replace=dict(zip(constants, lifted, strict=True)), rebuild_strict=False
        )
    values = [np.asarray(c.data) for c in constants]
    fn = compile_pymc([*inputs, *lifted], list(outputs), on_unused_input="ignore", **compile_kwargs)

    def call(*args):
        return fn(*args, *values)

    call.fn = fn  # the compiled pytensor function, for profiling
    return call


def default_compile_kwargs() -> dict:
    """Compile options used when `pm_em.fit` gets none: see the module docstring of pm_em.

    Measured by ``./dev bench`` (issue 5): C ("CVM") compiles fastest and its cache is keyed
    on the Ops, so a new model or data set costs little; the lean E-step of a closed-form
    model, which runs every iteration and whose graph is the same for every data set and size,
    runs faster in Numba at large n, so there it alone is compiled with Numba (``"auto"``:
    from `pm_em.engine.mstep.AUTO_NUMBA_SIZE` latent elements on).
    """
    return {"mode": "CVM", "lean_mode": "auto"}


def pytensor_compile_kwargs() -> dict:
    """Return the part of pm_em's default compile options that `pymc.pytensorf.compile` takes.

    `default_compile_kwargs` may carry pm_em-specific keys (e.g. the backend of the lean
    E-step); functions compiled outside the EM loop, and `pm.sample`, take only ``mode``.
    """
    return {k: v for k, v in default_compile_kwargs().items() if k == "mode"}


class LazyFunction:
    """A function compiled on its first call (so that a fit that never needs it never pays).

    Parameters
    ----------
    build : callable
        ``build() -> function``.
    """

    def __init__(self, build: Callable[[], Callable]):
        self._build = build
        self._fn: Callable | None = None

    def __call__(self, *args):
        """Compile if not done yet, then call."""
        if self._fn is None:
            self._fn = self._build()
        return self._fn(*args)
