"""Issue 10: never silently wrong. Each numbered case of the issue, reproduced.

Every case ends in the MLE (checked against an independent oracle from tests/oracles.py), a
clear error or a documented warning, each asserted on its message. ``_gmm(x, K)`` is the
issue's model: a 1-D mixture with ``Dirichlet(ones)`` weights, ``pm.Flat`` means and
``pm.HalfFlat`` scales, dims ``k`` and ``obs``.
"""

import functools
import gc
import io
import subprocess
import sys
import textwrap
import warnings
import weakref

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from numpy.testing import assert_allclose

import pm_em
import pm_em.engine.curvature as curvature
from pm_em.engine.compiled import compile_model
from pm_em.engine.estep import EStepResult
from pm_em.engine.health import Health
from pm_em.engine.init import initial_x
from pm_em.engine.run import EMRun, polish
from pm_em.results.laplace import compile_log_posterior_hessian

try:
    from tests import oracles as O
except ImportError:  # pragma: no cover
    import oracles as O


@functools.cache
def _gmm_model(n: int, K: int, sigma) -> pm.Model:
    # The data are a `pm.Data`, so every data set of one size reuses one compiled model.
    with pm.Model(coords={"k": range(K), "obs": range(n)}) as model:
        x = pm.Data("x", np.zeros(n), dims="obs")
        w = pm.Dirichlet("w", a=np.ones(K), dims="k")
        mu = pm.Flat("mu", dims="k")
        if sigma == "flat":
            s = pm.HalfFlat("sigma", dims="k")
        else:
            s = pm.InverseGamma("sigma", *sigma, dims="k")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[z], sigma=s[z], observed=x, dims="obs")
    return model


def _gmm(x, K, *, sigma="flat"):
    x = np.asarray(x, dtype=float)
    model = _gmm_model(x.size, K, sigma)
    pm.set_data({"x": x}, model=model)
    return model


def _fit(model, **kwargs):
    return pm_em.fit(model, progressbar=False, **kwargs)


def _ll(idata) -> float:
    return float(idata.em_stats["final_log_likelihood"])


def _mle(x, K, seed=0):
    """The oracle MLE of the 1-D flat mixture: scikit-learn's best of 10 starts, polished."""
    oracle = O.LocationScaleMixture(x, K=K)
    starts = [O.sklearn_gmm_1d(x, K, n_init=10, reg_covar=1e-9, random_state=seed, tol=1e-8)]
    return O.maximize_mixture(oracle, starts)


# Relative tolerance of "the same optimum" on a log likelihood of ~1e3: the oracle's mode
# has |grad| < 1e-8 and pm_em polishes to a Newton step below 1e-2 standard errors (a
# log-likelihood error below 1e-4 nats), while distinct optima here differ by > 1 nat.
SAME_OPTIMUM_RTOL = 1e-7


# --------------------------------------------------------------------- 1. collapses


def _point_mass_data():
    rng = np.random.default_rng(11)
    return np.r_[np.zeros(180), rng.normal(5, 1, 220)]


# Every abandoned run warns: planned runs ("1 of 1") and their replacements.
ABANDONED = r"EM run \d( of \d| \(a replacement\)) was abandoned: component \d of latent 'z'"


def test_point_mass_collapse_is_refused():
    """Issue case 1: 180 exact zeros; the zero component's sd went to 1.9e-10 silently."""
    model = _gmm(_point_mass_data(), 2)
    abandoned = r"EM run \d( of 2| \(a replacement\)) was abandoned: component \d of latent 'z' "
    with (
        pytest.warns(pm_em.DegenerateRunWarning, match=abandoned),
        pytest.raises(
            pm_em.DegenerateFitError,
            match=r"All 4 EM run\(s\) ended in a degenerate point; in the first, component \d "
            r"of latent 'z' collapsed onto 1 distinct value\(s\) of \['y'\] \(180 expected "
            r"elements, the most at 0\).*`pm.InverseGamma`",
        ),
    ):
        _fit(model, n_init=2, random_seed=1)


