"""`pm_em.fit` over chunks of rows: in this process, or on a Dask cluster.

The same flow as `pm_em.fitting.fit` (restarts, the best run polished, the DataTree), with
the E-step computed per chunk (`pm_em.engine.chunked_steps.ChunkedEngine`) and the M-step on
the client. `fit` calls `fit_chunked` when it is given ``data=``, ``chunk_size=``,
``client=`` or ``store=``; its docstring describes them, and the README's "Scaling out".
"""

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pymc as pm
import xarray as xr
from threadpoolctl import threadpool_limits

from pm_em.data import make_layout
from pm_em.engine.chunked_model import chunked_model
from pm_em.engine.chunked_run import chunked_start, polish_chunked, run_em_chunked
from pm_em.engine.chunked_steps import ChunkedEngine
from pm_em.engine.executors import InProcessExecutor, check_rows
from pm_em.engine.health import EMPTY_COUNT
from pm_em.engine.optima import group_optima
from pm_em.engine.rows import resolve_sources
from pm_em.exceptions import (
    DegenerateRunWarning,
    EMConvergenceWarning,
    EmptyComponentWarning,
    warn,
)
from pm_em.results.chunked import build_chunked_datatree, per_element_results

__all__ = ["fit_chunked"]


class _Connection:
    """The cluster of a fit, connected to first (an unreachable scheduler fails fast)."""

    def __init__(self, client):
        self.client, self.close = None, None
        if client is not None:
            from pm_em.distributed.cluster import connect  # needs the dask extra

            self.client, self.close = connect(client)

    def executor(self, sources, layout):
        """Open the executor of a fit: this process (no client), or the Dask cluster."""
        if self.client is None:
            return InProcessExecutor(sources, layout)
        from pm_em.distributed.executor import DaskExecutor

        close, self.close = self.close, None  # the executor closes the cluster now
        return DaskExecutor(self.client, sources, layout, close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.close is not None:  # a failure before the executor took over
            self.close()


def _restarts(engine, *, rngs, init, initvals, progress, run_kwargs) -> list:
    """Run EM once per generator, as `pm_em.fitting._restarts` does (a degenerate run replaced)."""
    from pm_em.fitting import _SCALE_PRIOR_HINT

    runs = []
    n_init, max_iter = len(rngs), run_kwargs["max_iter"]
    queue = list(rngs)
    for i, run_rng in enumerate(queue):
        name = f"{i + 1} of {n_init}" if i < n_init else f"{i + 1} (a replacement)"
        task = progress.add_task(f"EM run {name}", total=max_iter, log_posterior="…")
        x0 = chunked_start(engine, init=init, initvals=initvals, run=i, rng=run_rng)
        run = run_em_chunked(engine, x0, run_index=i, progress=progress, task=task, **run_kwargs)
        progress.update(task, total=max(run.n_iter, 1), completed=max(run.n_iter, 1))
        runs.append(run)
        if run.status == "degenerate":
            replaced = i < n_init
            if replaced:
                queue.append(run_rng.spawn(1)[0])
            warn(
                f"EM run {name} was abandoned: {run.message}. "
                + ("A replacement run starts elsewhere. " if replaced else "")
                + _SCALE_PRIOR_HINT,
                DegenerateRunWarning,
            )
    return runs


def _warn_about(problem, best, counts, optima, *, max_iter, tol, polished) -> None:
    from pm_em.fitting import _warn_about_optima

    if not best.converged:
        warn(
            f"EM reached max_iter={max_iter} before the relative change of the log posterior "
            f"fell below tol={tol}. Increase `max_iter` or `tol`"
            + (" (the final polish moved the estimate towards the mode)." if polished else "."),
            EMConvergenceWarning,
        )
    _warn_about_optima(optima)
    for lat, count in zip(problem.latents, counts, strict=True):
        if lat.kind != "Categorical":
            continue
        ks = lat.support[count < EMPTY_COUNT].tolist()
        if ks:
            warn(
                f"Latent '{lat.name}' has empty component(s) {ks} at the estimate (expected "
                f"count below {EMPTY_COUNT}). Their parameters are not informed by the data; "
                "consider fewer components.",
                EmptyComponentWarning,
            )


def fit_chunked(
    model: pm.Model,
    *,
    data: Mapping | None,
    chunk_size: int | None,
    client,
    store,
    latent: Sequence[str] | None,
    initvals: Mapping | None,
    n_init: int,
    init: str | Callable,
    max_iter: int,
    tol: float,
    random_seed,
    progressbar: bool,
    polish: bool,
    accelerate: bool,
    compile_kwargs: Mapping | None,
) -> xr.DataTree:
    """Fit ``model`` by EM with the E-step per chunk of rows (arguments as `pm_em.fit`)."""
    from pm_em.fitting import _best, _progress, _warn_about_priors  # the top layer's helpers

    with _Connection(client) as connection:
        cm = chunked_model(model, latent, compile_kwargs)
        _warn_about_priors(cm)
        sources, n_rows = resolve_sources(cm.graphs.binding, data)
        layout = make_layout(n_rows, chunk_size, sources)
        executor = connection.executor(sources, layout)
    lazy = client is not None or any(s.lazy for s in sources.values())
    started = time.perf_counter()
    with executor:
        missing_counts = check_rows(executor, cm.graphs.binding.imputed)
        engine = ChunkedEngine(cm, executor)
        run_kwargs = {"max_iter": max_iter, "tol": tol, "accelerate": accelerate}
        # One BLAS thread, as in memory: the M-step works on a few parameters.
        with threadpool_limits(1, user_api="blas"), _progress(progressbar) as progress:
            runs = _restarts(
                engine,
                rngs=np.random.default_rng(random_seed).spawn(n_init),
                init=init,
                initvals=initvals,
                progress=progress,
                run_kwargs=run_kwargs,
            )
            best = _best(runs)
            if polish:
                polish_chunked(engine, best)
            optima = group_optima(runs)
            arrays, counts = per_element_results(
                cm, executor, sources, best.x, missing_counts, lazy=lazy, store=store
            )
    _warn_about(cm.problem, best, counts, optima, max_iter=max_iter, tol=tol, polished=polish)
    return build_chunked_datatree(
        cm,
        sources,
        layout,
        best,
        runs,
        best_index=runs.index(best),
        optima=[(o.log_posterior, o.runs) for o in optima],
        arrays=arrays,
        counts=counts,
        lazy=lazy,
        elapsed=time.perf_counter() - started,
    )
