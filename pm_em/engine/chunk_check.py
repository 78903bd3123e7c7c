"""The one-off check that a chunk kernel computes what the model's in-memory E-step computes.

Rebinding a problem's graphs to rows (`pm_em.engine.rows`) is exact when every shape and
every datum that depends on the rows was found. `verify_kernel` proves it for one model, once
per kernel: it evaluates the kernel on the template's own rows split into two chunks of
different sizes, adds them up as a fit does, and compares with the in-memory functions of
`pm_em.engine.compiled.compile_model` at a generic parameter point. A graph that kept the
template's row count fails on the smaller chunks; a term that is not a sum over rows (a mean,
say) or a datum bound to the wrong rows gives other numbers. Either way the fit is refused
before it starts, naming what differed.
"""

from collections.abc import Callable

import numpy as np

from pm_em.engine.chunked import (
    COLLAPSE_SAMPLE,
    ChunkInfo,
    ChunkKernel,
    KernelGraphs,
    run_chunk,
    tree_sum,
)
from pm_em.engine.compiled import CompiledProblem
from pm_em.engine.mstep import compile_stats

__all__ = ["verify_kernel"]


class _Mismatch(Exception):
    pass


def _close(what: str, got, want, rtol=1e-8) -> None:
    got, want = np.asarray(got, dtype="float64"), np.asarray(want, dtype="float64")
    if got.shape != want.shape:
        raise _Mismatch(f"{what}: shape {got.shape} per chunk, {want.shape} in memory")
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(
        got[~finite], want[~finite]
    ):
        raise _Mismatch(f"{what}: the non-finite entries differ")
    scale = max(1.0, float(np.abs(want[finite]).max())) if finite.any() else 1.0
    err = float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
    if err > rtol * scale:
        raise _Mismatch(f"{what}: differs by {err:.3g} (scale {scale:.3g})")


