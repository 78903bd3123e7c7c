"""`fit`: EM from several starting points, the best run polished and packaged as a DataTree.

The top of the flow model → problem → E/M steps → loop → results: it asks `pm_em.engine` for
the compiled problem and the runs, and `pm_em.results.datatree` for the packaging.
"""

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pymc as pm
import xarray as xr
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from threadpoolctl import threadpool_limits

from pm_em.engine.compiled import CompiledProblem, compile_model
from pm_em.engine.health import (
    EMPTY_COUNT,
    Health,
    boundary_priors,
    check_components,
    empty_components,
)
from pm_em.engine.init import SHORT_EM_ITER, VALID_INIT, InitMethod, initial_x
from pm_em.engine.optima import group_optima, polish_contenders
from pm_em.engine.run import EMRun, finish, run_em
from pm_em.engine.run import polish as polish_run
from pm_em.exceptions import (
    BoundaryPriorWarning,
    DegenerateFitError,
    DegenerateRunWarning,
    EMConvergenceWarning,
    EmptyComponentWarning,
    MultipleOptimaWarning,
    NoLatentWarning,
    warn,
)
from pm_em.results.datatree import build_datatree
from pm_em.timing import stage

__all__ = ["fit"]


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
    data: Mapping[str, object] | None = None,
    chunk_size: int | None = None,
    client: object | None = None,
    store: object | None = None,
) -> xr.DataTree:
    """Find the posterior mode of a PyMC model by Expectation-Maximization.

    The finite discrete latent variables, and the component assignments hidden in marginal
    mixtures (`pm.Mixture`, `pm.NormalMixture`, zero-inflated and hurdle likelihoods), are
    summed out by enumerating their supports (the E-step); missing values are integrated
    out; the continuous free variables are the parameters, estimated by MAP in
    `pm.find_MAP`'s convention (constrained space, no Jacobian; flat priors give the MLE).

    Parameters
    ----------
    model : pm.Model, optional
        Default: the model of the ``with`` context.
    latent : sequence of str, optional
        Latent variables to sum out: discrete free variables, the component assignment
        ``"y_component"`` of a marginal mixture ``y`` (`pm.Mixture`, `pm.NormalMixture`,
        zero-inflated and hurdle likelihoods; ``"y"`` also names it) and variables with
        missing values. Default: all of them.
    initvals : dict of {str: array_like}, optional
        Starting values (constrained space) of parameters. With ``init="auto"`` the first run
        starts there; later restarts are data-driven.
    n_init : int, default 1
        Number of EM runs from different starting points; the one with the highest log
        posterior is returned, and each run's result is in ``em_stats`` with the distinct
        optima they reached. A run that ends degenerate is replaced by one more start.
    init : {"auto", "kmeans", "random", "initial_point"} or callable, default "auto"
        How runs start. ``"auto"``: ``initvals`` if given, else k-means on the observed data
        attached to each latent element (the best of several k-means++ seeds; with
        multivariate data, the best of a few short EM runs from the best k-means solutions)
        gives starting responsibilities, and one M-step the starting parameters (this breaks
        the symmetry of exchangeable components and needs no prior draws). ``"random"``:
        Dirichlet-random responsibilities. ``"initial_point"``: the model's initial point.
        A callable ``init(model, rng) -> dict`` gives initvals.
    max_iter : int, default 1000
        Maximum EM iterations per run; reaching it warns with `EMConvergenceWarning` unless
        the polish reached the mode.
    tol : float, default 1e-8
        Stop when the change in the observed-data log posterior, relative to its size, is at
        most ``tol``. ``tol=0`` runs ``max_iter`` iterations unless the value stops changing.
    random_seed : int or Generator, optional
        Makes every run repeatable bit for bit.
    progressbar : bool, default True
        Show a progress bar.
    polish : bool, default True
        Finish the best run with L-BFGS on the observed-data log posterior and Newton steps,
        which reach the exact mode that EM approaches only linearly. The gain is
        ``em_stats.polish_gain``. With or without it the returned point is checked to be a
        local maximum (second-order conditions; identical components); from a saddle EM
        carries on from a higher point (``em_stats.saddle_log_posterior``).
    accelerate : bool, default False
        Accelerate EM with SQUAREM (Varadhan and Roland 2008): extrapolate from two EM
        iterations, and keep the extrapolation only if the log posterior did not decrease
        (else take the two plain iterations), so EM stays monotone. Each accelerated
        iteration costs two or three E-steps but often replaces many plain ones; the
        ``iteration`` dim of ``em_stats`` then counts accelerated iterations.
    compile_kwargs : dict, optional
        Passed to `pymc.pytensorf.compile`, e.g. ``{"mode": "NUMBA"}``; the extra key
        ``"lean_mode"`` sets the backend of the per-iteration E-step of a closed-form model
        alone (``"auto"``: Numba for large data). Default:
        `pm_em.compiling.default_compile_kwargs`, ``{"mode": "auto", "lean_mode": "auto"}``
        (``"auto"``: PyTensor's Python linker for small problems, C "CVM" for larger ones).
    data : dict of {str: array_like}, optional
        Rows for this fit, in place of the model's own: keys are ``pm.Data`` containers or
        observed variables whose leading axis is the latent elements (the rows); values are
        numpy arrays, ``np.memmap``, dask arrays or zarr arrays with the model's trailing
        shape and any number of rows. The model declares the shapes (it may hold a slice of
        the data); dask, zarr and memmap data are read by chunks, never whole, and never
        reach this process when ``client`` is given. NaN entries are missing values where
        the model integrates them out (an MvNormal declared with missing entries).
    chunk_size : int, optional
        Rows per chunk: the E-step, the checks, the polish and the per-element results run
        one chunk at a time, so the fit needs the data plus memory for one chunk's
        temporaries (O(chunk_size · K)). The estimate equals the in-memory one to round-off
        (about 1e-12). Default (with ``data``, ``client`` or ``store``): the chunks of a dask
        or zarr array, else chunks of about 32 MiB of data.
    client : distributed.Client, str or int, optional
        Run the chunks on a Dask cluster: a ``distributed.Client``, a scheduler address
        (``"tcp://host:8786"``; the connection times out after dask's
        ``distributed.comm.timeouts.connect``), ``"local"`` for a `distributed.LocalCluster`
        of one single-threaded worker process per core, started and closed by the fit, or
        an int for a local cluster of that many worker processes. The data stay on the
        workers; each iteration sends the parameters and gathers a few numbers per chunk,
        which are added in a fixed order, so a fit is repeatable bit for bit for a given
        chunking and gives the same estimate as in this process. Needs ``pm-em[dask]``.
    store : str or zarr store, optional
        Write the per-element groups (``latent_posterior``, ``log_likelihood``, the completed
        data) to this zarr store (an existing one is replaced) and return them reading it.
        Without it, a chunked fit of numpy data returns numpy arrays, and one of dask, zarr
        or memmap data (or on a cluster) returns dask arrays computed when accessed.

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
        For a model EM cannot handle (named in the message), bad arguments (``initvals`` of
        the wrong shape included), a mixture with at least as many components as its data
        have distinct values, or a starting point of zero density (a NaN covariate named);
        for ``data`` whose names, shapes or values do not fit the model, or a model whose
        E-step does not split into rows.
    DegenerateFitError
        When every run ended with an unbounded likelihood (a collapsed component, named).
    ChunkError
        When a chunk fails to compute (a failing read, a worker dying on it repeatedly):
        the message names the chunk and its rows; no partial result is returned.
    ClusterConnectionError
        When the scheduler at the address ``client`` gives cannot be reached.

    Warns
    -----
    NoLatentWarning
        When the model has no latent and no missing value: the result is the plain MAP.
    DegenerateRunWarning
        A run was abandoned (a component collapsed onto one value) and replaced.
    MultipleOptimaWarning
        ``n_init > 1`` and the best optimum was reached by a single run, or the runs ended
        at different optima.
    EMConvergenceWarning
        ``max_iter`` was reached and the polish did not reach the mode (or was off).
    EmptyComponentWarning
        A mixture component has (almost) no responsibility at the estimate.
    BoundaryPriorWarning
        A Dirichlet or Beta prior has a concentration below 1 (no global mode).

    Examples
    --------
    A mixture as PyMC users write it, and the same model with an explicit latent:

    >>> import numpy as np, pymc as pm, pm_em
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(-2, 1, 200), rng.normal(3, 1, 300)])
    >>> with pm.Model(coords={"component": [0, 1]}) as model:
    ...     w = pm.Dirichlet("w", a=np.ones(2), dims="component")
    ...     mu = pm.Normal("mu", 0, 10, dims="component")
    ...     sigma = pm.HalfNormal("sigma", 5, dims="component")
    ...     y = pm.NormalMixture("y", w=w, mu=mu, sigma=sigma, observed=x)
    ...     idata = pm_em.fit(random_seed=1, progressbar=False)
    >>> idata.posterior["mu"].values.round(1)
    array([[[-1.9,  3. ]]])
    >>> idata.latent_posterior["y_component"].dims
    ('y_dim_0', 'component')
    >>> with pm.Model(coords={"component": [0, 1]}) as model:
    ...     w = pm.Dirichlet("w", a=np.ones(2), dims="component")
    ...     mu = pm.Normal("mu", 0, 10, dims="component")
    ...     sigma = pm.HalfNormal("sigma", 5, dims="component")
    ...     z = pm.Categorical("z", p=w, shape=len(x))
    ...     y = pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x)
    ...     idata = pm_em.fit(random_seed=1, progressbar=False)
    >>> idata.posterior["mu"].values.round(1)
    array([[[-1.9,  3. ]]])

    The same fit by chunks of 128 rows (``client="local"`` would run them on a local Dask
    cluster) gives the same estimate:

    >>> chunked = pm_em.fit(model, chunk_size=128, random_seed=1, progressbar=False)
    >>> float(np.abs(chunked.posterior["mu"] - idata.posterior["mu"]).max()) < 1e-10
    True
    """
    _validate(n_init, max_iter, tol, init)
    if data is not None or chunk_size is not None or client is not None or store is not None:
        # Chunked or distributed EM: the same flow with the E-step per chunk of rows.
        from pm_em.chunked_fit import fit_chunked  # imports this module's helpers

        return fit_chunked(
            pm.modelcontext(model),
            data=data,
            chunk_size=chunk_size,
            client=client,
            store=store,
            latent=latent,
            initvals=initvals,
            n_init=n_init,
            init=init,
            max_iter=max_iter,
            tol=tol,
            random_seed=random_seed,
            progressbar=progressbar,
            polish=polish,
            accelerate=accelerate,
            compile_kwargs=compile_kwargs,
        )
    model = pm.modelcontext(model)
    root = np.random.default_rng(random_seed)
    run_rngs = root.spawn(n_init)
    check_rng = root.spawn(1)[0]  # Lanczos starts of the second-order check
    run_kwargs = {"max_iter": max_iter, "tol": tol, "accelerate": accelerate}
    with _progress(progressbar) as progress:
        task = progress.add_task("Reading and compiling the model", total=None, log_posterior="")
        compiled = compile_model(model, latent, compile_kwargs)
        _warn_if_no_latent(compiled.problem)
        health = Health(compiled.problem, gradient=_gradient(compiled))
        check_components(compiled.problem, health)
        progress.remove_task(task)
        _warn_about_priors(compiled)
        started = time.perf_counter()
        # One BLAS thread: the M-step's L-BFGS works on a few parameters, where OpenBLAS's
        # thread start-up and spinning cost ~20x the arithmetic (measured on 2 cores).
        with threadpool_limits(1, user_api="blas"):
            with stage("EM runs"):
                runs = _restarts(
                    compiled,
                    health,
                    rngs=run_rngs,
                    init=init,
                    initvals=initvals,
                    progress=progress,
                    run_kwargs=run_kwargs,
                )
            if polish:
                with stage("polish"):
                    polish_contenders(runs, lambda r: polish_run(compiled, r, health))
            with stage("check the estimate"):
                best = _finish_best(compiled, runs, health, check_rng, polish, run_kwargs)
            optima = group_optima(runs)
    _warn_about(compiled, best, optima, max_iter=max_iter, tol=tol, polished=polish)
    with stage("result"):
        return build_datatree(
            compiled.problem,
            best,
            runs,
            best_index=runs.index(best),
            optima=[(o.log_posterior, o.runs) for o in optima],
            point_values=compiled.point_values(best.x),
            missing_values=compiled.impute(best.x, best.estep.resp),
            elapsed=time.perf_counter() - started,
        )


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
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("log posterior {task.fields[log_posterior]}"),
        TimeElapsedColumn(),
        disable=not progressbar,
    )