def test_point_mass_with_a_scale_prior_that_vanishes_at_zero_is_a_mode():
    """The suggested fix works: InverseGamma(2, 0.1) scales make the MAP exist.

    The zero component's scale then solves the closed-form InverseGamma M-step on tied
    values, s = β / (N_k + α + 1), with N_k = 180; the fit is a stationary point, not a
    collapse, and the detector must not call it degenerate.
    """
    idata = _fit(_gmm(_point_mass_data(), 2, sigma=(2.0, 0.1)), random_seed=1)
    sigma = np.sort(idata.posterior["sigma"].values.ravel())
    counts = np.sort(idata.em_stats["z_count"].values)
    assert_allclose(counts[0], 180.0, rtol=1e-6)  # the other points are 5 sd away
    assert_allclose(sigma[0], 0.1 / (180 + 2 + 1), rtol=1e-5)
    assert bool(idata.em_stats["mode_reached"])


def test_all_identical_data_refused():
    with pytest.raises(
        ValueError,
        match=r"Latent 'z' has 2 components, but the data it explains \(\['y'\]\) take only 1 "
        r"distinct value\(s\)\..*cannot be fitted to a single value",
    ):
        _fit(_gmm(np.full(200, 3.0), 2))


@pytest.mark.parametrize("tied", [0.45, 0.6, 0.75, 0.9])
def test_tied_values_are_degenerate(tied):
    """45-90 % of the values tied: every run collapses onto the tie."""
    rng = np.random.default_rng(3)
    n_tied = int(tied * 400)
    x = np.r_[np.full(n_tied, 2.0), rng.normal(0, 1, 400 - n_tied)]
    with (
        pytest.warns(pm_em.DegenerateRunWarning, match=ABANDONED),
        pytest.raises(
            pm_em.DegenerateFitError,
            match=rf"collapsed onto 1 distinct value\(s\) of \['y'\] \({n_tied} expected "
            r"elements, the most at 2\)",
        ),
    ):
        _fit(_gmm(x, 2), random_seed=0)


def test_three_components_on_four_points():
    """K = 3 with n = 4: a component sat on one point with sd 1e-4, silently."""
    with (
        pytest.warns(pm_em.DegenerateRunWarning, match=ABANDONED),
        pytest.raises(pm_em.DegenerateFitError, match=r"collapsed onto 1 distinct value\(s\)"),
    ):
        _fit(_gmm([0.1, 1.3, -0.7, 2.2], 3))


def test_more_components_than_distinct_values_refused():
    """K > n (issue case 2): five identical components were returned as a fit."""
    with pytest.raises(
        ValueError,
        match=r"has 5 components, but the data it explains \(\['y'\]\) take only 4 distinct "
        r"value\(s\)\. .*use at most 3 components",
    ):
        _fit(_gmm([0.1, 1.3, -0.7, 2.2], 5))


def test_discrete_likelihood_with_too_many_components_refused():
    y = np.tile([0, 1], 50)
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(3))
        lam = pm.Gamma("lam", 2.0, 1.0, shape=3)
        z = pm.Categorical("z", p=w, shape=y.size)
        pm.Poisson("y", mu=lam[z], observed=y)
    with pytest.raises(ValueError, match=r"cannot be told apart: use at most 2 components"):
        _fit(model)


def test_counts_on_one_value_are_not_degenerate():
    """A Poisson component on the zeros alone (zero-inflated data) is a bounded fit.

    The oracle is scipy's maximization of the same Poisson mixture (flat rates).
    """
    rng = np.random.default_rng(5)
    y = np.r_[np.zeros(150, dtype=int), rng.poisson(6.0, 250)]
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        lam = pm.HalfFlat("lam", shape=2)
        z = pm.Categorical("z", p=w, shape=y.size)
        pm.Poisson("y", mu=lam[z], observed=y)
    idata = _fit(model, random_seed=0)
    mode = O.maximize_mixture(
        O.PoissonMixture(y), [{"w": np.array([0.4, 0.6]), "lam": np.array([0.1, 6.0])}]
    )
    assert_allclose(_ll(idata), mode.log_likelihood, rtol=SAME_OPTIMUM_RTOL)


def test_tight_cluster_of_distinct_values_is_not_degenerate():
    """A component 1e-4 as wide as the data's spread, on 200 distinct values, is a mode."""
    rng = np.random.default_rng(6)
    x = np.r_[rng.normal(0.0, 1e-4, 200), rng.normal(10.0, 1.0, 200)]
    idata = _fit(_gmm(x, 2), random_seed=0)
    assert_allclose(np.sort(idata.posterior["sigma"].values.ravel())[0], 1e-4, rtol=0.15)
    assert_allclose(_ll(idata), _mle(x, 2).log_likelihood, rtol=SAME_OPTIMUM_RTOL)


