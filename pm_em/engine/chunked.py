"""Chunk kernels: the E-step, Q, gradients and pointwise results of one block of rows.

A kernel is one compiled function of ``(x, [x_old | responsibilities], *row inputs)`` built
from the problem's graphs rebound to rows (`pm_em.engine.rows`), plus a reducer that turns its
outputs into the few numbers the client needs. Kinds:

- ``"estep"``: per latent the log marginal (reduced to its sum, its maximum and an evenly
  spaced sample for the collapse check, and its first non-finite elements), per per-row term
  its sum, and the closed-form M-step's statistics (linear in the responsibilities, so they
  add up over chunks);
- ``"q"``: -Q(x) with the responsibilities at ``x_old`` (recomputed inside: nothing of size
  n·K is kept between calls), its gradient, and the log likelihood at ``x_old``;
- ``"grad"``: the observed-data log likelihood and its gradient (the final polish);
- ``"pointwise"``: per latent p(z | y, x) and log p(y | x), per per-row term its values, the
  missing entries' conditional means and sds (the results, and starting points);
- ``"q_resp"``, ``"stats_resp"``: Q and the statistics from given responsibilities (starting
  points, on a sample of rows).

`run_chunk` is the task: the same function runs in this process and on a Dask worker, and
`tree_sum` adds the per-chunk results in a fixed pairwise order, so a fit gives the same bits
with or without a cluster for a given chunking. Everything here but `compile_kernel` is numpy.
"""

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import disconnected_grad
from pytensor.graph.basic import Variable
from pytensor.graph.replace import clone_replace

from pm_em.compile_cache import cached_function
from pm_em.engine.rows import RowBinding, row_value
from pm_em.exceptions import ChunkError
from pm_em.reading.problem import EMProblem

__all__ = [
    "KINDS",
    "ChunkInfo",
    "ChunkKernel",
    "KernelGraphs",
    "compile_kernel",
    "run_chunk",
    "tree_sum",
]

KINDS = ("estep", "q", "grad", "pointwise", "q_resp", "stats_resp")

# The collapse check (pm_em.engine.health) takes the median of an evenly spaced sample of
# about this many log marginals; the chunks keep exactly the elements it would.
COLLAPSE_SAMPLE = 10_000
# First non-finite elements each chunk reports for a start of zero density.
_N_BAD = 5


class ChunkInfo(NamedTuple):
    """Where a chunk sits: its index, its rows ``[start, stop)``, and the fit's row count."""

    index: int
    start: int
    stop: int
    n_rows: int


@dataclass(eq=False)
class ChunkKernel:
    """One compiled per-chunk function and what its reducer needs.

    Attributes
    ----------
    kind : str
        One of `KINDS`.
    fn : callable
        The compiled pytensor function ``fn(*theta, *row_inputs) -> list``.
    inputs : tuple of (str, str, str)
        ``(source, role, dtype)`` of every row input (`pm_em.engine.rows.RowInput.spec`).
    layout : dict
        Output counts and names for the reducer.
    token : str
        Identifies the kernel across processes (worker plugins, lazy results).
    """

    kind: str
    fn: Callable
    inputs: tuple[tuple[str, str, str], ...]
    layout: dict
    token: str = field(default_factory=lambda: uuid.uuid4().hex)