def _gradient(compiled: CompiledProblem) -> Callable:
    """``gradient(x, e)`` of the observed-data log posterior (`value_and_grad`)."""

    def gradient(x, e):
        grad = compiled.value_and_grad(x)[1]
        return grad if grad is not None else np.full_like(x, np.inf)

    return gradient


def _short_em(compiled: CompiledProblem, health: Health) -> Callable:
    """``short_em(x) -> (x, log posterior)`` after `SHORT_EM_ITER` plain EM iterations."""
    em = compiled.em_map

    def short_em(x):
        e = em.estep(x)
        for _ in range(SHORT_EM_ITER):
            if not np.isfinite(e.log_posterior) or health.spike(e) is not None:
                return x, -np.inf
            x = em.mstep(x, e)
            e = em.estep(x)
        ok = np.isfinite(e.log_posterior) and health.spike(e) is None
        return x, e.log_posterior if ok else -np.inf

    return short_em


def _restarts(
    compiled: CompiledProblem, health: Health, *, rngs, init, initvals, progress, run_kwargs
) -> list[EMRun]:
    """Run EM once per generator in ``rngs``, each from its own start (`run_restarts`)."""
    short_em = _short_em(compiled, health)

    def one_run(i, run_rng, task):
        x0 = initial_x(
            compiled.problem,
            init=init,
            initvals=initvals,
            run=i,
            rng=run_rng,
            estep=compiled.estep,
            mstep=compiled.mstep,
            short_em=short_em,
        )
        return run_em(
            compiled, x0, health=health, run_index=i, progress=progress, task=task, **run_kwargs
        )

    return run_restarts(rngs, progress, run_kwargs["max_iter"], one_run)


