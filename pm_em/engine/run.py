"""One EM run from one starting point, and the polish that finishes the best run at the mode."""

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from pm_em.engine.accel import make_step
from pm_em.engine.compiled import CompiledProblem
from pm_em.engine.estep import EStepResult
from pm_em.engine.finish import newton_finish, not_worse
from pm_em.engine.health import check_start, collapse
from pm_em.engine.monitor import ConvergenceMonitor
from pm_em.timing import stage

__all__ = ["EMRun", "polish", "run_em"]


@dataclass(eq=False)
class EMRun:
    """One EM run from one starting point."""

    x: np.ndarray
    estep: EStepResult | None
    log_posterior: list[float] = field(default_factory=list)
    log_likelihood: list[float] = field(default_factory=list)
    converged: bool = False
    status: str = "running"
    message: str = ""
    polish_gain: float = 0.0

    @property
    def n_iter(self) -> int:
        """Number of M-steps taken."""
        return max(len(self.log_posterior) - 1, 0)

    @property
    def final_log_posterior(self) -> float:
        """The log posterior at the returned estimate (after the polish)."""
        return self.estep.log_posterior if self.estep is not None else -np.inf


def run_em(
    compiled: CompiledProblem, x0, *, run_index, max_iter, tol, progress, task, accelerate=False
) -> EMRun:
    """Iterate EM from ``x0`` until convergence, ``max_iter`` or a collapse.

    Checks the start (`check_start`), reports each iteration's log posterior to a
    `ConvergenceMonitor` and to the progress bar's ``task``, and abandons the run (status
    ``"degenerate"``) when `collapse` sees a component collapsing.
    """
    problem = compiled.problem
    with stage("first E-step"):
        e = compiled.estep(x0)
    check_start(problem, e, x0, run_index)
    run = EMRun(x=x0, estep=e)
    monitor = ConvergenceMonitor(tol, max_iter)
    monitor.report(e.log_posterior)
    run.log_likelihood.append(e.log_likelihood)
    step = make_step(compiled.em_map, accelerate)
    if compiled.em_map.lean:
        run.estep = e = compiled.em_map.estep(x0)  # frees the (n, K) arrays of the full one

    def valid(e_try) -> bool:
        return collapse(problem, e_try) is None

    for _ in range(max_iter):
        x_new, e_new = step(run.x, e, valid)
        collapsed = collapse(problem, e_new)
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
    if compiled.em_map.lean:
        run.estep = compiled.estep(run.x)  # responsibilities, once, for the results
    run.log_posterior = monitor.history
    run.converged = monitor.converged
    if run.status == "running":
        run.status = "converged" if run.converged else "max_iter"
    return run


def polish(compiled: CompiledProblem, run: EMRun) -> None:
    """Finish at the exact mode with L-BFGS on the observed-data log posterior.

    EM converges linearly, so its last iterate sits a little short of the mode. The
    objective, minus the marginal log posterior and its gradient, is
    `CompiledProblem.neg_log_post` (`pm_em.engine.objective`): one compiled function for a
    closed-form model, the E-step and Q's gradient (Fisher's identity) for a numeric one.
    """
    if run.x.size == 0:
        return
    # issue 12: the objective is one function of x (no E-step results are kept per
    # evaluation); the E-step runs once, at the point the polish returns.
    objective = compiled.neg_log_post
    res = minimize(
        objective,
        run.x,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10},
    )
    # Newton steps on the gradient: L-BFGS stops ~1e-8 short of the mode (engine/finish.py).
    x = newton_finish(np.asarray(res.x, dtype="float64"), objective)
    e = compiled.estep(x)
    if (
        np.isfinite(e.log_posterior)
        and not_worse(e.log_posterior, run.estep.log_posterior)  # up to rounding
        and collapse(compiled.problem, e) is None
    ):
        run.polish_gain = e.log_posterior - run.estep.log_posterior
        run.x, run.estep = x, e
