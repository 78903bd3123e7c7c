"""A model's chunk kernels, compiled and checked once: `chunked_model`.

The kernels are functions of the parameters and of blocks of rows, not of any one data set,
so one `ChunkedModel` serves every fit of the model whatever its ``data=`` (kept in a weak
dictionary like `pm_em.engine.compiled.compile_model`, whose in-memory functions it uses as the
reference of `pm_em.engine.chunk_check.verify_kernel`). Each kernel compiles on first use and
is checked before it is first returned.
"""

import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt

from pm_em.closed_form import match_closed_form
from pm_em.compiling import AUTO_C_SIZE, compile_with_data, default_compile_kwargs, resolve_mode
from pm_em.engine.chunk_check import verify_kernel
from pm_em.engine.chunked import ChunkKernel, KernelGraphs, compile_kernel
from pm_em.engine.compiled import CompiledProblem, compile_model
from pm_em.engine.mstep import AUTO_NUMBA_SIZE
from pm_em.engine.rows import bind_rows

__all__ = ["ChunkedModel", "chunked_model"]


def _global_terms(graphs: KernelGraphs, **compile_kwargs) -> Callable:
    """Compile ``x -> (log prior, log likelihood, gradient)`` of the terms without rows."""
    problem = graphs.problem
    zero = pt.constant(0.0, dtype="float64")
    prior = pt.add(zero, *(g for k, g in problem.prior_terms.items() if k not in graphs.row_terms))
    lik = pt.add(
        zero, *(g.sum() for k, g in problem.log_lik_rest.items() if k not in graphs.row_terms)
    )
    grad = pytensor.grad(prior + lik, problem.x, disconnected_inputs="ignore")
    fn = compile_with_data(problem.model, [problem.x], [prior, lik, grad], **compile_kwargs)

    def global_terms(x: np.ndarray) -> tuple[float, float, np.ndarray]:
        p, ll, g = fn(np.asarray(x, dtype="float64"))
        return float(p), float(ll), np.asarray(g, dtype="float64")

    return global_terms


def _reads(graphs: KernelGraphs, **compile_kwargs) -> Callable:
    """Compile ``x -> values`` of the variables a closed-form plan reads (its last statistics)."""
    plan = graphs.plan
    if plan is None or not plan.reads:
        return lambda x: ()
    values = [pt.as_tensor(graphs.problem.constrained[n]).astype("float64") for n in plan.reads]
    fn = compile_with_data(graphs.problem.model, [graphs.problem.x], values, **compile_kwargs)
    return lambda x: tuple(np.asarray(v) for v in fn(np.asarray(x, dtype="float64")))


@dataclass(eq=False)
class ChunkedModel:
    """Everything a chunked fit of one model computes with, whatever its data.

    Attributes
    ----------
    reference : CompiledProblem
        The model's in-memory functions (its template: the model as declared).
    graphs : KernelGraphs
    compile_kwargs : dict
        Passed to `pymc.pytensorf.compile`.
    lean_mode : str or None
        Backend of the ``"estep"`` kernel (``"auto"``: Numba for large data).
    global_terms : callable
        ``x -> (log prior, log likelihood, gradient)`` of the terms without rows.
    reads : callable
        ``x -> values`` a closed-form plan reads besides its statistics.
    signature : tuple
        The model's variable names when built (a model changed since is read again).
    """

    reference: CompiledProblem
    graphs: KernelGraphs
    compile_kwargs: dict
    lean_mode: str | None
    global_terms: Callable
    reads: Callable
    signature: tuple
    _kernels: dict = field(default_factory=dict, repr=False)

    @property
    def problem(self):
        """The template's `EMProblem`."""
        return self.graphs.problem

    def kernel(self, kind: str, n_elements: int = 0) -> ChunkKernel:
        """Return the compiled, checked kernel of ``kind`` (``"estep"``: backend by size)."""
        kwargs = dict(self.compile_kwargs)
        if kind == "estep" and self.lean_mode is not None:
            mode = self.lean_mode
            if mode == "auto":
                mode = "NUMBA" if n_elements >= AUTO_NUMBA_SIZE else None
            if mode is not None:
                kwargs["mode"] = mode
        key = (kind, kwargs.get("mode"))
        if key not in self._kernels:
            kernel = compile_kernel(self.graphs, kind, **kwargs)
            verify_kernel(kernel, self.graphs, self.reference, self.global_terms)
            self._kernels[key] = kernel
        return self._kernels[key]


_CACHE: "weakref.WeakKeyDictionary[pm.Model, dict]" = weakref.WeakKeyDictionary()


def chunked_model(
    model: pm.Model, latent: Sequence[str] | None = None, compile_kwargs: Mapping | None = None
) -> ChunkedModel:
    """Return the `ChunkedModel` of ``model``, from the cache when it is there.

    Parameters
    ----------
    model : pm.Model
        The template: the model as declared (its data may be a slice of the fit's rows).
    latent : sequence of str, optional
        As in `pm_em.fit`.
    compile_kwargs : dict, optional
        As in `pm_em.fit`.

    Raises
    ------
    ValueError
        For a model whose E-step cannot be split into rows (see `pm_em.engine.rows`).
    """
    if compile_kwargs is None:
        compile_kwargs = default_compile_kwargs()
    key = (tuple(latent) if latent is not None else None, tuple(sorted(compile_kwargs.items())))
    signature = tuple(model.named_vars)
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(key)
    if hit is not None and hit.signature == signature:
        return hit
    reference = compile_model(model, latent, compile_kwargs)
    problem = reference.problem
    plan = match_closed_form(problem)
    extra = []
    if plan is not None:
        resps = [pt.matrix(f"resp_{lat.name}", dtype="float64") for lat in problem.latents]
        extra = [*(plan.log_joint(lp.latent_index) for lp in plan.latents)]
        extra += plan.stat_graphs(resps)
    binding = bind_rows(problem, extra)
    graphs = KernelGraphs.build(problem, plan, binding)
    kwargs = dict(compile_kwargs)
    lean_mode = kwargs.pop("lean_mode", None)
    # Chunks are for data too large for one array: "auto" is C, whatever the template's size.
    kwargs["mode"] = resolve_mode(kwargs.get("mode", "auto"), AUTO_C_SIZE)
    result = ChunkedModel(
        reference=reference,
        graphs=graphs,
        compile_kwargs=kwargs,
        lean_mode=lean_mode,
        global_terms=_global_terms(graphs, **kwargs),
        reads=_reads(graphs, **kwargs),
        signature=signature,
    )
    per_model[key] = result
    return result
