"""One EM run from one starting point, and how the best run is finished at a mode.

`run_em` iterates EM until convergence, ``max_iter`` or a degenerate point. `finish` takes
the run EM returns and makes sure it ends at a local maximum: the polish (L-BFGS on the
observed-data log posterior, which EM approaches only linearly, then Newton steps,
`pm_em.engine.finish`), then the second-order check (`pm_em.engine.curvature`); at a saddle, or
where components are identical (`pm_em.engine.symmetry`), it steps off to a higher point
and EM carries on from there (at most `MAX_ESCAPES` times).
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from pm_em.engine.accel import make_step
from pm_em.engine.compiled import CompiledProblem
from pm_em.engine.curvature import ModeCheck, check_mode, curvature_steps, escape
from pm_em.engine.estep import EStepResult
from pm_em.engine.finish import newton_finish, not_worse
from pm_em.engine.health import Degeneracy, Health, check_start
from pm_em.engine.monitor import ConvergenceMonitor
from pm_em.engine.symmetry import duplicate_groups, split_responsibilities
from pm_em.timing import stage

__all__ = ["MAX_ESCAPES", "MODE_NEWTON_SE", "EMRun", "finish", "polish", "run_em"]

# Saddles left before `finish` returns the point as it is.
MAX_ESCAPES = 5
# The estimate has reached the mode when no direction curves upwards and a Newton step
# would move it by less than this many standard errors.
MODE_NEWTON_SE = 1e-2


@dataclass(eq=False)
class EMRun:
    """One EM run from one starting point.

    ``log_posterior`` is the trace of EM's iterations (and of the points it resumed from
    after a saddle, whose values are in ``saddles``); ``estep`` is the full E-step at ``x``.
    """

    x: np.ndarray
    estep: EStepResult | None
    log_posterior: list[float] = field(default_factory=list)
    log_likelihood: list[float] = field(default_factory=list)
    converged: bool = False
    status: str = "running"
    message: str = ""
    polish_gain: float = 0.0
    polished: bool = False
    polish_converged: bool = False
    degeneracy: Degeneracy | None = None
    saddles: list[float] = field(default_factory=list)
    mode: ModeCheck | None = None

    @property
    def n_iter(self) -> int:
        """Number of M-steps taken."""
        return max(len(self.log_posterior) - 1 - len(self.saddles), 0)

    @property
    def final_log_posterior(self) -> float:
        """The log posterior at the returned estimate (after the polish)."""
        return self.estep.log_posterior if self.estep is not None else -np.inf

    @property
    def mode_reached(self) -> bool:
        """Whether the estimate passed the second-order check with a negligible Newton step.

        The full-Hessian check measures the Newton step (`MODE_NEWTON_SE`); the Lanczos
        check does not, and then the polish must also have converged.
        """
        check = self.mode
        if check is None or check.method == "none" or check.is_saddle:
            return False
        if check.method == "hessian":
            return bool(check.newton_se < MODE_NEWTON_SE)
        return self.polish_converged


def run_em(
    compiled: CompiledProblem,
    x0,
    *,
    health: Health,
    run_index,
    max_iter,
    tol,
    progress=None,
    task=None,
    accelerate=False,
) -> EMRun:
    """Iterate EM from ``x0`` until convergence, ``max_iter`` or a degenerate point.

    Checks the start (`check_start`), reports each iteration's log posterior to a
    `ConvergenceMonitor` and to the progress bar's ``task``, and abandons the run (status
    ``"degenerate"``) when `Health` sees a component collapsing, during the run (`spike`)
    or at its end (`degenerate`).
    """
    with stage("first E-step"):
        e = compiled.estep(x0)
    check_start(compiled.problem, e, x0, run_index)
    run = EMRun(x=x0, estep=e)
    monitor = ConvergenceMonitor(tol, max_iter)
    monitor.report(e.log_posterior)
    run.log_likelihood.append(e.log_likelihood)
    _iterate(compiled, run, monitor, health, max_iter, accelerate, progress, task)
    return run


def _iterate(compiled, run: EMRun, monitor, health: Health, budget, accelerate, progress, task):
    """Advance ``run`` by at most ``budget`` EM iterations; set its status at the end."""
    step = make_step(compiled.em_map, accelerate)
    e = compiled.em_map.estep(run.x) if compiled.em_map.lean else run.estep
    if compiled.em_map.lean:
        run.estep = e  # frees the (n, K) arrays of the full E-step

    def valid(e_try) -> bool:
        return health.spike(e_try) is None

    run.status = "running"
    for _ in range(budget):
        x_new, e_new = step(run.x, e, valid)
        collapsed = health.spike(e_new)
        if collapsed:
            # Name the component if the last sound point already shows it shrinking, else
            # where it collapsed (one step can take a scale from O(1) to 1e-11: on tied
            # values the update's round-off decides which iteration crosses the threshold).
            named = health.degenerate(compiled.estep(run.x), run.x)
            if named is None:
                at_collapse = health.degenerate(compiled.estep(x_new), x_new)
                if at_collapse is not None and at_collapse.component is not None:
                    named = at_collapse
            run.status, run.degeneracy = "degenerate", named
            run.message = named.message if named is not None else collapsed
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
        found = health.degenerate(run.estep, run.x)
        if found is not None:
            run.status, run.message, run.degeneracy = "degenerate", found.message, found
        else:
            run.status = "converged" if run.converged else "max_iter"


def polish(compiled: CompiledProblem, run: EMRun, health: Health | None = None) -> None:
    """Finish at the exact mode with L-BFGS on the observed-data log posterior.

    EM converges linearly, so its last iterate sits a little short of the mode. L-BFGS takes
    the observed-data log posterior and its gradient from `CompiledProblem.value_and_grad`,
    which keeps nothing between evaluations; one full E-step at the optimizer's answer gives
    the responsibilities, so memory does not grow with the number of evaluations. The
    polished point replaces the run's only if it is at least as high and not degenerate.
    """
    if run.x.size == 0:
        return
    run.polish_converged = False

    def neg_log_post(x):
        value, grad = compiled.value_and_grad(x)
        if grad is None:
            return np.inf, np.zeros_like(x)
        return -value, -grad

    res = minimize(
        neg_log_post,
        run.x,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10},
    )
    # Newton steps on the gradient: L-BFGS stops ~1e-8 short of the mode (engine/finish.py).
    x = newton_finish(np.asarray(res.x, dtype="float64"), neg_log_post)
    e = compiled.estep(x)
    health = health or Health(compiled.problem)
    run.polished = True
    if (
        np.isfinite(e.log_posterior)
        and not_worse(e.log_posterior, run.estep.log_posterior)  # up to rounding
        and health.degenerate(e, x) is None
    ):
        run.polish_gain += e.log_posterior - run.estep.log_posterior
        run.x, run.estep = x, e
        run.polish_converged = bool(res.success)


def finish(
    compiled: CompiledProblem,
    run: EMRun,
    *,
    health: Health,
    rng: np.random.Generator,
    polish_run: bool,
    max_iter: int,
    tol: float,
    accelerate=False,
) -> None:
    """Polish ``run`` (if asked), check it is a local maximum, and move off saddles.

    At a saddle (`check_mode`) where EM or the polish converged, `escape` finds a higher
    point along the upward direction; EM resumes from it with the iterations ``max_iter``
    leaves (the trace records the point, ``run.saddles`` the saddle's log posterior), and
    the result is polished and checked again, at most `MAX_ESCAPES` times. The last check
    is ``run.mode``.
    """
    for _ in range(MAX_ESCAPES + 1):
        if polish_run:
            polish(compiled, run, health)
        run.mode = check_mode(compiled, run.x, rng)
        # Only a point that claims to be a mode (EM or the polish converged) can be a
        # saddle; elsewhere upward curvature is just the road EM was still on.
        stationary = run.converged or run.polish_converged
        if not stationary or len(run.saddles) == MAX_ESCAPES:
            return
        steps = curvature_steps(run.mode) + _split_steps(compiled, run, health)
        moved = escape(compiled, run.x, run.estep, steps, lambda e: health.spike(e) is None)
        if moved is None:
            return
        run.saddles.append(run.estep.log_posterior)
        run.x, run.estep = moved
        monitor = ConvergenceMonitor(tol, max_iter)
        monitor.history = list(run.log_posterior)
        monitor.report(run.estep.log_posterior)
        run.log_likelihood.append(run.estep.log_likelihood)
        budget = max(max_iter - run.n_iter, 0)
        _iterate(compiled, run, monitor, health, budget, accelerate, None, None)
        if run.status == "degenerate":
            return


def _split_steps(compiled: CompiledProblem, run: EMRun, health: Health) -> list:
    """Return steps that pull identical components apart (`pm_em.engine.symmetry`), or []."""
    e = run.estep
    if any(lat.coupling == "chain" for lat in compiled.problem.latents):
        return []  # a chain's states are split by its own transitions, not by its data
    for j, data in enumerate(health.data):
        if data is None:
            continue
        groups = duplicate_groups(e.log_resp[j], e.log_marginal[j])
        if groups:
            split = split_responsibilities(e, j, data, groups)
            direction = compiled.mstep(run.x, split) - run.x
            return [[t * direction] for t in (1.0, 0.5, 0.25, 0.1)]
    return []
