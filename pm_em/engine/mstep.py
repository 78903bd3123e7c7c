"""The M-step: maximize Q(θ) = E_z[log p(y, z | θ)] + log p(θ) given the responsibilities.

The numeric M-step works for any model: L-BFGS on a compiled Q and its gradient over the flat
unconstrained parameter vector, warm-started at the previous estimate. The responsibilities are
inputs of the compiled function, so nothing recompiles between iterations or restarts.

`ClosedFormMStep` uses the closed-form updates that `pm_em.closed_form` recognized in the
model, and the numeric M-step, restricted to the other coordinates, for what remains: an ECM
step (conditional maximization one block at a time), which never lowers Q either. Every M-step
has the signature ``mstep(x, resp) -> x_new``; a closed-form one also maps statistics from the
lean E-step directly, ``mstep.step(x, stats, resp_at)``.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from pm_em.closed_form import ClosedFormPlan, match_closed_form
from pm_em.compiling import CHECK_MODE, LazyFunction, compile_with_data
from pm_em.engine.accel import EMMap
from pm_em.engine.chains import expectation_inputs, expected_log_joint, flat_inputs
from pm_em.engine.estep import LeanEStepResult, compile_estep, compile_lean_estep
from pm_em.engine.objective import compile_value_and_grad, estep_value_and_grad, value_and_grad
from pm_em.exceptions import EMWarning, warn
from pm_em.reading.problem import EMProblem

__all__ = [
    "ClosedFormMStep",
    "NumericMStep",
    "Steps",
    "build_mstep",
    "compile_q",
    "compile_stats",
]

QFunction = Callable[..., tuple[float, np.ndarray]]


def compile_q(problem: EMProblem, **compile_kwargs) -> QFunction:
    """Compile ``(x, *resp) -> (-Q(x), -dQ/dx)``.

    Q is the expected complete-data log posterior: for each latent, the responsibility-
    weighted joint log density, plus the log likelihood of the observed variables no latent
    touches, plus the log prior. By Fisher's identity, its gradient at ``resp = p(z | y, x)``
    is the gradient of the observed-data log posterior at ``x``. ``resp`` has one entry per
    latent: its responsibilities, or for a chain a `ChainExpectations`
    (`EStepResult.expectations`), whose terms `pm_em.engine.chains.expected_log_joint` adds.
    """
    resp_vars = expectation_inputs(problem)
    q = problem.log_prior
    for lat, resp in zip(problem.latents, resp_vars, strict=True):
        q = q + expected_log_joint(lat, resp)
    for term in problem.log_lik_rest.values():
        q = q + term.sum()
    fn = compile_with_data(
        problem.model,
        [problem.x, *flat_inputs(resp_vars)],
        [-q],
        name="Q and gradient",
        grad_of=0,
        **compile_kwargs,
    )

    def neg_q_and_grad(x: np.ndarray, *resp: np.ndarray) -> tuple[float, np.ndarray]:
        value, g = fn(x, *flat_inputs(resp))
        value = float(value)
        if not np.isfinite(value):
            # Outside the support: tell the line search to step back.
            return np.inf, np.zeros_like(x)
        return value, np.asarray(g, dtype="float64")

    return neg_q_and_grad


class NumericMStep:
    """Maximize Q with L-BFGS-B, warm-started; never returns a point with a lower Q.

    Parameters
    ----------
    neg_q_and_grad : callable
        From `compile_q`.
    maxiter : int, default 200
        L-BFGS iterations per M-step.
    free : ndarray of bool, optional
        Coordinates of ``x`` to optimize; the others stay fixed (a conditional maximization).
        Default: all.
    """

    def __init__(
        self, neg_q_and_grad: QFunction, *, maxiter: int = 200, free: np.ndarray | None = None
    ):
        self.neg_q_and_grad = neg_q_and_grad
        self.maxiter = maxiter
        self.free = None if free is None or np.all(free) else np.asarray(free, dtype=bool)

    def __call__(self, x: np.ndarray, resp: Sequence[np.ndarray]) -> np.ndarray:
        """Return the parameters that maximize Q given ``resp``, starting from ``x``."""
        if x.size == 0:
            return x
        objective, start = self.neg_q_and_grad, x
        if self.free is not None:
            if not self.free.any():
                return x
            start = x[self.free]

            def objective(u, *resp):
                full = x.copy()
                full[self.free] = u
                value, grad = self.neg_q_and_grad(full, *resp)
                return value, grad[self.free]

        f0, _ = objective(start, *resp)
        res = minimize(
            objective,
            start,
            args=tuple(resp),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": self.maxiter, "ftol": 1e-13, "gtol": 1e-9},
        )
        # EM's monotonicity rests on Q not decreasing; keep the old point if it would.
        if not np.all(np.isfinite(res.x)) or not res.fun <= f0:
            return x
        if self.free is None:
            return np.asarray(res.x, dtype="float64")
        out = np.array(x, dtype="float64", copy=True)
        out[self.free] = res.x
        return out


# ``lean_mode="auto"`` compiles the lean E-step with Numba from this many latent elements on.
# Measured (./dev bench): Numba's lean E-step saves ~2 ms per iteration at n = 1e5 and ~12 ms
# at 1e6 over CVM's, while starting Numba in a process costs ~0.7 s; below this size the
# first fit is faster without it.
AUTO_NUMBA_SIZE = 250_000


def compile_stats(problem: EMProblem, plan: ClosedFormPlan, **compile_kwargs) -> Callable:
    """Compile ``(x, *resp) -> statistics`` of ``plan`` from given responsibilities.

    ``resp`` as in `compile_q`: per latent, responsibilities or a `ChainExpectations`.
    ``compile_kwargs`` default to Python-linked ops (`CHECK_MODE`).
    """
    resp_vars = expectation_inputs(problem)
    stats = plan.stat_graphs(resp_vars)
    # For mixtures the statistics from given responsibilities serve starting points and ECM
    # steps only: numpy-speed Python-linked ops are enough, and cost no backend compile.
    inputs = [problem.x, *flat_inputs(resp_vars)]
    compile_kwargs = compile_kwargs or {"mode": CHECK_MODE}
    fn = compile_with_data(problem.model, inputs, stats, name="statistics", **compile_kwargs)

    def stats_from_resp(x: np.ndarray, *resp: np.ndarray) -> tuple[np.ndarray, ...]:
        out = fn(np.asarray(x, dtype="float64"), *flat_inputs(resp))
        return tuple(np.asarray(v) for v in out)

    return stats_from_resp


class ClosedFormMStep:
    """M-step with closed-form updates where the model has them, numeric for the rest.

    Parameters
    ----------
    plan : ClosedFormPlan
        What `pm_em.closed_form.match_closed_form` recognized.
    neg_q_and_grad : callable
        From `compile_q` (may be a `LazyFunction`): the numeric M-step of the unclaimed
        coordinates, and the fallback wherever a closed form does not apply (a mode on the
        boundary of the parameter space, an ordered transform whose order the update breaks).
    stats_from_resp : callable
        From `compile_stats`.
    """

    def __init__(self, plan: ClosedFormPlan, neg_q_and_grad: QFunction, stats_from_resp):
        self.plan = plan
        self.stats_from_resp = stats_from_resp
        self.numeric = NumericMStep(neg_q_and_grad)
        free = np.zeros(plan.problem.n_params, dtype=bool)
        for name in plan.unclaimed:
            free[plan.slots[name].index] = True
        self.numeric_rest = NumericMStep(neg_q_and_grad, free=free)
        self.n_fallback = 0

    def __call__(self, x: np.ndarray, resp: Sequence[np.ndarray]) -> np.ndarray:
        """Return the updated parameters given the responsibilities ``resp``."""
        resp = tuple(resp)
        return self.step(x, self.stats_from_resp(x, *resp), lambda: resp)

    def step(
        self,
        x: np.ndarray,
        stats: Sequence[np.ndarray],
        resp_at: Callable[[], Sequence[np.ndarray]],
    ) -> np.ndarray:
        """Update from the statistics at ``x``; ``resp_at()`` gives responsibilities if needed."""
        x_new = self.plan.update(x, stats)
        if x_new is None:
            self.n_fallback += 1
            return self.numeric(x, resp_at())
        if self.plan.unclaimed:
            x_new = self.numeric_rest(x_new, resp_at())
        return x_new


def _agrees(lean, full, rtol: float = 1e-9) -> bool:
    """Whether a lean and a full E-step result at the same point carry the same densities."""
    pairs = [(lean.log_posterior, full.log_posterior)]
    pairs += list(zip(lean.log_marginal, full.log_marginal, strict=True))
    for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        finite = np.isfinite(a)
        if not np.array_equal(finite, np.isfinite(b)):
            return False
        if not np.allclose(a[finite], b[finite], rtol=rtol, atol=rtol):
            return False
    return True


class CheckedLeanEStep:
    """The lean E-step, verified once against the model's own E-step.

    The lean E-step computes the joint log density from the recognized structure (broadcasts
    instead of the model's gathers). The first time it returns a finite log posterior, the
    full E-step is evaluated at the same point and the two must agree; if they do not (a
    structure recognized wrongly: a bug), a warning is raised and every later call returns the
    full E-step's result, so the fit stays correct.
    """

    def __init__(self, lean: Callable, full: Callable, rtol: float = 1e-9):
        self.lean, self.full, self.rtol = lean, full, rtol
        self.verified = False
        self.failed = False

    def __call__(self, x: np.ndarray):
        """E-step at ``x``: a `LeanEStepResult`, or an `EStepResult` after a failed check."""
        if self.failed:
            return self.full(x)
        e = self.lean(x)
        if not self.verified and np.isfinite(e.log_posterior):
            full = self.full(x)
            if not _agrees(e, full, self.rtol):
                self.failed = True
                warn(
                    "pm_em's closed-form E-step disagrees with the model's log density; "
                    "falling back to the general E-step. This is a bug in pm_em's model "
                    "recognition: please report the model.",
                    EMWarning,
                )
                return full
            self.verified = True
        return e


@dataclass(frozen=True)
class Steps:
    """The functions EM iterates with, as `build_mstep` chose them.

    Attributes
    ----------
    estep : callable
        ``estep(x) -> EStepResult``, with responsibilities.
    mstep : callable
        ``mstep(x, resp) -> x_new``.
    em_map : EMMap
    value_and_grad : callable
        ``value_and_grad(x) -> (log posterior, gradient or None)`` of the observed-data log
        posterior, for the polish and the checks of the estimate (`pm_em.engine.objective`).
    """

    estep: Callable
    mstep: Callable
    em_map: EMMap
    value_and_grad: Callable


def _chain_estep(problem: EMProblem, plan: ClosedFormPlan, estep: Callable, compile_kwargs):
    """Return the E-step with a chain's emissions from the plan's broadcasts, checked once.

    Broadcasts (``y[:, None]`` against the K parameters) need a third of the memory of the
    model's gathers (``mu[z]`` with z enumerated), and less time; the first finite E-step is
    compared with the model's own (`CheckedLeanEStep`), which takes over if they disagree.
    """
    log_joints = [plan.emission_log_joint(j) for j in range(len(problem.latents))]
    if all(g is None for g in log_joints):
        return estep
    log_joints = [
        lat.log_joint if g is None else g
        for lat, g in zip(problem.latents, log_joints, strict=True)
    ]
    # PyMC's log densities carry rounded constants that a graph folds one way or another
    # (measured: 1.9e-9 per Normal term between the two graphs); a wrong recognition is off
    # by O(1). 1e-7 relative on each step's log p(y_t | y_<t) tells them apart.
    fast = compile_estep(problem, log_joints=log_joints, **compile_kwargs)
    return CheckedLeanEStep(fast, estep, rtol=1e-7)


def build_mstep(
    problem: EMProblem,
    estep: Callable,
    neg_q_and_grad: QFunction,
    *,
    lean_mode: str | None = None,
    **compile_kwargs,
) -> Steps:
    """Choose the E- and M-steps of ``problem`` and the EM iteration that uses them.

    Closed form where `pm_em.closed_form` recognizes the model, numeric otherwise. When the
    closed form covers every parameter, the per-iteration E-step is the lean one (checked
    once against the model's own E-step, see `CheckedLeanEStep`, which is then compiled for
    that one evaluation only, in `pm_em.compiling.CHECK_MODE`), and the full E-step (for
    starting points and results) and the polish's objective are compiled from the same
    broadcasts, which needs a third less memory and time than the model's own graph of
    gathers (and its Q, the costliest graph of a model, is never compiled).

    Parameters
    ----------
    problem : EMProblem
    estep : callable
        The model's own E-step, from `compile_estep` (may be a `LazyFunction`).
    neg_q_and_grad : callable
        From `compile_q` (a `LazyFunction` compiles only when a numeric step is needed).
    lean_mode : str, optional
        Backend of the lean E-step (the function every iteration runs), overriding
        ``compile_kwargs["mode"]`` for it alone. ``"auto"``: Numba from `AUTO_NUMBA_SIZE`
        latent elements on (where its faster iterations repay its start-up), else
        ``compile_kwargs["mode"]``.
    **compile_kwargs
        Passed to `pymc.pytensorf.compile`.

    Returns
    -------
    Steps
    """
    plan = match_closed_form(problem)
    if plan is None:
        numeric = NumericMStep(neg_q_and_grad)
        em_map = EMMap(estep=estep, mstep=lambda x, e: numeric(x, e.expectations))
        return Steps(estep, numeric, em_map, estep_value_and_grad(estep, neg_q_and_grad))
    # A chain's E-step is forward–backward on the emissions, which the full E-step returns:
    # the lean E-step (statistics inside one graph) is for independent latents, and a chain's
    # statistics come from the smoothed marginals every iteration, compiled with the backend.
    has_chain = any(lat.coupling == "chain" for lat in problem.latents)
    stats_kwargs = {"mode": compile_kwargs.get("mode")} if has_chain else {}
    mstep = ClosedFormMStep(plan, neg_q_and_grad, compile_stats(problem, plan, **stats_kwargs))
    if has_chain or not plan.complete:
        if has_chain:
            estep = _chain_estep(problem, plan, estep, compile_kwargs)
        # The polish's objective: the E-step and Q's gradient at its expectations (a
        # chain's log likelihood is forward-backward's, not a logsumexp per element).
        em_map = EMMap(estep=estep, mstep=lambda x, e: mstep(x, e.expectations))
        return Steps(estep, mstep, em_map, estep_value_and_grad(estep, neg_q_and_grad))
    log_joints = [plan.log_joint(j) for j in range(len(problem.latents))]
    full_estep = compile_estep(problem, log_joints=log_joints, **compile_kwargs)
    if lean_mode == "auto":
        n_elements = sum(int(np.prod(lat.shape)) for lat in problem.latents)
        lean_mode = "NUMBA" if n_elements >= AUTO_NUMBA_SIZE else None
    lean_kwargs = {**compile_kwargs, "mode": lean_mode} if lean_mode else compile_kwargs
    # The model's own E-step, evaluated once to check the lean one: no backend compile.
    reference = LazyFunction(lambda: compile_estep(problem, name="E-step (check)", mode=CHECK_MODE))
    lean_estep = CheckedLeanEStep(compile_lean_estep(problem, plan, **lean_kwargs), reference)

    def lean_mstep(x, e):
        if isinstance(e, LeanEStepResult):
            return mstep.step(x, e.stats, lambda: full_estep(x).resp)
        return mstep(x, e.resp)

    fused = value_and_grad(
        lambda: compile_value_and_grad(problem, log_joints, **compile_kwargs),
        estep_value_and_grad(full_estep, neg_q_and_grad),
    )
    em_map = EMMap(estep=lean_estep, mstep=lean_mstep, lean=True)
    return Steps(full_estep, mstep, em_map, fused)
