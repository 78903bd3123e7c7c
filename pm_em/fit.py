"""The EM loop: iterations, convergence, restarts, the final polish, and `fit`."""

import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pymc as pm
import xarray as xr
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from pm_em.accel import EMMap, make_step
from pm_em.estep import EStepResult, compile_estep
from pm_em.exceptions import (
    DegenerateFitError,
    DegenerateRunWarning,
    EMConvergenceWarning,
    EmptyComponentWarning,
    NonMonotoneWarning,
)
from pm_em.init import VALID_INIT, InitMethod, initial_x
from pm_em.mstep import LazyFunction, build_mstep, compile_q
from pm_em.problem import EMProblem, build_problem
from pm_em.results import build_datatree, compile_missing, compile_point_values

__all__ = ["ConvergenceMonitor", "EMRun", "fit"]

# A single observation whose marginal log likelihood stands this many nats (per observed
# value of its latent element) above the median one is a component collapsing onto it: no
# non-degenerate fit makes one point e^25 (10^11) times likelier than the typical one.
_COLLAPSE_NATS = 25.0
# Below this expected count a categorical component is reported as empty.
_EMPTY_COUNT = 1e-3


class ConvergenceMonitor:
    """History of the observed-data log posterior, with EM's convergence rule.

    Converged when the change between the last two values, relative to the last value's
    size, is at most ``tol`` (so ``tol=0`` stops only when the value stops changing).
    A decrease beyond floating-point noise is reported with a `NonMonotoneWarning`.
    Subclass and override `converged` for another rule.
    """

    def __init__(self, tol: float, max_iter: int):
        self.tol = tol
        self.max_iter = max_iter
        self.history: list[float] = []

    @property
    def n_iter(self) -> int:
        """Number of M-steps taken (the history holds the start too)."""
        return max(len(self.history) - 1, 0)

    def report(self, log_posterior: float) -> None:
        """Record a new value and warn if it decreased."""
        if self.history:
            prev = self.history[-1]
            noise = np.sqrt(np.finfo(float).eps) * max(1.0, abs(prev))
            if log_posterior < prev - noise:
                warnings.warn(
                    f"The observed-data log posterior decreased at EM iteration {self.n_iter + 1}"
                    f" from {prev:.10g} to {log_posterior:.10g}. EM cannot decrease it; this "
                    "points at an M-step that failed to improve its objective.",
                    NonMonotoneWarning,
                    stacklevel=4,
                )
        self.history.append(float(log_posterior))

    @property
    def converged(self) -> bool:
        """Whether the relative change of the last step is within ``tol``."""
        if len(self.history) < 2:
            return False
        last, prev = self.history[-1], self.history[-2]
        return abs(last - prev) <= self.tol * abs(last)


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


@dataclass(frozen=True)
class _Compiled:
    problem: EMProblem
    estep: Callable[[np.ndarray], EStepResult]
    neg_q: Callable
    mstep: Callable  # (x, resp) -> x_new: closed form where recognized, else numeric
    point_values: Callable[[np.ndarray], dict]
    impute: Callable
    signature: tuple
    em_map: EMMap  # one EM iteration, with the lean E-step when the M-step is closed form


# Compile once per model: {model: {(latent, compile options): _Compiled}}.
_CACHE: "weakref.WeakKeyDictionary[pm.Model, dict]" = weakref.WeakKeyDictionary()


def _compiled(model: pm.Model, latent, compile_kwargs: dict) -> _Compiled:
    key = (tuple(latent) if latent is not None else None, tuple(sorted(compile_kwargs.items())))
    signature = tuple(model.named_vars)  # a model changed since caching must be re-read
    per_model = _CACHE.setdefault(model, {})
    hit = per_model.get(key)
    if hit is not None and hit.signature == signature:
        return hit
    problem = build_problem(model, latent)
    # "lean_mode" is ours, not pytensor's: the backend of the lean E-step alone.
    compile_kwargs = dict(compile_kwargs)
    lean_mode = compile_kwargs.pop("lean_mode", None)
    # The model's own E-step; a closed-form model replaces it (build_mstep) and compiles it
    # only to check its lean E-step once.
    estep = LazyFunction(lambda: compile_estep(problem, **compile_kwargs))
    # Q and its gradient compile on first use: a closed-form fit may never need them.
    neg_q = LazyFunction(lambda: compile_q(problem, **compile_kwargs))
    values = compile_point_values(problem, **compile_kwargs)
    impute = compile_missing(problem, **compile_kwargs)
    estep, mstep, em_map = build_mstep(problem, estep, neg_q, lean_mode=lean_mode, **compile_kwargs)
    compiled = _Compiled(problem, estep, neg_q, mstep, values, impute, signature, em_map)
    per_model[key] = compiled
    return compiled