def run_restarts(rngs, progress: Progress, max_iter: int, one_run: Callable) -> list[EMRun]:
    """Run ``one_run(i, rng, task)`` once per generator in ``rngs``; replace degenerate runs.

    A run that ends degenerate is abandoned with a `DegenerateRunWarning` and replaced by one
    more restart (a later run of the same ``init``, from a generator spawned from its own),
    at most one replacement per planned run. In memory and chunked fits alike.
    """
    n_init = len(rngs)
    queue = list(rngs)
    runs: list[EMRun] = []
    for i, run_rng in enumerate(queue):
        name = f"{i + 1} of {n_init}" if i < n_init else f"{i + 1} (a replacement)"
        task = progress.add_task(f"EM run {name}", total=max_iter, log_posterior="…")
        run = one_run(i, run_rng, task)
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


_SCALE_PRIOR_HINT = (
    "Under flat or HalfNormal priors on the scales the likelihood is unbounded where a "
    "component sits on one value (its scale can shrink to zero); a prior that vanishes at "
    "zero scale, such as `pm.InverseGamma`, removes the singularity, and data with a point "
    "mass (many tied values) need a component of their own (a hurdle or zero-inflated model)."
)


def _best(runs: list[EMRun]) -> EMRun:
    """Return the run with the highest log posterior among those that did not collapse."""
    good = [r for r in runs if r.status != "degenerate"]
    if not good:
        raise DegenerateFitError(
            f"All {len(runs)} EM run(s) ended in a degenerate point; in the first, "
            f"{runs[0].message}. {_SCALE_PRIOR_HINT}"
        )
    return max(good, key=lambda r: r.final_log_posterior)