# --------------------------------------------------------------------- 2. saddles


def _three_clusters():
    rng = np.random.default_rng(123)
    return np.concatenate([rng.normal(-4, 1, 200), rng.normal(0, 1, 200), rng.normal(4, 1, 200)])


def test_saddle_from_a_random_start_is_left():
    """init="random", seed 75: EM stopped after 4 iterations at mu = (0.44, -0.30, -0.10).

    That point (log posterior -1579.24 against the MLE's -1449.33) has a vanishing
    gradient; the second-order check finds the upward direction and EM carries on.
    """
    x = _three_clusters()
    idata = _fit(_gmm(x, 3), init="random", random_seed=75)
    saddles = idata.em_stats["saddle_log_posterior"].values
    assert saddles.size >= 1 and saddles[0] < -1570
    assert_allclose(_ll(idata), _mle(x, 3).log_likelihood, rtol=SAME_OPTIMUM_RTOL)
    assert float(idata.em_stats["max_curvature"]) < 0
    assert str(idata.em_stats["mode_check"].values) == "hessian"


@pytest.mark.parametrize("seed", [19, 26, 47, 49])
def test_random_starts_of_the_issue_reach_the_mle(seed):
    """The seeds the issue reported at a saddle (on its data); on these data, the MLE."""
    x = _three_clusters()
    idata = _fit(_gmm(x, 3), init="random", random_seed=seed)
    assert_allclose(_ll(idata), _mle(x, 3).log_likelihood, rtol=SAME_OPTIMUM_RTOL)
    assert bool(idata.em_stats["mode_reached"])


def test_symmetric_start_saddle_is_left():
    """TECH-NOTES §0.7: identical components stay identical under EM (a saddle)."""
    x = _three_clusters()
    start = {"w": np.full(3, 1 / 3), "mu": np.zeros(3), "sigma": np.full(3, 2.0)}
    idata = _fit(_gmm(x, 3), init="initial_point", initvals=start)
    assert idata.em_stats["saddle_log_posterior"].size >= 1
    assert_allclose(_ll(idata), _mle(x, 3).log_likelihood, rtol=SAME_OPTIMUM_RTOL)


@pytest.mark.parametrize("where", ["saddle", "mode"])
def test_curvature_check_matches_the_exact_hessian(where):
    """The finite-difference Hessian's largest eigenvalue against pytensor's exact one."""
    x = _three_clusters()
    model = _gmm(x, 3)
    compiled = compile_model(model)
    problem = compiled.problem
    if where == "saddle":  # all three components the same: the one-component fit
        point = {"w": np.full(3, 1 / 3), "mu": np.full(3, x.mean()), "sigma": np.full(3, x.std())}
    else:
        mode = _mle(x, 3).params
        point = {"w": mode["w"], "mu": mode["mu"], "sigma": mode["sigma"]}
    from pm_em.results.marginal import compile_to_x

    at = compile_to_x(problem)(*(point[p.name] for p in problem.params))
    check = curvature.check_mode(compiled, at, np.random.default_rng(0))
    _, _, hess = compile_log_posterior_hessian(problem, mode="FAST_COMPILE")(at)
    exact = np.linalg.eigvalsh(hess)
    # Central differences on exact gradients with steps of 1e-3 standard errors: relative
    # errors ~1e-6 of the largest eigenvalue (~600 here).
    assert_allclose(check.max_curvature, exact.max(), rtol=0, atol=1e-5 * np.abs(exact).max())
    assert check.is_saddle == (where == "saddle")


def test_lanczos_check_finds_the_saddle(monkeypatch):
    """Above FULL_HESSIAN_MAX parameters the check runs Lanczos on Hessian-vector products."""
    monkeypatch.setattr(curvature, "FULL_HESSIAN_MAX", 0)
    x = _three_clusters()
    idata = _fit(_gmm(x, 3), init="random", random_seed=75)
    assert str(idata.em_stats["mode_check"].values) == "lanczos"
    assert idata.em_stats["saddle_log_posterior"].size >= 1
    assert_allclose(_ll(idata), _mle(x, 3).log_likelihood, rtol=SAME_OPTIMUM_RTOL)