def _check_start(problem: EMProblem, e: EStepResult, x: np.ndarray, run: int) -> None:
    if np.isfinite(e.log_posterior):
        return
    values = problem.from_x(x)
    for p in problem.params:
        if not np.all(np.isfinite(values[p.value_name])):
            raise ValueError(f"The starting value of '{p.name}' is not finite (run {run}).")
    if not np.isfinite(e.log_prior):
        raise ValueError(
            "The log prior is not finite at the starting point (run "
            f"{run}): check the priors and `initvals` of the model's parameters "
            f"{[p.name for p in problem.params]}; every starting value must lie in its "
            "prior's support."
        )
    for lat, lm in zip(problem.latents, e.log_marginal, strict=True):
        bad = np.flatnonzero(~np.isfinite(lm.ravel()))
        if bad.size:
            raise ValueError(
                f"At the starting point (run {run}) no value of latent '{lat.name}' can "
                f"explain element(s) {bad[:5].tolist()} of {list(lat.observed)}: every "
                "assignment has zero density. Check the data against the model's support, "
                "or start elsewhere with `initvals`."
            )
    names = list(problem.log_lik_rest)
    for name, ll in zip(names, e.log_lik_rest, strict=True):
        if not np.all(np.isfinite(ll)):
            raise ValueError(
                f"Observed variable '{name}' has zero density at the starting point (run "
                f"{run}); check its data against the model's support, or pass `initvals`."
            )
    raise ValueError(f"The log posterior is {e.log_posterior} at the starting point (run {run}).")


def _collapse(problem: EMProblem, e: EStepResult) -> str | None:
    """Describe a collapse (unbounded likelihood) at this E-step, or None."""
    if not np.isfinite(e.log_posterior):
        return f"the log posterior became {e.log_posterior}"
    for lat, lm in zip(problem.latents, e.log_marginal, strict=True):
        if lm.size < 3:
            continue
        flat = lm.ravel()
        top = int(np.argmax(flat))
        # The typical value from an evenly spaced subsample: the median of all n values costs
        # ~10 ms per iteration at n = 1e6, and the threshold is far from the median's noise.
        stride = max(1, flat.size // 10_000)
        spike = flat[top] - np.median(flat[::stride])
        if spike > _COLLAPSE_NATS * lat.values_per_element:
            return (
                f"element {top} of {list(lat.observed)} (latent '{lat.name}') has a log "
                f"likelihood {spike:.0f} nats above the median: a component collapsed onto it"
            )
    return None


def _polish(compiled: _Compiled, run: EMRun) -> None:
    """Finish at the exact mode with L-BFGS on the observed-data log posterior.

    EM converges linearly, so its last iterate sits a little short of the mode. The marginal
    log posterior and its gradient (Fisher's identity: the gradient of Q at the current
    responsibilities) come from the two compiled functions EM already has.
    """
    if run.x.size == 0:
        return
    cache: dict[bytes, EStepResult] = {}

    def neg_log_post(x):
        e = compiled.estep(x)
        cache[x.tobytes()] = e
        if not np.isfinite(e.log_posterior):
            return np.inf, np.zeros_like(x)
        _, grad = compiled.neg_q(x, *e.resp)
        return -e.log_posterior, grad

    res = minimize(
        neg_log_post,
        run.x,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-10},
    )
    x = np.asarray(res.x, dtype="float64")
    e = cache.get(x.tobytes()) or compiled.estep(x)
    if (
        np.isfinite(e.log_posterior)
        and e.log_posterior >= run.estep.log_posterior
        and _collapse(compiled.problem, e) is None
    ):
        run.polish_gain = e.log_posterior - run.estep.log_posterior
        run.x, run.estep = x, e


def _run_em(compiled, x0, *, run_index, max_iter, tol, progress, task, accelerate=False) -> EMRun:
    problem = compiled.problem
    e = compiled.estep(x0)
    _check_start(problem, e, x0, run_index)
    run = EMRun(x=x0, estep=e)
    monitor = ConvergenceMonitor(tol, max_iter)
    monitor.report(e.log_posterior)
    run.log_likelihood.append(e.log_likelihood)
    step = make_step(compiled.em_map, accelerate)
    if compiled.em_map.lean:
        run.estep = e = compiled.em_map.estep(x0)  # frees the (n, K) arrays of the full one

    def valid(e_try) -> bool:
        return _collapse(problem, e_try) is None

    for _ in range(max_iter):
        x_new, e_new = step(run.x, e, valid)
        collapse = _collapse(problem, e_new)
        if collapse:
            run.status, run.message = "degenerate", collapse
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