def _finish_best(compiled, runs, health, rng, polish, run_kwargs) -> EMRun:
    """Finish the best run at a local maximum (`finish`); if it then collapses, the next one."""
    while True:
        best = _best(runs)
        finish(
            compiled,
            best,
            health=health,
            rng=rng,
            polish_run=polish,
            max_iter=run_kwargs["max_iter"],
            tol=run_kwargs["tol"],
            accelerate=run_kwargs["accelerate"],
        )
        if best.status != "degenerate":
            return best
        warn(
            f"EM run {runs.index(best) + 1} was abandoned after it resumed from a saddle "
            f"point: {best.message}. {_SCALE_PRIOR_HINT}",
            DegenerateRunWarning,
        )


def _warn_if_no_latent(problem) -> None:
    """Say so when EM has nothing to do: the result is then the plain MAP."""
    if problem.latents or problem.missing:
        return
    model = problem.model
    warn(
        "EM had nothing to do: pm_em found no latent in this model (no discrete free "
        "variable, no marginal mixture such as pm.Mixture, pm.NormalMixture or a "
        "zero-inflated or hurdle likelihood, and no missing value to integrate out). It "
        f"looked at the free variables {[rv.name for rv in model.free_RVs]} and the observed "
        f"variables {[rv.name for rv in model.observed_RVs]}. The result is the MAP "
        "(pm.find_MAP's answer), not an EM fit.",
        NoLatentWarning,
    )


