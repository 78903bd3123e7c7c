"""Compiled functions reused by every graph of the same structure: `cached_function`.

Most of the time a new model spends before its first EM iteration is PyTensor rewriting its
graphs (about 90 % of a compile with a warm C cache). A new model of the same structure (the
same distributions, priors, transforms and shapes; other data) has the same graphs once its
data are inputs (`pm_em.compiling.compile_with_data`), so its functions can be the ones
compiled for the first: `cached_function` keys each compile on the graph's structure and
returns the function already compiled for an equal graph.

The key is PyTensor's own structural identity of a graph, a
`pytensor.graph.fg.FrozenFunctionGraph` of the inputs and outputs: two graphs are equal when
their nodes apply equal Ops (PyTensor's ``Op.__eq__``: the Op's type and its properties,
inner graphs included) to equal inputs, with equal output types (dtype and static shape,
hence broadcastable pattern), and their constants are equal in type and value (a prior's
hyperparameter, a transform's bounds). That is the equality PyTensor's own merge rewrite
relies on to fold two nodes into one, so a function is served only for a graph that
computes the same thing; together with the compile options and the PyTensor settings that
change what a compile produces. A graph with a variable that is neither an input nor a
constant (a shared variable left in it) is compiled without the cache.

A compiled function holds storage for its inputs and outputs while it runs, so every call
of a shared function takes its lock: two fits of models of the same structure in two
threads take turns rather than corrupt each other's values.

A function compiled for a Python-linked mode (no C thunks: `pm_em.compiling.PY_MODE`,
``"FAST_COMPILE"``) is compiled with no C compiler configured: PyTensor's constant folding
otherwise evaluates each folded node with a C thunk, which on a fresh machine (an empty
compile cache) means one C module per folded Op, seconds each, for values the Python
implementation computes alike.

Set ``PM_EM_COMPILE_CACHE=0`` to compile every graph anew; `clear` empties the cache.
"""

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import pytensor
from pymc.pytensorf import compile as compile_pymc
from pytensor.compile.mode import get_mode
from pytensor.graph.basic import Variable
from pytensor.graph.fg import FrozenFunctionGraph
from pytensor.link.vm import VMLinker

from pm_em.timing import stage

__all__ = ["CachedFunction", "cache_info", "cached_function", "clear", "no_c_compiler"]

# Compiled functions kept (least recently used dropped first): a fit compiles about ten.
MAX_ENTRIES = 256

_ENTRIES: "OrderedDict[tuple, CachedFunction]" = OrderedDict()
_GUARD = threading.Lock()
_STATS = {"hits": 0, "misses": 0, "uncacheable": 0}


class CachedFunction:
    """A compiled PyTensor function, called under its own lock (it may be shared).

    Attributes
    ----------
    fn : pytensor.compile.function.types.Function
        The compiled function (e.g. to pickle for Dask workers).
    """

    def __init__(self, fn):
        self.fn = fn
        self._lock = threading.Lock()

    def __call__(self, *args):
        """Call the compiled function."""
        with self._lock:
            return self.fn(*args)


def _enabled() -> bool:
    return os.environ.get("PM_EM_COMPILE_CACHE", "1") != "0"


def _settings() -> tuple:
    """PyTensor settings that change what a compile produces (beyond the options given)."""
    config = pytensor.config
    return (
        config.floatX,
        config.mode,
        config.linker,
        config.optimizer,
        config.optimizer_excluding,
        config.optimizer_including,
        config.cast_policy,
    )


def _options(compile_kwargs: dict) -> tuple:
    """Return the compile options hashable (a mode object is keyed by identity)."""
    items = []
    for name, value in sorted(compile_kwargs.items()):
        try:
            hash(value)
        except TypeError:
            value = ("unhashable", id(value))
        items.append((name, value))
    return tuple(items)


def _python_linked(mode) -> bool:
    """Whether ``mode`` runs every operation in Python (a VM linker without C thunks)."""
    try:
        linker = get_mode(mode).linker
    except (ValueError, TypeError):
        return False
    return isinstance(linker, VMLinker) and not linker.c_thunks


def no_c_compiler(mode):
    """Context: no C compiler while compiling for ``mode`` if it is Python-linked.

    See the module docstring; for every compile of a Python-linked function in pm_em, cached
    or not.
    """
    if _python_linked(mode) and pytensor.config.cxx:
        return pytensor.config.change_flags(cxx="")
    return contextlib.nullcontext()


def _key(inputs, outputs, recipe, compile_kwargs) -> tuple | None:
    try:
        graph = FrozenFunctionGraph.from_io(list(inputs), list(outputs))
    except ValueError:  # a variable that is neither an input nor a constant
        return None
    return (graph, recipe, _options(compile_kwargs), _settings())


def cached_function(
    inputs: Sequence[Variable],
    outputs: Sequence[Variable],
    *,
    name: str,
    grad_of: int | None = None,
    disconnected_inputs: str = "raise",
    **compile_kwargs,
) -> Callable:
    """Compile ``inputs -> outputs``, or return the function compiled for an equal graph.

    Parameters
    ----------
    inputs, outputs : sequence of Variable
    name : str
        What the function is (``"estep"``, ``"q"``, ...), for `pm_em.timing`.
    grad_of : int, optional
        Also return the gradient of ``outputs[grad_of]`` with respect to ``inputs[0]``, right
        after it. The gradient's graph is built only when the function is compiled (the key
        is the graph it is taken of): building it costs as much as a small compile.
    disconnected_inputs : {"raise", "warn", "ignore"}, default "raise"
        Passed to `pytensor.grad`.
    **compile_kwargs
        Passed to `pymc.pytensorf.compile` (e.g. ``mode``, ``on_unused_input``).

    Returns
    -------
    CachedFunction
        ``f(*input_values) -> list of outputs``, with the compiled function as ``f.fn``.
    """
    recipe = None if grad_of is None else ("grad", grad_of, disconnected_inputs)
    key = _key(inputs, outputs, recipe, compile_kwargs) if _enabled() else None
    if key is not None:
        with _GUARD:
            hit = _ENTRIES.get(key)
            if hit is not None:
                _ENTRIES.move_to_end(key)
                _STATS["hits"] += 1
                return hit
    outputs = list(outputs)
    with stage(f"compile {name}"), no_c_compiler(compile_kwargs.get("mode")):
        if grad_of is not None:
            grad = pytensor.grad(
                outputs[grad_of], inputs[0], disconnected_inputs=disconnected_inputs
            )
            outputs.insert(grad_of + 1, grad)
        fn = CachedFunction(compile_pymc(list(inputs), outputs, **compile_kwargs))
    with _GUARD:
        if key is None:
            _STATS["uncacheable"] += 1
            return fn
        _STATS["misses"] += 1
        _ENTRIES[key] = fn
        while len(_ENTRIES) > MAX_ENTRIES:
            _ENTRIES.popitem(last=False)
    return fn


def cache_info() -> dict:
    """Return the counts of hits, misses (compiled, kept) and uncacheable graphs, and entries."""
    with _GUARD:
        return {**_STATS, "entries": len(_ENTRIES)}


def clear() -> None:
    """Forget every compiled function (and reset the counts)."""
    with _GUARD:
        _ENTRIES.clear()
        for name in _STATS:
            _STATS[name] = 0