class _Template:
    """The template's rows in two chunks, and the reference values at test points."""

    def __init__(self, graphs: KernelGraphs, reference: CompiledProblem, global_terms: Callable):
        problem, binding = graphs.problem, graphs.binding
        self.graphs, self.reference, self.global_terms = graphs, reference, global_terms
        m = binding.n_template
        cut = max(1, m // 3)
        self.chunks = [ChunkInfo(0, 0, cut, m), ChunkInfo(1, cut, m, m)]
        self.blocks = [
            {name: rows[c.start : c.stop] for name, rows in binding.template.items()}
            for c in self.chunks
        ]
        rng = np.random.default_rng(20261201)
        start = np.where(np.isfinite(problem.start), problem.start, 0.0)
        self.x = start + rng.normal(0.0, 0.3, size=start.shape)
        self.x_old = start + rng.normal(0.0, 0.3, size=start.shape)
        if not np.isfinite(reference.estep(self.x).log_posterior):
            self.x, self.x_old = start, start
        self.e = reference.estep(self.x)
        self.e_old = reference.estep(self.x_old)

    def run(self, kernel, theta, reduce=None) -> list:
        return [
            run_chunk(kernel, theta, b, c, reduce)
            for b, c in zip(self.blocks, self.chunks, strict=True)
        ]


def _check_estep(t: _Template, kernel: ChunkKernel) -> None:
    graphs, e = t.graphs, t.e
    parts = t.run(kernel, [t.x])
    sums = tree_sum([p["sums"] for p in parts])
    n_lat = len(graphs.problem.latents)
    for j, lat in enumerate(graphs.problem.latents):
        flat = np.ravel(e.log_marginal[j])
        stride = max(1, flat.size // COLLAPSE_SAMPLE)
        sample = np.concatenate([p["sample"][j] for p in parts])
        _close(f"the log marginals of latent '{lat.name}'", sample, flat[::stride])
        _close(f"the log marginal of latent '{lat.name}'", sums[0][j], np.sum(flat))
    rest = dict(zip(graphs.problem.log_lik_rest, e.log_lik_rest, strict=True))
    global_prior, _, _ = t.global_terms(t.x)
    row_prior = e.log_prior - global_prior
    got_prior = 0.0
    for i, name in enumerate(graphs.row_terms):
        if name in rest:
            _close(f"the log likelihood of '{name}'", sums[0][n_lat + i], np.sum(rest[name]))
        else:
            got_prior += sums[0][n_lat + i]
    _close("the per-row potentials", got_prior, row_prior)
    if graphs.plan is not None:
        want = compile_stats(graphs.problem, graphs.plan)(t.x, *e.resp)
        for i, s in enumerate(sums[1:]):
            _close(f"closed-form statistic {i}", s, want[i])


def _global_neg(t: _Template, x) -> tuple[float, np.ndarray]:
    prior, lik, grad = t.global_terms(x)
    return -(prior + lik), -grad


def _check_q(t: _Template, kernel: ChunkKernel) -> None:
    neg_q, grad, ll_old = tree_sum(t.run(kernel, [t.x, t.x_old]))
    want_q, want_grad = t.reference.neg_q(t.x, *t.e_old.resp)
    g_value, g_grad = _global_neg(t, t.x)
    _close("Q", neg_q + g_value, want_q)
    _close("the gradient of Q", grad + g_grad, want_grad)
    old_value, _ = _global_neg(t, t.x_old)
    _close("the log posterior at the previous point", ll_old - old_value, t.e_old.log_posterior)


def _check_grad(t: _Template, kernel: ChunkKernel) -> None:
    ll, grad = tree_sum(t.run(kernel, [t.x]))
    g_value, g_grad = _global_neg(t, t.x)
    _close("the log posterior", ll - g_value, t.e.log_posterior)
    _, want = t.reference.neg_q(t.x, *t.e.resp)  # Fisher's identity
    _close("the gradient of the log posterior", -(grad - g_grad), want)


def _check_q_resp(t: _Template, kernel: ChunkKernel) -> None:
    resp = t.e_old.resp
    parts = [
        run_chunk(kernel, [t.x, *(r[c.start : c.stop] for r in resp)], b, c)
        for b, c in zip(t.blocks, t.chunks, strict=True)
    ]
    neg_q, grad = tree_sum(parts)
    want_q, want_grad = t.reference.neg_q(t.x, *resp)
    g_value, g_grad = _global_neg(t, t.x)
    _close("Q from given responsibilities", neg_q + g_value, want_q)
    _close("its gradient", grad + g_grad, want_grad)


def _check_stats_resp(t: _Template, kernel: ChunkKernel) -> None:
    resp = t.e_old.resp
    parts = [
        run_chunk(kernel, [t.x, *(r[c.start : c.stop] for r in resp)], b, c)
        for b, c in zip(t.blocks, t.chunks, strict=True)
    ]
    got = tree_sum(parts)
    want = compile_stats(t.graphs.problem, t.graphs.plan)(t.x, *resp)
    for i, s in enumerate(got):
        _close(f"closed-form statistic {i} from given responsibilities", s, want[i])


def _check_pointwise(t: _Template, kernel: ChunkKernel) -> None:
    graphs, e = t.graphs, t.e
    parts = t.run(kernel, [t.x])

    def joined(key):
        return np.concatenate([p[key] for p in parts], axis=0)

    for j, lat in enumerate(graphs.problem.latents):
        _close(f"p({lat.name} | y)", joined(f"log_resp/{lat.name}"), e.log_resp[j])
        _close(
            f"the log marginal of '{lat.name}'",
            joined(f"log_marginal/{lat.name}"),
            e.log_marginal[j],
        )
    rest = dict(zip(graphs.problem.log_lik_rest, e.log_lik_rest, strict=True))
    for name in graphs.row_lik:
        _close(f"the pointwise log likelihood of '{name}'", joined(f"rest/{name}"), rest[name])
    imputed = t.reference.impute(t.x, e.resp)
    for spec in graphs.problem.missing:
        mean, sd = imputed[spec.name]
        _close(f"the imputed means of '{spec.name}'", joined(f"missing_mean/{spec.name}"), mean)
        _close(f"the imputed sds of '{spec.name}'", joined(f"missing_sd/{spec.name}"), sd)


_CHECKS = {
    "estep": _check_estep,
    "q": _check_q,
    "grad": _check_grad,
    "q_resp": _check_q_resp,
    "stats_resp": _check_stats_resp,
    "pointwise": _check_pointwise,
}


def verify_kernel(
    kernel: ChunkKernel,
    graphs: KernelGraphs,
    reference: CompiledProblem,
    global_terms: Callable,
) -> None:
    """Check ``kernel`` against the in-memory functions ``reference`` on the template's rows.

    Parameters
    ----------
    kernel : ChunkKernel
    graphs : KernelGraphs
        What the kernel was compiled from.
    reference : CompiledProblem
        The in-memory functions of the same problem (`compile_model`).
    global_terms : callable
        ``global_terms(x) -> (log prior, log likelihood, gradient)`` of the terms that do
        not involve the rows.

    Raises
    ------
    ValueError
        When the kernel's chunks, added up, do not give the in-memory values.
    """
    template = _Template(graphs, reference, global_terms)
    try:
        _CHECKS[kernel.kind](template, kernel)
    except _Mismatch as err:
        raise ValueError(
            f"pm_em cannot split this model's E-step into blocks of rows: {err} when its "
            f"{graphs.binding.n_template} rows are computed in two chunks. Some term of the "
            "model is not a sum over rows (a mean over the data, say), or keeps a fixed row "
            "count. Fit it in memory (without `data=`, `chunk_size=`, `client=`), or report "
            "the model if every term is a sum over rows."
        ) from None