# --------------------------------------------------------------------- 3. initvals


def test_initvals_of_the_wrong_length_refused_with_dims():
    """``mu`` has dims ``k`` (no static shape): 3 values were shifted into ``sigma``."""
    model = _gmm(_three_clusters(), 2)
    with pytest.raises(
        ValueError, match=r"`initvals\['mu'\]` has shape \(3,\), but 'mu' has shape \(2,\)"
    ):
        _fit(model, initvals={"mu": [1.0, 2.0, 3.0]})


# --------------------------------------------------------------------- 4. bounded polish


def test_polish_keeps_no_e_steps():
    """The polish used to keep every E-step it evaluated (a dict keyed on x)."""
    rng = np.random.default_rng(4)
    x, _ = O.normal_mixture_data(rng, 2000, [0.5, 0.5], [-1.0, 1.5], [1.0, 0.8])
    compiled = compile_model(_gmm(x, 2))
    alive = []
    original = compiled.estep

    def tracked(x_):
        e = original(x_)
        alive.append(weakref.ref(e))
        return e

    # One M-step from k-means responsibilities: a start the polish improves on.
    start = initial_x(
        compiled.problem,
        init="kmeans",
        initvals=None,
        run=0,
        rng=np.random.default_rng(0),
        estep=compiled.estep,
        mstep=compiled.mstep,
    )
    run = EMRun(x=start, estep=compiled.estep(start))
    object.__setattr__(compiled, "estep", tracked)
    try:
        polish(compiled, run, Health(compiled.problem))
    finally:
        object.__setattr__(compiled, "estep", original)
    gc.collect()
    # The run's own E-step may stay; nothing else the polish evaluated.
    assert sum(ref() is not None and ref() is not run.estep for ref in alive) == 0
    assert run.polish_gain > 0


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys, tracemalloc
    import numpy as np, pymc as pm, pm_em
    rng = np.random.default_rng(0)
    n, K = 200_000, 4
    z = rng.choice(K, n)
    x = rng.normal(np.array([-6.0, -2.0, 2.0, 6.0])[z], 1.0)
    with pm.Model() as m:
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Normal("mu", 0, 10, shape=K)
        s = pm.HalfNormal("s", 5, shape=K)
        zz = pm.Categorical("z", p=w, shape=n)
        pm.Normal("y", mu=mu[zz], sigma=s[zz], observed=x)
    polish = sys.argv[1] == "1"
    pm_em.fit(m, progressbar=False, random_seed=0, polish=polish)  # compile
    tracemalloc.start()
    pm_em.fit(m, progressbar=False, random_seed=1, polish=polish)
    print(tracemalloc.get_traced_memory()[1])
    """
)


@pytest.mark.slow
def test_polish_memory_is_bounded_at_n_200000():
    """Peak traced memory of a warm fit, n = 200,000, K = 4, with and without the polish.

    Before: 493 MB with the polish against 40 MB without (tracemalloc; the issue measured
    1102 vs 335 MB of resident memory). The polish may add a few E-step results (each
    (n, K) float64 array is 6.4 MB), not one per evaluation.
    """
    peaks = {}
    for flag in ("0", "1"):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, flag],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        peaks[flag] = int(out.stdout.split()[-1])
    assert peaks["1"] <= peaks["0"] + 8 * 6.4e6, peaks


# --------------------------------------------------------------------- 5. local optima


def _lkj_model(Y, K=3):
    coords = {"component": range(K), "coord": ["a", "b"], "obs": np.arange(Y.shape[0])}
    with pm.Model(coords=coords) as model:
        w = pm.Dirichlet("w", a=np.ones(K), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims=("component", "coord"))
        chols = [
            pm.LKJCholeskyCov(
                f"chol{k}", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(10.0), compute_corr=True
            )[0]
            for k in range(K)
        ]
        z = pm.Categorical("z", p=w, dims="obs")
        pm.MvNormal("y", mu=mu[z], chol=pt.stack(chols)[z], observed=Y, dims=("obs", "coord"))
    return model


@pytest.mark.slow
def test_lkj_mixture_default_start_reaches_the_best_optimum():
    """Issue case 5, reproduced on these data with fit seed 3.

    Before: a single k-means++ seed put two centres in one cluster; EM ran 450 iterations
    to a log posterior of -2577.66 (w = 0.685, 0.262, 0.053) against -2368.53 from the other
    nine seeds. The default start now takes the best of several k-means seeds. The oracle
    is scipy's maximization of the same density (LKJ priors written out, tests/oracles.py).
    """
    rng = np.random.default_rng(0)
    means = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    z = rng.choice(3, 600)
    Y = means[z] + rng.normal(size=(600, 2))
    idata = _fit(_lkj_model(Y), random_seed=3)
    oracle = O.MvNormalLKJMixture(Y, K=3, loc_prior=O.NormalPrior(0.0, 10.0), sd_scale=10.0)
    truth = {"w": np.full(3, 1 / 3), "mu": means, "chol": np.tile([1.0, 0.0, 1.0], (3, 1))}
    mode = O.maximize_mixture(oracle, [truth])
    lp = float(idata.em_stats["final_log_posterior"])
    assert_allclose(lp, mode.log_posterior, rtol=SAME_OPTIMUM_RTOL)


def test_restarts_list_their_optima():
    """Seeds that reach one optimum agree; the table lists it with its count."""
    x = _three_clusters()
    idata = _fit(_gmm(x, 3), n_init=3, random_seed=0)
    stats = idata.em_stats
    assert stats["optimum_log_posterior"].size == 1
    assert int(stats["optimum_n_runs"][0]) == 3
    assert list(stats["restart_optimum"].values) == [0, 0, 0]


def _starts(*kinds):
    """An ``init`` callable: run i starts near the MLE ("good") or at identical components.

    EM keeps identical components identical, so a "symmetric" run ends at the symmetric
    saddle (only the returned run is checked and moved off saddles).
    """
    good = {"w": np.full(3, 1 / 3), "mu": np.array([-4.0, 0.0, 4.0]), "sigma": np.ones(3)}
    symmetric = {"w": np.full(3, 1 / 3), "mu": np.zeros(3), "sigma": np.full(3, 3.0)}
    queue = list(kinds)

    def init(model, rng):
        return good if queue.pop(0) == "good" else symmetric

    return init


def test_best_reached_by_one_run_warns():
    x = _three_clusters()
    with pytest.warns(
        pm_em.MultipleOptimaWarning,
        match=r"The best log posterior was reached by 1 of the 2 EM runs \(optima: "
        r"-1449\.\d+ \(1 run\(s\)\), -1579\.\d+ \(1 run\(s\)\)\)",
    ):
        idata = _fit(_gmm(x, 3), n_init=2, init=_starts("good", "symmetric"))
    assert list(idata.em_stats["optimum_n_runs"].values) == [1, 1]
    assert list(idata.em_stats["restart_optimum"].values) == [0, 1]


def test_runs_at_different_optima_warn():
    x = _three_clusters()
    with pytest.warns(
        pm_em.MultipleOptimaWarning,
        match=r"The EM runs ended at 2 different optima .*; the estimate is the best, reached "
        r"by 2 of 3 runs",
    ):
        idata = _fit(_gmm(x, 3), n_init=3, init=_starts("symmetric", "good", "good"))
    assert list(idata.em_stats["optimum_n_runs"].values) == [2, 1]
    assert int(idata.em_stats["best_restart"]) in (1, 2)


def test_chunked_fit_lists_its_optima_and_warns():
    """A chunked fit reports restarts as an in-memory one does (its own restart loop)."""
    x = _three_clusters()
    with pytest.warns(pm_em.MultipleOptimaWarning, match=r"reached by 1 of the 2 EM runs"):
        idata = _fit(_gmm(x, 3), n_init=2, init=_starts("good", "symmetric"), chunk_size=256)
    assert list(idata.em_stats["optimum_n_runs"].values) == [1, 1]
    assert list(idata.em_stats["restart_optimum"].values) == [0, 1]


# --------------------------------------------------------------------- 6. pm.set_data


def _data_model(x):
    with pm.Model(coords={"k": range(2)}) as model:
        xd = pm.Data("xd", x)
        w = pm.Dirichlet("w", a=np.ones(2), dims="k")
        mu = pm.Normal("mu", 0, 10, dims="k")
        sigma = pm.HalfNormal("sigma", 5, dims="k")
        z = pm.Categorical("z", p=w, shape=xd.shape[0])
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=xd, shape=xd.shape[0])
    return model


@pytest.mark.parametrize("n_new", [1500, 1000])
def test_set_data_refits_like_a_fresh_model(n_new):
    """A new length crashed the second fit (a cache keyed on names); new values too stale."""
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-2, 1, 500), rng.normal(2, 1, 500)]
    x_new = np.r_[rng.normal(-5, 1, n_new // 2), rng.normal(5, 1, n_new - n_new // 2)]
    model = _data_model(x)
    _fit(model, random_seed=1)
    pm.set_data({"xd": x_new}, model=model)
    again = _fit(model, random_seed=1)
    fresh = _fit(_data_model(x_new), random_seed=1)
    for name in ("w", "mu", "sigma"):
        assert_allclose(again.posterior[name].values, fresh.posterior[name].values, rtol=1e-10)
    assert again.observed_data["y"].size == n_new


# --------------------------------------------------------------------- 7. smaller items


def test_progress_bar_covers_the_build_and_counts_iterations(monkeypatch):
    import rich.console
    import rich.progress

    import pm_em.fitting as fitting

    made = []
    real = fitting._progress

    def recording(progressbar):
        progress = real(True)
        progress.live.console = rich.console.Console(file=io.StringIO())
        made.append(progress)
        added = []
        original_add = progress.add_task

        def add_task(description, **kwargs):
            added.append(description)
            return original_add(description, **kwargs)

        progress.add_task = add_task
        progress.added = added
        return progress

    monkeypatch.setattr(fitting, "_progress", recording)
    idata = _fit(_gmm(_three_clusters(), 3), random_seed=0)
    (progress,) = made
    assert progress.added[0] == "Reading and compiling the model"
    (task,) = [t for t in progress.tasks if t.description.startswith("EM run")]
    n_iter = int(idata.em_stats["n_iter"])
    assert task.total == task.completed == n_iter
    assert isinstance(progress, rich.progress.Progress)


def test_nan_in_a_covariate_is_named():
    rng = np.random.default_rng(0)
    n = 200
    xc = rng.normal(size=n)
    y = np.where(rng.random(n) < 0.5, 1 + 2 * xc, -1 - xc) + 0.3 * rng.normal(size=n)
    xc[7] = np.nan
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        a = pm.Normal("a", 0, 10, shape=2)
        b = pm.Normal("b", 0, 10, shape=2)
        s = pm.HalfNormal("s", 5, shape=2)
        z = pm.Categorical("z", p=w, shape=n)
        pm.Normal("y", mu=a[z] + b[z] * xc, sigma=s[z], observed=y)
    with pytest.raises(
        ValueError,
        match=r"the density of latent 'z' with \['y'\] is NaN at element\(s\) \[7\]\. The "
        r"model's graph holds a constant array of shape \(200,\) \(a covariate passed as an "
        r"array\) with NaN at \[7\]",
    ):
        _fit(model)


def test_string_data_never_reach_a_fit():
    """PyMC refuses string data when the model is declared, before pm_em sees it."""
    with pytest.raises(TypeError, match="isnan"):
        with pm.Model():
            pm.Normal("y", 0.0, 1.0, observed=np.array(["1.0", "2", "x"]))


def test_dirichlet_below_one_warns():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(-2, 1, 150), rng.normal(2, 1, 150)]
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.full(3, 0.5))
        mu = pm.Normal("mu", 0, 10, shape=3)
        s = pm.HalfNormal("s", 5, shape=3)
        z = pm.Categorical("z", p=w, shape=x.size)
        pm.Normal("y", mu=mu[z], sigma=s[z], observed=x)
    with pytest.warns(
        pm_em.BoundaryPriorWarning,
        match=r"The prior of 'w' \(Dirichlet\(\[0\.5 0\.5 0\.5\]\)\) has a concentration below "
        r"1: its density is unbounded",
    ):
        _fit(model, random_seed=0)
    with pytest.warns(pm_em.BoundaryPriorWarning, match=r"The prior of 'w'"):
        _fit(model, random_seed=0, chunk_size=100)


def test_no_convergence_warning_when_the_polish_reached_the_mode():
    x = _three_clusters()
    model = _gmm(x, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = _fit(model, max_iter=5, random_seed=0)
    assert not bool(idata.em_stats["converged"]) and bool(idata.em_stats["mode_reached"])
    assert float(idata.em_stats["newton_step_se"]) < 1e-2
    assert_allclose(_ll(idata), _mle(x, 3).log_likelihood, rtol=SAME_OPTIMUM_RTOL)
    with pytest.warns(pm_em.EMConvergenceWarning, match=r"max_iter=5 .*keep `polish=True`"):
        _fit(model, max_iter=5, random_seed=0, polish=False)


def test_information_criteria_outside_the_model_context():
    """The README calls it after the ``with`` block."""
    with _gmm(_three_clusters(), 3) as model:
        idata = _fit(model, random_seed=0)
        inside = pm_em.information_criteria(idata)
    outside = pm_em.information_criteria(idata)
    assert int(outside["n_params"]) == int(inside["n_params"]) == 8
    assert_allclose(outside.values, inside.values, rtol=1e-12)
    del idata["em_stats"]
    with pytest.raises(ValueError, match=r"needs `model=` or the `em_stats.n_params`"):
        pm_em.information_criteria(idata)


def test_e_step_result_contract_is_what_health_reads():
    """The detector reads only the Latent/EStepResult contract (any reader's latents)."""
    x = _point_mass_data()
    compiled = compile_model(_gmm(x, 2))
    health = Health(compiled.problem)
    # A hand-made E-step: component 0 holds the zeros with sd 1e-9, component 1 the rest.
    log_f0 = np.where(x == 0, -np.log(1e-9) - 0.5 * np.log(2 * np.pi), -np.inf)
    log_f1 = -0.5 * ((x - 5) / 1.0) ** 2 - 0.5 * np.log(2 * np.pi)
    log_joint = np.column_stack([np.log(0.45) + log_f0, np.log(0.55) + log_f1])
    lse = np.logaddexp(log_joint[:, 0], log_joint[:, 1])
    e = EStepResult(
        log_resp=(log_joint - lse[:, None],),
        log_marginal=(lse,),
        log_lik_rest=(),
        log_prior=0.0,
        log_posterior=float(lse.sum()),
    )
    found = health.degenerate(e)
    assert found is not None and found.component == 0 and found.latent == "z"


# ------------------------------------------- a stalled M-step: converged, yet not a mode


def _mvnormal_in_a_data_container(n=300, seed=0):
    """A 2-D MvNormal mixture whose data are a ``pm.Data`` with dims (no static shape)."""
    # The seed sweep's overlapping clusters (tests/test_reliability.py), where a numeric
    # M-step of the covariances stalls at seed 0 (separated clusters do not show it).
    covs = [[[1.0, 0.5], [0.5, 1.0]], [[1.0, -0.3], [-0.3, 0.6]], [[0.5, 0.0], [0.0, 1.5]]]
    means = [[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]]
    y = O.mvnormal_mixture_data(np.random.default_rng(seed), n, [0.3, 0.4, 0.3], means, covs)[0]
    with pm.Model(coords={"obs": range(len(y)), "coord": ["a", "b"], "k": range(3)}) as model:
        data = pm.Data("y_data", y, dims=("obs", "coord"))
        w = pm.Dirichlet("w", a=np.ones(3), dims="k")
        z = pm.Categorical("z", p=w, dims="obs")
        mu = pm.Flat("mu", dims=("k", "coord"))
        cov = pm.Flat("cov", shape=(3, 2, 2), initval=np.repeat(np.eye(2)[None], 3, 0))
        pm.MvNormal("y", mu=mu[z], cov=cov[z], observed=data, dims=("obs", "coord"))
    return model


def test_mvnormal_rows_of_a_data_container_are_in_closed_form():
    """The row length comes from the means when the container's static shape is unknown."""
    compiled = compile_model(_mvnormal_in_a_data_container(), None, None)
    assert compiled.mstep.plan is not None and compiled.mstep.plan.complete


def test_a_stalled_m_step_is_not_reported_as_a_mode(monkeypatch):
    """Without the closed form the numeric M-step stalls; the mode check must say so."""
    import pm_em.closed_form.mvnormal as mvnormal

    monkeypatch.setattr(mvnormal, "_row_length", lambda *args: None)
    with pytest.warns(pm_em.EMConvergenceWarning, match=r"not at a mode: a Newton step"):
        idata = _fit(_mvnormal_in_a_data_container(), random_seed=0)
    assert float(idata.em_stats["newton_step_se"]) > 1.0