def tree_sum(parts: Sequence):
    """Add per-chunk results pairwise in a fixed order: (0+1)+(2+3)+..., level by level.

    ``parts`` are arrays, floats, or tuples of them (added entry by entry). The order depends
    only on the number of parts, so the sum is the same bits wherever the parts came from.
    """
    level = list(parts)
    if not level:
        raise ValueError("tree_sum needs at least one part")
    while len(level) > 1:
        nxt = [_add(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def _add(a, b):
    if isinstance(a, tuple):
        return tuple(_add(u, v) for u, v in zip(a, b, strict=True))
    return np.add(a, b)


# ------------------------------------------------------------------------------ the task
def run_chunk(kernel: ChunkKernel, theta: Sequence, blocks: dict, chunk: ChunkInfo, reduce=None):
    """Evaluate ``kernel`` on one chunk and reduce its outputs.

    Parameters
    ----------
    kernel : ChunkKernel
    theta : sequence of ndarray
        The parameter inputs (``x``; ``x`` and ``x_old``; ``x`` and responsibilities).
    blocks : dict of {str: ndarray}
        The chunk's raw rows of every source.
    chunk : ChunkInfo
    reduce : str, optional
        The reducer (default: the kernel's kind; ``"counts"`` for a pointwise kernel sums
        the responsibilities only).

    Raises
    ------
    ChunkError
        Naming the chunk, when reading or computing it fails.
    """
    try:
        values = [np.require(t, dtype="float64", requirements="CA") for t in theta]
        rows = [row_value(spec, blocks[spec[0]]) for spec in kernel.inputs]
        out = kernel.fn(*values, *rows)
        return _REDUCERS[reduce or kernel.kind](kernel, out, chunk)
    except ChunkError:
        raise
    except Exception as err:
        raise ChunkError(
            f"pm_em: the {kernel.kind} of chunk {chunk.index} (rows {chunk.start}-{chunk.stop}"
            f") failed: {type(err).__name__}: {err}",
            chunk.index,
            (chunk.start, chunk.stop),
        ) from err


def _copy_all(kernel, out, chunk) -> tuple:
    # The compiled function reuses its output storage: copy what leaves it.
    return tuple(np.array(o, dtype="float64", copy=True) for o in out)


def _reduce_estep(kernel, out, chunk) -> dict:
    n_lat, n_terms = kernel.layout["n_latents"], kernel.layout["n_terms"]
    sums, top, arg, sample, bad = [], [], [], [], []
    for lse in out[:n_lat]:
        flat = np.asarray(lse, dtype="float64").ravel()
        per_row = flat.size // max(chunk.stop - chunk.start, 1)
        offset, total = chunk.start * per_row, chunk.n_rows * per_row
        stride = max(1, total // COLLAPSE_SAMPLE)
        sums.append(flat.sum())
        sample.append(flat[(-offset) % stride :: stride].copy())
        i = int(np.argmax(flat)) if flat.size else 0
        top.append(flat[i] if flat.size else -np.inf)
        arg.append(offset + i)
        bad.append(offset + np.flatnonzero(~np.isfinite(flat))[:_N_BAD])
    terms = [float(t) for t in out[n_lat : n_lat + n_terms]]
    stats = tuple(np.array(s, dtype="float64", copy=True) for s in out[n_lat + n_terms :])
    return {
        "sums": (np.array(sums + terms, dtype="float64"), *stats),
        "top": np.array(top, dtype="float64"),
        "arg": np.array(arg, dtype="int64"),
        "sample": sample,
        "bad": bad,
    }


def _reduce_pointwise(kernel, out, chunk) -> dict:
    lay = kernel.layout
    named = dict(zip(lay["names"], out, strict=True))
    result = {}
    for lat in lay["latents"]:
        log_resp = np.asarray(named[f"log_resp/{lat}"], dtype="float64")
        result[f"resp/{lat}"] = np.exp(log_resp, order="C")
        result[f"log_resp/{lat}"] = log_resp.copy()
        result[f"log_marginal/{lat}"] = np.array(named[f"log_marginal/{lat}"], copy=True)
    for name in lay["rest"]:
        result[f"rest/{name}"] = np.array(named[f"rest/{name}"], dtype="float64", copy=True)
    for spec, latent in lay["missing"]:
        resp = result[f"resp/{latent}"] if latent is not None else None
        mean, sd = _mix_rows(named[f"mean/{spec}"], named[f"var/{spec}"], resp)
        mask = np.isnan(np.asarray(named[f"raw/{spec}"]))
        result[f"completed/{spec}"] = mean
        result[f"missing_mean/{spec}"] = mean[mask]
        result[f"missing_sd/{spec}"] = sd[mask]
    return result


def _mix_rows(mean, var, resp):
    """Conditional mean and sd of MvNormal rows, mixed over a latent's responsibilities."""
    mean, var = np.asarray(mean, dtype="float64"), np.asarray(var, dtype="float64")
    if resp is None:
        return mean.copy(), np.sqrt(var)
    w = np.moveaxis(resp, -1, 0)[..., None]  # (K, rows, 1)
    mixed = (w * mean).sum(axis=0)
    second = (w * (var + mean**2)).sum(axis=0)
    return mixed, np.sqrt(np.maximum(second - mixed**2, 0.0))


def _reduce_counts(kernel, out, chunk) -> tuple:
    named = dict(zip(kernel.layout["names"], out, strict=True))
    return tuple(
        np.exp(np.asarray(named[f"log_resp/{lat}"], dtype="float64"))
        .reshape(-1, np.shape(named[f"log_resp/{lat}"])[-1])
        .sum(axis=0)
        for lat in kernel.layout["latents"]
    )


_REDUCERS = {
    "estep": _reduce_estep,
    "q": _copy_all,
    "grad": _copy_all,
    "q_resp": _copy_all,
    "stats_resp": _copy_all,
    "pointwise": _reduce_pointwise,
    "counts": _reduce_counts,
}


# ------------------------------------------------------------------------------ graphs
def _lse(log_joint: Variable) -> tuple[Variable, Variable]:
    lse = pt.logsumexp(log_joint, axis=-1)  # (*shape,)
    # An element with no possible value: keep its row finite (its log marginal is -inf).
    return lse, pt.switch(pt.isinf(lse), 0.0, lse)


@dataclass(frozen=True, eq=False)
class KernelGraphs:
    """The problem's graphs that kernels are made of, split into per-row and global terms.

    Attributes
    ----------
    problem : EMProblem
    plan : ClosedFormPlan or None
    binding : RowBinding
    row_terms : dict of {str: Variable}
        Likelihood terms (and potentials) that involve the rows: summed over chunks.
    row_lik : tuple of str
        Those of them that are observed variables' likelihoods (the pointwise results).
    """

    problem: EMProblem
    plan: object
    binding: RowBinding
    row_terms: dict = field(repr=False)
    row_lik: tuple[str, ...]

    @classmethod
    def build(cls, problem: EMProblem, plan, binding: RowBinding) -> "KernelGraphs":
        """Sort the problem's terms into per-row and global ones."""
        rest = {k: g for k, g in problem.log_lik_rest.items() if binding.depends_on_rows(g)}
        priors = {k: g for k, g in problem.prior_terms.items() if binding.depends_on_rows(g)}
        return cls(problem, plan, binding, {**rest, **priors}, tuple(rest))

    def _compile(self, kind, theta, outputs, layout, grad_of=None, **compile_kwargs):
        rebound = self.binding.rebind(outputs)
        # The gradient is of the rebound graph: one taken before rebinding would pin shapes
        # to the template's rows (gradient Ops carry their inputs' static shapes). A model of
        # the same structure reuses the compiled kernel (`pm_em.compile_cache`); the Dask
        # workers get the PyTensor function itself.
        inputs = [*theta, *(i.variable for i in self.binding.inputs)]
        fn = cached_function(
            inputs,
            rebound,
            name=f"chunk kernel {kind}",
            grad_of=grad_of,
            disconnected_inputs="ignore",
            on_unused_input="ignore",
            **compile_kwargs,
        )
        return ChunkKernel(kind, fn.fn, self.binding.specs, layout)

    def resp_inputs(self) -> list[Variable]:
        """One (rows, K) responsibilities input per latent."""
        return [
            pt.tensor(f"resp_{lat.name}", shape=(None,) * (len(lat.shape) + 1), dtype="float64")
            for lat in self.problem.latents
        ]

    def estep(self, **compile_kwargs) -> ChunkKernel:
        """Compile the ``"estep"`` kernel (see the module docstring)."""
        problem, plan = self.problem, self.plan
        lean = plan is not None and plan.complete
        lses, resps, unrolled = [], [], {}
        for j, lat in enumerate(problem.latents):
            terms = plan.unrolled_terms(j) if lean else None
            if terms is not None:  # K vectors of length rows, not one (rows, K) array
                lse, unrolled[j] = terms
                resps.append(None)
            else:
                log_joint = plan.log_joint(j) if lean else lat.log_joint
                lse, safe = _lse(log_joint)
                resps.append(pt.exp(log_joint - safe[..., None]))
            lses.append(lse)
        stats = self.additive_stats(resps, unrolled) if plan is not None else []
        outputs = [*lses, *(t.sum() for t in self.row_terms.values()), *stats]
        layout = {"n_latents": len(lses), "n_terms": len(self.row_terms)}
        return self._compile("estep", [problem.x], outputs, layout, **compile_kwargs)

    def additive_stats(self, resps, unrolled=None) -> list[Variable]:
        """Return the plan's statistics without the values it reads (which do not add up)."""
        stats = self.plan.stat_graphs(resps, unrolled)
        return stats[: len(stats) - len(self.plan.reads)]

    def _neg_q(self, resps) -> Variable:
        q = pt.constant(0.0, dtype="float64")
        for lat, resp in zip(self.problem.latents, resps, strict=True):
            # 0 · (-inf) counts as 0: an impossible assignment with no responsibility.
            q = q + pt.switch(resp > 0, resp * lat.log_joint, 0.0).sum()
        for term in self.row_terms.values():
            q = q + term.sum()
        return -q

    def q(self, **compile_kwargs) -> ChunkKernel:
        """Compile the ``"q"`` kernel: -Q(x; x_old), its gradient, the log likelihood at x_old."""
        problem = self.problem
        x_old = problem.x.type("x_old")
        at_old = {problem.x: x_old}
        resps, ll_old = [], pt.constant(0.0, dtype="float64")
        for lat in problem.latents:
            log_joint_old = clone_replace(lat.log_joint, replace=at_old)
            lse, safe = _lse(log_joint_old)
            resps.append(disconnected_grad(pt.exp(log_joint_old - safe[..., None])))
            ll_old = ll_old + lse.sum()
        for term in self.row_terms.values():
            ll_old = ll_old + clone_replace(term, replace=at_old).sum()
        outputs = [self._neg_q(resps), ll_old]
        return self._compile("q", [problem.x, x_old], outputs, {}, grad_of=0, **compile_kwargs)

    def grad(self, **compile_kwargs) -> ChunkKernel:
        """Compile the ``"grad"`` kernel: the rows' log likelihood and its gradient."""
        problem = self.problem
        ll = pt.constant(0.0, dtype="float64")
        for lat in problem.latents:
            ll = ll + pt.logsumexp(lat.log_joint, axis=-1).sum()
        for term in self.row_terms.values():
            ll = ll + term.sum()
        return self._compile("grad", [problem.x], [ll], {}, grad_of=0, **compile_kwargs)

    def q_resp(self, **compile_kwargs) -> ChunkKernel:
        """Compile the ``"q_resp"`` kernel: -Q(x) from given responsibilities, and its gradient."""
        resps = self.resp_inputs()
        theta = [self.problem.x, *resps]
        outputs = [self._neg_q(resps)]
        return self._compile("q_resp", theta, outputs, {}, grad_of=0, **compile_kwargs)

    def stats_resp(self, **compile_kwargs) -> ChunkKernel:
        """Compile the ``"stats_resp"`` kernel: the statistics from given responsibilities."""
        resps = self.resp_inputs()
        outputs = self.additive_stats(resps)
        theta = [self.problem.x, *resps]
        return self._compile("stats_resp", theta, outputs, {}, **compile_kwargs)

    def pointwise(self, **compile_kwargs) -> ChunkKernel:
        """Compile the ``"pointwise"`` kernel (see the module docstring)."""
        problem, plan = self.problem, self.plan
        lean = plan is not None and plan.complete
        names, outputs = [], []
        for j, lat in enumerate(problem.latents):
            log_joint = plan.log_joint(j) if lean else lat.log_joint
            lse, safe = _lse(log_joint)
            names += [f"log_resp/{lat.name}", f"log_marginal/{lat.name}"]
            outputs += [log_joint - safe[..., None], lse]
        for name in self.row_lik:
            names.append(f"rest/{name}")
            outputs.append(problem.log_lik_rest[name])
        missing = []
        for spec in problem.missing:
            names += [f"mean/{spec.name}", f"var/{spec.name}"]
            outputs += [spec.mean, spec.var]
            missing.append((spec.name, spec.latent))
        layout = {
            "names": names,
            "latents": [lat.name for lat in problem.latents],
            "rest": list(self.row_lik),
            "missing": missing,
        }
        kernel = self._compile("pointwise", [problem.x], outputs, layout, **compile_kwargs)
        # The raw rows of each variable with missing entries travel with the outputs: the
        # reducer picks the missing entries out of them.
        return _with_raw_rows(kernel, [name for name, _ in missing])


class _RawRows:
    """A compiled function whose outputs are followed by some of its extra raw row inputs."""

    def __init__(self, fn, n_args: int):
        self.fn, self.n_args = fn, n_args

    def __call__(self, *args):
        return [*self.fn(*args[: self.n_args]), *args[self.n_args :]]


def _with_raw_rows(kernel: ChunkKernel, sources: list[str]) -> ChunkKernel:
    """Make a pointwise kernel (one theta input: ``x``) also return the raw rows of ``sources``."""
    if not sources:
        return kernel
    specs = (*kernel.inputs, *((source, "values", "float64") for source in sources))
    layout = dict(kernel.layout, names=[*kernel.layout["names"], *(f"raw/{s}" for s in sources)])
    fn = _RawRows(kernel.fn, 1 + len(kernel.inputs))
    return ChunkKernel(kernel.kind, fn, specs, layout, kernel.token)


def compile_kernel(graphs: KernelGraphs, kind: str, **compile_kwargs) -> ChunkKernel:
    """Compile the kernel of ``kind`` (one of `KINDS`) from ``graphs``."""
    if kind not in KINDS:
        raise ValueError(f"Unknown kernel kind {kind!r}; one of {KINDS}.")
    return getattr(graphs, kind)(**compile_kwargs)
