"""The EM loop and `fit`'s contract: layout, seeds, warnings, restarts, bad input.

Numbers are checked against independent oracles: `pm.find_MAP` for a model without latents,
closed-form expectations for the result layout. The mixture oracles (scipy, scikit-learn)
live in test_fit_oracles.py.
"""

import warnings

import numpy as np
import pymc as pm
import pytest
from scipy.special import logsumexp

import pm_em
from pm_em.compiling import default_compile_kwargs
from pm_em.engine.compiled import compile_model
from pm_em.engine.monitor import ConvergenceMonitor


def _gmm(x, *, flat=False, k=2):
    model = pm.Model(coords={"component": list("abc")[:k], "obs": range(len(x))})
    with model:
        w = pm.Dirichlet("w", a=np.ones(k), dims="component")
        if flat:
            mu = pm.Flat("mu", dims="component")
            sigma = pm.HalfFlat("sigma", dims="component")
        else:
            mu = pm.Normal("mu", 0, 10, dims="component")
            sigma = pm.HalfNormal("sigma", 5, dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x, dims="obs")
        pm.Deterministic("mu_gap", mu[1] - mu[0])
    return model


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20261122)
    return np.concatenate([rng.normal(-2, 1, 120), rng.normal(3, 0.8, 180)])


@pytest.fixture(scope="module")
def fitted(data):
    model = _gmm(data)
    return model, pm_em.fit(model, random_seed=5, progressbar=False)


def test_layout(fitted, data):
    _, idata = fitted
    assert set(idata.children) >= {
        "posterior",
        "latent_posterior",
        "em_stats",
        "log_likelihood",
        "observed_data",
        "constant_data",
    }
    post = idata.posterior
    assert dict(post.sizes) == {"chain": 1, "draw": 1, "component": 2}
    assert list(post["component"].values) == ["a", "b"]
    assert set(post.data_vars) == {"w", "mu", "sigma", "mu_gap"}
    # The Deterministic is evaluated at the estimate.
    mu = post["mu"].values.ravel()
    np.testing.assert_allclose(post["mu_gap"].values.ravel(), mu[1] - mu[0], rtol=1e-12)
    resp = idata.latent_posterior["z"]
    assert resp.dims == ("obs", "z_support")
    np.testing.assert_allclose(resp.sum("z_support"), 1.0, rtol=1e-12)
    stats = idata.em_stats
    assert stats["log_posterior"].dims == ("iteration",)
    assert stats["log_posterior"].size == int(stats["n_iter"]) + 1
    assert bool(stats["converged"])
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "obs")
    np.testing.assert_allclose(idata.observed_data["y"].values, data)


def test_log_likelihood_is_the_marginal_at_the_estimate(fitted, data):
    """Pointwise log likelihood: logsumexp over components of w_k N(y | mu_k, sigma_k)."""
    _, idata = fitted
    w, mu, sigma = (idata.posterior[v].values.ravel() for v in ("w", "mu", "sigma"))
    table = (
        np.log(w)
        - 0.5 * ((data[:, None] - mu) / sigma) ** 2
        - np.log(sigma)
        - 0.5 * np.log(2 * np.pi)
    )
    pointwise = logsumexp(table, axis=1)
    # 1e-7: PyMC's float32-autocast constants (see test_problem.py), not pm_em's arithmetic.
    np.testing.assert_allclose(idata.log_likelihood["y"].values.ravel(), pointwise, rtol=1e-7)
    np.testing.assert_allclose(
        float(idata.em_stats["final_log_likelihood"]), pointwise.sum(), rtol=1e-7
    )
    resp = np.exp(table - pointwise[:, None])
    np.testing.assert_allclose(idata.latent_posterior["z"].values, resp, atol=1e-9)


def test_monotone_trace(fitted):
    lp = fitted[1].em_stats["log_posterior"].values
    assert np.all(np.diff(lp) >= -1e-8 * np.abs(lp[1:]))


def test_arviz_takes_the_result(fitted):
    import arviz as az

    summary = az.summary(fitted[1], var_names=["mu", "sigma"], kind="stats")
    assert len(summary) == 4


def test_same_seed_same_bits(data):
    model = _gmm(data)
    a = pm_em.fit(model, random_seed=123, n_init=2, init="random", progressbar=False)
    b = pm_em.fit(model, random_seed=123, n_init=2, init="random", progressbar=False)
    for var in ("w", "mu", "sigma"):
        np.testing.assert_array_equal(a.posterior[var].values, b.posterior[var].values)
    np.testing.assert_array_equal(
        a.em_stats["restart_log_posterior"].values, b.em_stats["restart_log_posterior"].values
    )


def test_compiles_once_per_model(data):
    model = _gmm(data)
    kw = default_compile_kwargs()
    assert compile_model(model, None, kw) is compile_model(model, None, kw)


def test_max_iter_warns(data):
    model = _gmm(data)
    with pytest.warns(pm_em.EMConvergenceWarning, match="max_iter=2"):
        idata = pm_em.fit(model, max_iter=2, random_seed=1, progressbar=False, polish=False)
    assert not bool(idata.em_stats["converged"])
    assert int(idata.em_stats["n_iter"]) == 2


def test_tol_zero_runs_until_the_value_stops_changing(data):
    model = _gmm(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm_em.EMConvergenceWarning)
        idata = pm_em.fit(model, tol=0, max_iter=40, random_seed=1, progressbar=False)
    lp = idata.em_stats["log_posterior"].values
    # Either all 40 iterations ran, or it stopped because two values were equal.
    assert lp.size == 41 or lp[-1] == lp[-2]


