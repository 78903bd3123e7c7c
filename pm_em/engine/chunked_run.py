"""One EM run of a chunked fit, its starting point, and the polish.

The same loop as `pm_em.engine.run` (the same `ConvergenceMonitor`, SQUAREM steps and
`EMRun`), with every E-step a map over the chunks (`ChunkedEngine`). Starting points come
from the same code as in memory (`pm_em.engine.init.initial_x`), applied to an evenly spaced
sample of at most `START_ROWS` rows: all of them for data of that size or less, so that a
chunked fit then starts exactly where an in-memory one does.
"""

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize

from pm_em.engine.accel import make_step
from pm_em.engine.chunked import ChunkInfo, run_chunk
from pm_em.engine.chunked_steps import ChunkedEngine
from pm_em.engine.finish import newton_finish, not_worse
from pm_em.engine.init import initial_x
from pm_em.engine.monitor import ConvergenceMonitor
from pm_em.engine.mstep import ClosedFormMStep, NumericMStep
from pm_em.engine.run import EMRun

__all__ = ["START_ROWS", "chunked_start", "polish_chunked", "run_em_chunked"]

# Rows of the sample that data-driven starting points (k-means) are computed from.
START_ROWS = 10_000


@dataclass(frozen=True)
class _SampleEStep:
    """The part of an E-step a starting point reads: log responsibilities (no chains here)."""

    log_resp: tuple[np.ndarray, ...]

    def with_log_resp(self) -> "_SampleEStep":
        return self


class _StartSample:
    """An evenly spaced sample of rows, with the E- and M-steps of a problem on it alone."""

    def __init__(self, engine: ChunkedEngine):
        cm, n = engine.cm, engine.n_rows
        self.cm = cm
        size = min(n, START_ROWS)
        rows = np.unique(np.linspace(0, n - 1, size).round().astype(np.int64))
        self.blocks = engine.executor.take(rows)
        self.info = ChunkInfo(0, 0, rows.size, rows.size)
        problem = cm.problem
        binding = cm.graphs.binding
        data = {name: self.blocks[source] for name, source in binding.observed_sources.items()}
        latents = tuple(replace(lat, shape=(rows.size, *lat.shape[1:])) for lat in problem.latents)
        self.problem = replace(problem, latents=latents, data={**problem.data, **data})
        plan = cm.graphs.plan
        self.mstep = (
            ClosedFormMStep(plan, self.neg_q, self.stats)
            if plan is not None
            else NumericMStep(self.neg_q)
        )

    def estep(self, x: np.ndarray):
        out = run_chunk(self.cm.kernel("pointwise"), [x], self.blocks, self.info)
        return _SampleEStep(tuple(out[f"log_resp/{lat.name}"] for lat in self.problem.latents))

    def neg_q(self, x: np.ndarray, *resp: np.ndarray) -> tuple[float, np.ndarray]:
        neg_q, grad = run_chunk(self.cm.kernel("q_resp"), [x, *resp], self.blocks, self.info)
        prior, lik, g_grad = self.cm.global_terms(x)
        value = float(neg_q - prior - lik)
        if not np.isfinite(value):
            return np.inf, np.zeros_like(x)
        return value, grad - g_grad

    def stats(self, x: np.ndarray, *resp: np.ndarray) -> tuple[np.ndarray, ...]:
        stats = run_chunk(self.cm.kernel("stats_resp"), [x, *resp], self.blocks, self.info)
        return (*stats, *self.cm.reads(x))


def chunked_start(engine: ChunkedEngine, *, init, initvals, run: int, rng) -> np.ndarray:
    """Choose the starting point of restart ``run``: `initial_x` on a sample of the rows."""
    sample: list[_StartSample] = []

    def view() -> _StartSample:
        if not sample:  # only data-driven starts need the sample
            sample.append(_StartSample(engine))
        return sample[0]

    # The cases where `initial_x` looks at the data (k-means or random responsibilities).
    from_data = (
        not callable(init)
        and init != "initial_point"
        and not (init == "auto" and initvals and run == 0)
        and bool(engine.problem.latents)
    )
    problem = view().problem if from_data else engine.problem
    return initial_x(
        problem,
        init=init,
        initvals=initvals,
        run=run,
        rng=rng,
        estep=lambda x: view().estep(x),
        mstep=lambda x, resp: view().mstep(x, resp),
    )


def run_em_chunked(
    engine: ChunkedEngine, x0, *, run_index, max_iter, tol, progress, task, accelerate=False
) -> EMRun:
    """Iterate EM from ``x0`` over the chunks, as `pm_em.engine.run.run_em` does in memory."""
    e = engine.estep(x0)
    engine.check_start(e, x0, run_index)
    run = EMRun(x=x0, estep=e)
    monitor = ConvergenceMonitor(tol, max_iter)
    monitor.report(e.log_posterior)
    run.log_likelihood.append(e.log_likelihood)
    step = make_step(engine.em_map, accelerate)

    def valid(e_try) -> bool:
        return engine.collapse(e_try) is None

    for _ in range(max_iter):
        x_new, e_new = step(run.x, e, valid)
        collapsed = engine.collapse(e_new)
        if collapsed:
            run.status, run.message = "degenerate", collapsed
            break
        run.x, e = x_new, e_new
        run.estep = e
        monitor.report(e.log_posterior)
        run.log_likelihood.append(e.log_likelihood)
        if progress is not None:
            progress.update(task, advance=1, log_posterior=f"{e.log_posterior:.6g}")
        if monitor.converged:
            break
    run.log_posterior = monitor.history
    run.converged = monitor.converged
    if run.status == "running":
        run.status = "converged" if run.converged else "max_iter"
    return run


def polish_chunked(engine: ChunkedEngine, run: EMRun) -> None:
    """Finish at the exact mode with L-BFGS, as `pm_em.engine.run.polish` does in memory."""
    if run.x.size == 0:
        return
    res = minimize(
        engine.neg_log_posterior,
        run.x,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10},
    )
    x = newton_finish(np.asarray(res.x, dtype="float64"), engine.neg_log_posterior)
    e = engine.estep(x)
    if (
        np.isfinite(e.log_posterior)
        and not_worse(e.log_posterior, run.estep.log_posterior)
        and engine.collapse(e) is None
    ):
        run.polish_gain = e.log_posterior - run.estep.log_posterior
        run.x, run.estep = x, e