def _warn_about_priors(compiled: CompiledProblem) -> None:
    found = boundary_priors(compiled.problem)
    if found:
        warn(
            f"The prior of {', '.join(found)} has a concentration below 1: its density is "
            "unbounded as a probability goes to 0, so the posterior has no global mode (it "
            "is infinite on the boundary) and EM returns at best a local mode inside, often "
            "with a spurious near-empty component. For a MAP estimate use concentrations "
            ">= 1 (1: the maximum-likelihood estimate).",
            BoundaryPriorWarning,
        )


def _warn_about(compiled, best: EMRun, optima, *, max_iter, tol, polished) -> None:
    """Warn about a run stopped short of the mode, disagreeing restarts, empty components."""
    if not best.converged and not (polished and best.mode_reached):
        warn(
            f"EM reached max_iter={max_iter} before the relative change of the log posterior "
            f"fell below tol={tol}. Increase `max_iter` or `tol`"
            + (
                " (the final polish did not reach the mode either)."
                if polished
                else " (or keep `polish=True`, which finishes at the mode)."
            ),
            EMConvergenceWarning,
        )
    elif _far_from_mode(best.mode):
        # EM "converged" (its steps became small) where the log posterior is still steep:
        # a slow or stalled M-step, which no other check sees.
        warn(
            "EM stopped where the log posterior is not at a mode: a Newton step would move "
            f"the estimate by {best.mode.newton_se:.3g} standard errors (largest gradient "
            f"entry {best.mode.gradient_norm:.3g}). Lower `tol`, keep `polish=True`, or check "
            "that the M-step can move every parameter (`em_stats.newton_step_se`).",
            EMConvergenceWarning,
        )
    _warn_about_optima(optima)
    for name, ks in empty_components(compiled.problem, best.estep).items():
        warn(
            f"Latent '{name}' has empty component(s) {ks} at the estimate (expected count "
            f"below {EMPTY_COUNT}). Their parameters are not informed by the data; consider "
            "fewer components.",
            EmptyComponentWarning,
        )


# A Newton step longer than this many standard errors means the estimate is not the mode.
FAR_FROM_MODE_SE = 1.0


def _far_from_mode(check) -> bool:
    """Tell whether the full-Hessian check of the estimate puts the mode far from it."""
    return (
        check is not None
        and check.method == "hessian"
        and not check.is_saddle
        and bool(check.newton_se > FAR_FROM_MODE_SE)
    )


def _warn_about_optima(optima) -> None:
    n_good = sum(len(o.runs) for o in optima)
    if n_good < 2:
        return
    listed = ", ".join(f"{o.log_posterior:.10g} ({len(o.runs)} run(s))" for o in optima[:5])
    if len(optima[0].runs) == 1:
        warn(
            f"The best log posterior was reached by 1 of the {n_good} EM runs (optima: "
            f"{listed}): other starts may reach a higher one. Increase `n_init`, and compare "
            "the optima in `em_stats.optimum_log_posterior`.",
            MultipleOptimaWarning,
        )
    elif len(optima) > 1:
        warn(
            f"The EM runs ended at {len(optima)} different optima ({listed}); the estimate "
            f"is the best, reached by {len(optima[0].runs)} of {n_good} runs.",
            MultipleOptimaWarning,
        )
