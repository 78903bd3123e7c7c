"""How pm_em compiles its graphs: backends, one-off checks, data as inputs, lazy functions.

The bottom layer of the package: every module that compiles a pytensor graph takes its
defaults and helpers from here.

- `default_compile_kwargs`: the options `pm_em.fit` uses when given none (``"auto"``:
  `resolve_mode` picks PyTensor's Python linker for small problems and C "CVM" for larger
  ones, Numba for the per-iteration E-step of a large closed-form model).
- `PY_MODE`: PyTensor's full rewrites with Python-linked thunks (numpy per operation): no C
  compile at all, so nothing to build on a fresh machine.
- `CHECK_MODE`: Python-linked compilation with few rewrites for graphs evaluated once or
  twice (shape checks, start values, the estimate's values), which must not pay a full
  rewrite or a backend compile.
- `compile_with_data`: the observed values (and any other large constant) lifted out of the
  graph into inputs of the compiled function, bound to their values by a thin wrapper. Compile
  caches keyed on the graph (Numba's keys include constants) then hit for a new data set of
  the same model, and no rewrite spends time folding large constants.
  The compiled function is shared by every graph of the same structure
  (`pm_em.compile_cache`).
- `LazyFunction`: compiled on first call, so a fit that never needs a function never pays.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.compile.builders import OpFromGraph
from pytensor.compile.mode import Mode
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.replace import clone_replace
from pytensor.graph.rewriting.db import RewriteDatabaseQuery
from pytensor.graph.traversal import ancestors, toposort
from pytensor.link.vm import VMLinker
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.variable import TensorConstant

from pm_em.compile_cache import cached_function, no_c_compiler

__all__ = [
    "AUTO_C_SIZE",
    "CHECK_MODE",
    "PY_MODE",
    "LazyFunction",
    "compile_with_data",
    "default_compile_kwargs",
    "evaluate",
    "graph_building",
    "pytensor_compile_kwargs",
    "resolve_mode",
    "stats_mode",
]

# Python-linked compilation: one-off checks run once per model, and must not pay the
# backend's (Numba's or C's) compile time.
CHECK_MODE = "FAST_COMPILE"

# Every rewrite of PyTensor's default mode (stabilization, specialization, in-place) but the
# fusion of elementwise operations, whose fused Ops have no fast Python implementation, with
# each operation run by its Python (numpy) implementation. Measured (./dev bench --only
# speed): an E-step at n = 1e3 takes ~0.5 ms (CVM ~0.06 ms) and at 1e4 about 2x CVM's, while
# the first fit on a fresh machine (an empty compile cache) needs no C compile: ~2 s instead
# of ~20-30 s for the demo's models.
PY_MODE = Mode(
    linker=VMLinker(use_cloop=False, c_thunks=False),
    optimizer=RewriteDatabaseQuery(include=["fast_run"], exclude=["fusion", "cxx_only"]),
)

# ``mode="auto"``: `PY_MODE` below this many values (latent elements times support values,
# plus observed values no latent takes), C ("CVM") from it on, where C's faster iterations
# repay compiling. 1-D k = 3 at n = 1e4 is 3e4 values.
AUTO_C_SIZE = 20_000

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


def _shared_data(outputs: Sequence[Variable]) -> list[TensorSharedVariable]:
    """``pm.Data`` containers (and any other tensor shared variable) the outputs read."""
    return list(
        dict.fromkeys(v for v in ancestors(list(outputs)) if isinstance(v, TensorSharedVariable))
    )


def compile_with_data(
    model: pm.Model,
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    *,
    name: str = "function",
    grad_of: int | None = None,
    disconnected_inputs: str = "raise",
    **compile_kwargs,
) -> Callable[..., list]:
    """Compile ``inputs -> outputs`` with the data as inputs of the compiled function.

    The observed values and other large constants become inputs bound to their values, and
    ``pm.Data`` containers inputs read at every call (so `pm.set_data` is seen). The graph
    is then the same for every model of the same structure, and the compiled function is
    reused across them (`pm_em.compile_cache.cached_function`).

    Parameters
    ----------
    model : pm.Model
        Tells which constants are observed data.
    inputs, outputs : sequence of Variable
    name : str, default "function"
        What the function is, for `pm_em.timing`.
    grad_of : int, optional
        Also return the gradient of ``outputs[grad_of]`` with respect to ``inputs[0]``, right
        after it (built only when compiled: see `pm_em.compile_cache.cached_function`).
    disconnected_inputs : str, default "raise"
        Passed to `pytensor.grad`.
    **compile_kwargs
        Passed to `pymc.pytensorf.compile` (e.g. ``mode``).

    Returns
    -------
    callable
        ``f(*input_values) -> list of outputs``; the data values are bound inside.
    """
    constants = _data_constants(model, outputs)
    shared = _shared_data(outputs)
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
    # A shared variable's type is kept: its static shape is what the graph was built for.
    lifted_shared = [s.type(name=f"shared_{i}") for i, s in enumerate(shared)]
    if constants or shared:
        replace = dict(zip([*constants, *shared], [*lifted, *lifted_shared], strict=True))
        outputs = clone_replace(list(outputs), replace=replace, rebuild_strict=False)
    values = [np.asarray(c.data) for c in constants]
    fn = cached_function(
        [*inputs, *lifted, *lifted_shared],
        list(outputs),
        name=name,
        grad_of=grad_of,
        disconnected_inputs=disconnected_inputs,
        on_unused_input="ignore",
        **compile_kwargs,
    )

    def call(*args):
        return fn(*args, *values, *(s.get_value(borrow=True) for s in shared))

    call.fn = fn.fn  # the compiled pytensor function, for profiling
    return call


def default_compile_kwargs() -> dict:
    """Compile options used when `pm_em.fit` gets none: see the module docstring of pm_em.

    ``mode="auto"`` (`resolve_mode`): Python-linked thunks (`PY_MODE`) for small problems,
    which need no C compile, and C ("CVM") from `AUTO_C_SIZE` values on. Measured by
    ``./dev bench`` (issue 5): C compiles fastest of the compiled backends and its cache is
    keyed on the Ops, so a new model or data set costs little; the lean E-step of a
    closed-form model, which runs every iteration and whose graph is the same for every data
    set and size, runs faster in Numba at large n, so there it alone is compiled with Numba
    (``lean_mode="auto"``: from `pm_em.engine.mstep.AUTO_NUMBA_SIZE` latent elements on).
    """
    return {"mode": "auto", "lean_mode": "auto"}


def resolve_mode(mode, size: int):
    """Return the PyTensor mode for ``mode``: ``"auto"`` by ``size`` (`AUTO_C_SIZE`), else itself.

    Parameters
    ----------
    mode : str or pytensor Mode
    size : int
        The problem's number of values (see `AUTO_C_SIZE`).
    """
    if isinstance(mode, str) and mode == "auto":
        return "CVM" if size >= AUTO_C_SIZE else PY_MODE
    return mode


def stats_mode():
    """Return the mode of small graphs evaluated many times per iteration (statistics-sized).

    C ("CVM"): a call costs a tenth of the Python linker's, and such graphs (a few dozen
    operations on arrays of size K · d²) compile a few small C modules; the Python linker
    when no C compiler is configured.
    """
    return "CVM" if pytensor.config.cxx else PY_MODE


def pytensor_compile_kwargs() -> dict:
    """Compile options for functions compiled outside the EM loop, and for `pm.sample`.

    They take only ``mode``: C ("CVM"), whose cache is keyed on the Ops (PyMC's own default,
    Numba, recompiles for every new data set).
    """
    return {"mode": "CVM"}


def _interpret(outputs: list[Variable], values: dict) -> list:
    """Evaluate ``outputs`` node by node; ``values`` holds the roots already known."""

    def value_of(var):
        if var in values:
            return values[var]
        if isinstance(var, Constant):
            return var.data
        if isinstance(var, SharedVariable):
            return var.get_value(borrow=True)
        raise ValueError(f"{var} is not computable from constants and shared variables")

    for node in toposort(outputs):
        inputs = [value_of(v) for v in node.inputs]
        if isinstance(node.op, OpFromGraph):  # its inner graph, not a compiled inner function
            inner = node.op.fgraph
            results = _interpret(list(inner.outputs), dict(zip(inner.inputs, inputs, strict=True)))
        else:
            storage = [[None] for _ in node.outputs]
            node.op.prepare_node(node, None, None, "py")
            node.op.perform(node, inputs, storage)
            results = [cell[0] for cell in storage]
        values.update(zip(node.outputs, results, strict=True))
    return [value_of(v) for v in outputs]


def evaluate(outputs: Sequence[Variable]) -> list[np.ndarray]:
    """Evaluate graphs of constants and shared variables once, node by node, uncompiled.

    Each node's Python implementation is called in turn (an ``OpFromGraph``'s inner graph
    likewise): no rewrite, no linking, which for a graph evaluated once (a model's initial
    point, start values) costs far less than any compile. A node without a Python
    implementation makes it compile the graph in `CHECK_MODE` instead.

    Parameters
    ----------
    outputs : sequence of Variable
        Graphs whose roots are constants and shared variables.

    Returns
    -------
    list of ndarray
    """
    outputs = list(outputs)
    try:
        return [np.asarray(v) for v in _interpret(outputs, {})]
    except NotImplementedError:  # e.g. an Op with C code only: compile, without rewrites
        with no_c_compiler(CHECK_MODE):
            fn = pytensor.function([], outputs, mode=CHECK_MODE, on_unused_input="ignore")
        return [np.asarray(v) for v in fn()]


def graph_building():
    """Context in which pm_em builds and compiles its own graphs: no creation tracebacks.

    PyTensor records a stack trace for every node it creates (``traceback__limit`` frames,
    for error messages naming where a node was made); for the thousands of nodes pm_em's
    graphs, gradients and rewrites create, that is a fifth of a new model's fit, and the
    frames would point inside pm_em. The user's own model keeps its tracebacks.
    """
    return pytensor.config.change_flags(traceback__limit=0)


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
            with graph_building():
                self._fn = self._build()
        return self._fn(*args)