def _validate(n_init, max_iter, tol, init) -> None:
    if not (isinstance(n_init, int | np.integer) and n_init >= 1):
        raise ValueError(f"`n_init` must be a positive integer, got {n_init!r}.")
    if not (isinstance(max_iter, int | np.integer) and max_iter >= 1):
        raise ValueError(f"`max_iter` must be a positive integer, got {max_iter!r}.")
    if not (np.isscalar(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}.")
    if not callable(init) and init not in VALID_INIT:
        raise ValueError(f"`init` must be one of {VALID_INIT} or a callable, got {init!r}.")


def _progress(progressbar: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("log posterior {task.fields[log_posterior]}"),
        TimeElapsedColumn(),
        disable=not progressbar,
    )


def fit(
    model: pm.Model | None = None,
    *,
    latent: Sequence[str] | None = None,
    initvals: Mapping[str, object] | None = None,
    n_init: int = 1,
    init: InitMethod | Callable = "auto",
    max_iter: int = 1000,
    tol: float = 1e-8,
    random_seed: int | np.random.Generator | None = None,
    progressbar: bool = True,
    polish: bool = True,
    accelerate: bool = False,
    compile_kwargs: Mapping | None = None,
) -> xr.DataTree:
    """Find the posterior mode of a PyMC model by Expectation-Maximization.

    The finite discrete latent variables are summed out by enumerating their supports (the
    E-step); the continuous free variables are the parameters, estimated by MAP in
    `pm.find_MAP`'s convention (constrained space, no Jacobian; flat priors give the MLE).

    Parameters
    ----------
    model : pm.Model, optional
        Default: the model of the ``with`` context.
    latent : sequence of str, optional
        Latent variables to sum out. Default: every discrete free variable.
    initvals : dict of {str: array_like}, optional
        Starting values (constrained space) of parameters. With ``init="auto"`` the first run
        starts there; later restarts are data-driven.
    n_init : int, default 1
        Number of EM runs from different starting points; the one with the highest log
        posterior is returned, and each run's result is in ``em_stats``.
    init : {"auto", "kmeans", "random", "initial_point"} or callable, default "auto"
        How runs start. ``"auto"``: ``initvals`` if given, else k-means on the observed data
        attached to each latent element gives starting responsibilities, and one M-step the
        starting parameters (this breaks the symmetry of exchangeable components and needs no
        prior draws). ``"random"``: Dirichlet-random responsibilities. ``"initial_point"``:
        the model's initial point. A callable ``init(model, rng) -> dict`` gives initvals.
    max_iter : int, default 1000
        Maximum EM iterations per run; reaching it warns with `EMConvergenceWarning`.
    tol : float, default 1e-8
        Stop when the change in the observed-data log posterior, relative to its size, is at
        most ``tol``. ``tol=0`` runs ``max_iter`` iterations unless the value stops changing.
    random_seed : int or Generator, optional
        Makes every run repeatable bit for bit.
    progressbar : bool, default True
        Show a progress bar.
    polish : bool, default True
        Finish the best run with L-BFGS on the observed-data log posterior, which reaches the
        exact mode that EM approaches only linearly. The gain is ``em_stats.polish_gain``.
    accelerate : bool, default False
        Accelerate EM with SQUAREM (Varadhan and Roland 2008): extrapolate from two EM
        iterations, and keep the extrapolation only if the log posterior did not decrease
        (else take the two plain iterations), so EM stays monotone. Each accelerated
        iteration costs two or three E-steps but often replaces many plain ones; the
        ``iteration`` dim of ``em_stats`` then counts accelerated iterations.
    compile_kwargs : dict, optional
        Passed to `pymc.pytensorf.compile`, e.g. ``{"mode": "NUMBA"}``; the extra key
        ``"lean_mode"`` sets the backend of the per-iteration E-step of a closed-form model
        alone (``"auto"``: Numba for large data). Default: `default_compile_kwargs`,
        ``{"mode": "CVM", "lean_mode": "auto"}``.

    Returns
    -------
    xarray.DataTree
        Groups ``posterior`` (chain=1, draw=1), ``latent_posterior``, ``em_stats``,
        ``log_likelihood``, ``observed_data``, ``constant_data``; see the README.
        Deterministics that depend on a latent or on missing values have no single value
        at the estimate and are left out of ``posterior`` (the completed data of a variable
        with missing values is there, under its name).

    Raises
    ------
    ValueError
        For a model EM cannot handle (named in the message), bad arguments, or a starting
        point of zero density.
    DegenerateFitError
        When every run ended with an unbounded likelihood (a collapsed component).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pm_em
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(-2, 1, 200), rng.normal(3, 1, 300)])
    >>> with pm.Model(coords={"component": [0, 1]}) as model:
    ...     w = pm.Dirichlet("w", a=np.ones(2), dims="component")
    ...     mu = pm.Normal("mu", 0, 10, dims="component")
    ...     sigma = pm.HalfNormal("sigma", 5, dims="component")
    ...     z = pm.Categorical("z", p=w, shape=len(x))
    ...     y = pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x)
    ...     idata = pm_em.fit(random_seed=1, progressbar=False)
    >>> idata.posterior["mu"].values.round(1)
    array([[[-1.9,  3. ]]])
    """
    _validate(n_init, max_iter, tol, init)
    model = pm.modelcontext(model)
    kwargs = dict(compile_kwargs) if compile_kwargs is not None else default_compile_kwargs()
    compiled = _compiled(model, latent, kwargs)
    rng = np.random.default_rng(random_seed)
    run_rngs = rng.spawn(n_init)
    runs: list[EMRun] = []
    started = time.perf_counter()
    # One BLAS thread: the M-step's L-BFGS works on a few parameters, where OpenBLAS's thread
    # start-up and spinning cost ~20x the arithmetic (measured on 2 cores, scipy 1.18).
    with _progress(progressbar) as progress, threadpool_limits(1, user_api="blas"):
        for i, run_rng in enumerate(run_rngs):
            task = progress.add_task(f"EM run {i + 1}/{n_init}", total=max_iter, log_posterior="…")
            x0 = initial_x(
                compiled.problem,
                init=init,
                initvals=initvals,
                run=i,
                rng=run_rng,
                estep=compiled.estep,
                mstep=compiled.mstep,
            )
            run = _run_em(
                compiled,
                x0,
                run_index=i,
                max_iter=max_iter,
                tol=tol,
                progress=progress,
                task=task,
                accelerate=accelerate,
            )
            if run.status == "degenerate":
                warnings.warn(
                    f"EM run {i + 1} of {n_init} was abandoned: {run.message}. Under flat "
                    "priors the likelihood is unbounded when a component sits on one point; "
                    "other restarts carry on. A weakly informative prior on the scales (e.g. "
                    "`pm.HalfNormal` or `pm.InverseGamma`) removes the singularity.",
                    DegenerateRunWarning,
                    stacklevel=2,
                )
            progress.update(task, completed=max_iter if run.converged else run.n_iter)
            runs.append(run)
    good = [r for r in runs if r.status != "degenerate"]
    if not good:
        raise DegenerateFitError(
            f"All {n_init} EM run(s) ended in a degenerate point ({runs[0].message}). The "
            "likelihood of this model is unbounded (flat priors on scales let a component "
            "collapse onto one observation). Use a weakly informative prior on the scales, "
            "such as `pm.HalfNormal` or `pm.InverseGamma`, or more restarts (`n_init`)."
        )
    best = max(good, key=lambda r: r.final_log_posterior)
    if polish:
        with threadpool_limits(1, user_api="blas"):
            _polish(compiled, best)
    if not best.converged:
        warnings.warn(
            f"EM reached max_iter={max_iter} before the relative change of the log posterior "
            f"fell below tol={tol}. Increase `max_iter` or `tol`"
            + (" (the final polish still moved the estimate to the mode)." if polish else "."),
            EMConvergenceWarning,
            stacklevel=2,
        )
    empty = _empty_components(compiled.problem, best.estep)
    for name, ks in empty.items():
        warnings.warn(
            f"Latent '{name}' has empty component(s) {ks} at the estimate (expected count "
            f"below {_EMPTY_COUNT}). Their parameters are not informed by the data; consider "
            "fewer components.",
            EmptyComponentWarning,
            stacklevel=2,
        )
    return build_datatree(
        compiled.problem,
        best,
        runs,
        best_index=runs.index(best),
        point_values=compiled.point_values(best.x),
        missing_values=compiled.impute(best.x, best.estep.resp),
        elapsed=time.perf_counter() - started,
    )


def _empty_components(problem: EMProblem, e: EStepResult) -> dict[str, list]:
    empty = {}
    for lat, resp in zip(problem.latents, e.resp, strict=True):
        if lat.kind != "Categorical":
            continue
        counts = resp.reshape(-1, lat.support.size).sum(axis=0)
        ks = lat.support[counts < _EMPTY_COUNT].tolist()
        if ks:
            empty[lat.name] = ks
    return empty


def default_compile_kwargs() -> dict:
    """Compile options used when `fit` gets none: see the module docstring of pm_em.

    Measured by ``./dev bench`` (issue 5): C ("CVM") compiles fastest and its cache is keyed
    on the Ops, so a new model or data set costs little; the lean E-step of a closed-form
    model, which runs every iteration and whose graph is the same for every data set and size,
    runs faster in Numba at large n, so there it alone is compiled with Numba (``"auto"``:
    from `pm_em.mstep.AUTO_NUMBA_SIZE` latent elements on).
    """
    return {"mode": "CVM", "lean_mode": "auto"}