def test_convergence_monitor_flags_a_decrease():
    monitor = ConvergenceMonitor(tol=1e-8, max_iter=10)
    monitor.report(-10.0)
    monitor.report(-9.0)
    with pytest.warns(pm_em.NonMonotoneWarning, match="decreased at EM iteration 2"):
        monitor.report(-9.5)
    assert not monitor.converged
    monitor.report(-9.5)
    assert monitor.converged


def test_no_latent_equals_find_map():
    """No latent and no missing value: find_MAP's answer, with a warning saying so."""
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, 50)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 10)
        s = pm.HalfNormal("s", 1)
        pm.Normal("y", mu, s, observed=x)
    with pytest.warns(
        pm_em.NoLatentWarning,
        match=r"EM had nothing to do.*free variables \['mu', 's'\] and the observed "
        r"variables \['y'\]",
    ):
        idata = pm_em.fit(model, progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # find_MAP's dict return
        ref = pm.find_MAP(model=model, progressbar=False, jitter=False)
    # Both are L-BFGS optima of the same objective; 1e-5 is well above either's tolerance.
    np.testing.assert_allclose(idata.posterior["mu"].values.ravel(), ref["mu"], rtol=1e-5)
    np.testing.assert_allclose(idata.posterior["s"].values.ravel(), ref["s"], rtol=1e-5)


def test_initvals_start_the_first_run(data):
    model = _gmm(data)
    with pytest.warns(pm_em.EMConvergenceWarning):
        idata = pm_em.fit(
            model,
            initvals={"mu": np.array([-1.0, 1.0])},
            max_iter=1,
            polish=False,
            progressbar=False,
            random_seed=0,
        )
    # One EM step from mu = (-1, 1): the trace starts at that point's log posterior.
    assert idata.em_stats["log_posterior"].size == 2


def test_collapse_is_detected_and_restarts_carry_on():
    """Flat priors: a component started on one point with a tiny sd collapses onto it."""
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, 40)
    model = _gmm(x, flat=True)
    start = {"mu": np.array([x[0], 0.0]), "sigma": np.array([1e-3, 1.0])}
    # One planned run: the degenerate one is replaced by a new start (k-means).
    with pytest.warns(
        pm_em.DegenerateRunWarning,
        match=r"run 1 of 1 was abandoned: component 0 of latent 'z' collapsed onto 1 distinct "
        r"value\(s\).*A replacement run starts elsewhere",
    ):
        idata = pm_em.fit(model, initvals=start, progressbar=False, random_seed=0)
    assert list(idata.em_stats["restart_status"].values) == ["degenerate", "converged"]
    assert int(idata.em_stats["best_restart"]) == 1
    with pytest.warns(pm_em.DegenerateRunWarning, match="run 1 of 3 was abandoned"):
        idata = pm_em.fit(model, initvals=start, n_init=3, progressbar=False, random_seed=0)
    status = list(idata.em_stats["restart_status"].values)
    assert status[0] == "degenerate"
    assert int(idata.em_stats["best_restart"]) != 0
    assert np.all(idata.posterior["sigma"].values > 0.05)


def test_empty_component_warns():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.normal(-5, 1, 50), rng.normal(5, 1, 50)])
    model = _gmm(x, k=3)
    with pytest.warns(pm_em.EmptyComponentWarning, match=r"'z' has empty component\(s\) \[2\]"):
        idata = pm_em.fit(
            model,
            initvals={"mu": np.array([-5.0, 5.0, 1000.0]), "sigma": np.ones(3)},
            progressbar=False,
        )
    assert float(idata.em_stats["z_count"].values[2]) < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_init": 0}, "`n_init` must be a positive integer"),
        ({"max_iter": 0}, "`max_iter` must be a positive integer"),
        ({"tol": -1.0}, "`tol` must be a finite number >= 0"),
        ({"init": "kmedoids"}, "`init` must be one of"),
        ({"initvals": {"nope": 1.0}}, "'nope', which is not a continuous free variable"),
        ({"initvals": {"z": np.zeros(300)}}, "`initvals` sets latent 'z'"),
        ({"initvals": {"sigma": np.array([-1.0, 1.0])}}, "outside the support of 'sigma'"),
    ],
)
def test_bad_arguments(data, kwargs, match):
    model = _gmm(data)
    with pytest.raises(ValueError, match=match):
        pm_em.fit(model, progressbar=False, **kwargs)


def test_impossible_start_is_refused():
    """Data outside every component's support at the start: name the latent and data."""
    with pm.Model() as model:
        lam = pm.HalfNormal("lam", 1.0, shape=2)
        z = pm.Bernoulli("z", 0.5, shape=3)
        pm.Uniform("y", lower=0.0, upper=lam[z], observed=np.array([0.5, 1.0, 50.0]))
    with pytest.raises(ValueError, match=r"no value of latent 'z' can explain element\(s\) \[2\]"):
        pm_em.fit(model, init="initial_point", progressbar=False)
    # The chunked engine checks its start per chunk, with the same message.
    with pytest.raises(ValueError, match=r"no value of latent 'z' can explain element\(s\) \[2\]"):
        pm_em.fit(model, init="initial_point", chunk_size=2, progressbar=False)


def test_model_from_context(data):
    with _gmm(data):
        idata = pm_em.fit(random_seed=1, progressbar=False)
    assert "mu" in idata.posterior
