"""`fit` on mixtures as PyMC users write them: pm.NormalMixture, pm.Mixture, zero-inflated, hurdle.

Every fit starts with no start values (``init="auto"``). The oracles are independent of
pm_em: scikit-learn's ``GaussianMixture`` and a numpy/scipy mode (tests/oracles.py) for Old
Faithful; a scipy maximization of PyMC's own mixture density (tests/pymc_oracles.py) for the
other families; the closed-form maximum-likelihood estimates of the zero-inflated and hurdle
Poisson models. Each tolerance says what it was measured against.
"""

import functools
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pymc as pm
import pytest
from scipy import stats
from scipy.optimize import brentq
from sklearn.mixture import GaussianMixture

import pm_em
from tests import oracles as O
from tests.pymc_oracles import match_components, pymc_mode

# EM never lowers the log posterior; 1e-10 relative is floating-point noise on ~1e3.
MONOTONE_RTOL = 1e-10


def _fit(model, **kwargs):
    return pm_em.fit(model, progressbar=False, **{"random_seed": 1, **kwargs})


def _estimate(idata, names):
    return {k: idata.posterior[k].values[0, 0] for k in names}


def _assert_monotone(idata):
    lp = idata.em_stats["log_posterior"].values
    assert np.all(np.isfinite(lp))
    assert np.all(np.diff(lp) >= -MONOTONE_RTOL * np.abs(lp[1:])), np.diff(lp).min()


# --------------------------------------------------------------------------- Old Faithful


def _faithful_model(x):
    with pm.Model(coords={"component": [0, 1]}) as model:
        w = pm.Dirichlet("w", np.ones(2), dims="component")
        mu = pm.Flat("mu", dims="component")
        sigma = pm.HalfFlat("sigma", dims="component")
        pm.NormalMixture("y", w=w, mu=mu, sigma=sigma, observed=x)
    return model


def test_faithful_normal_mixture_is_the_mle():
    """Flat priors: the MAP is the MLE that scikit-learn and a direct maximization find."""
    x = O.load_faithful()["waiting"]
    idata = _fit(_faithful_model(x))
    est = _estimate(idata, ("w", "mu", "sigma"))
    est = O.sort_components(est, est["mu"])
    start = {"w": np.array([0.4, 0.6]), "mu": np.array([55.0, 80.0]), "sigma": np.array([6.0, 6.0])}
    mode = O.maximize_mixture(O.LocationScaleMixture(x), [start])
    ref = O.sort_components(mode.params, mode.params["mu"])
    with warnings.catch_warnings():
        # tol=0: scikit-learn runs all max_iter iterations and says it did not converge.
        warnings.simplefilter("ignore")
        sk = O.sklearn_gmm_1d(x, tol=0.0, max_iter=1000, n_init=1)
    sk = O.sort_components(sk, sk["mu"])
    # scikit-learn's EM run to tol=0 and the Newton-polished scipy mode agree to 1e-13
    # (measured): two oracles of one MLE.
    for name in ref:
        np.testing.assert_allclose(sk[name], ref[name], rtol=0, atol=1e-10, err_msg=name)
    # pm_em (EM, then its polish) is within 7e-8 of the mode (measured); 1e-6 as the issue asks.
    for name in ref:
        np.testing.assert_allclose(est[name], ref[name], rtol=0, atol=1e-6, err_msg=name)
    # At the mode, 1e-6 errors cost < 1e-9 nats: the log likelihoods agree to ~1e-12.
    assert float(idata.em_stats["final_log_likelihood"]) == pytest.approx(
        mode.log_likelihood, rel=1e-11
    )
    _assert_monotone(idata)


# ----------------------------------------------------- other families vs PyMC's own density

N = 600


@functools.cache
def _labels(seed=11):
    return np.random.default_rng(seed).random(N) < 0.35


def _poisson():
    rng = np.random.default_rng(12)
    y = np.where(_labels(), rng.poisson(2.0, N), rng.poisson(9.0, N))
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        lam = pm.HalfFlat("lam", shape=2)
        pm.Mixture("y", w, pm.Poisson.dist(lam, shape=(N, 2)), observed=y)
    return model, {"w": [0.35, 0.65], "lam": [2.0, 9.0]}, [["w"], ["lam"]]


def _student_t(free_nu):
    rng = np.random.default_rng(13)
    y = np.where(_labels(), -2 + 0.8 * rng.standard_t(4, N), 2 + 1.3 * rng.standard_t(4, N))
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Flat("mu", shape=2)
        sigma = pm.HalfFlat("sigma", shape=2)
        nu = pm.Gamma("nu", 2.0, 0.1) if free_nu else 4.0
        pm.Mixture("y", w, pm.StudentT.dist(nu=nu, mu=mu, sigma=sigma, shape=(N, 2)), observed=y)
    start = {"w": [0.35, 0.65], "mu": [-2.0, 2.0], "sigma": [0.8, 1.3]}
    return model, {**start, **({"nu": 4.0} if free_nu else {})}, [["w"], ["mu"], ["sigma"]]


def _normal_and_student_t():
    rng = np.random.default_rng(14)
    y = np.where(_labels(), rng.normal(-2.0, 0.8, N), 2 + 1.3 * rng.standard_t(3, N))
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Flat("mu", shape=2)
        sigma = pm.HalfFlat("sigma", shape=2)
        comps = [pm.Normal.dist(mu[0], sigma[0]), pm.StudentT.dist(nu=3, mu=mu[1], sigma=sigma[1])]
        pm.Mixture("y", w, comps, observed=y)
    # Components of different families are not exchangeable: no permutation to undo.
    return model, {"w": [0.35, 0.65], "mu": [-2.0, 2.0], "sigma": [0.8, 1.3]}, []


def _mvnormal_lkj():
    rng = np.random.default_rng(15)
    y = np.where(
        _labels()[:, None],
        rng.multivariate_normal([-2, 0], [[1.0, 0.5], [0.5, 1.0]], N),
        rng.multivariate_normal([2, 2], [[0.6, -0.2], [-0.2, 0.5]], N),
    )
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=(2, 2))
        chols = [
            pm.LKJCholeskyCov(f"L{k}", n=2, eta=2.0, sd_dist=pm.HalfNormal.dist(5.0))[0]
            for k in range(2)
        ]
        pm.Mixture("y", w, [pm.MvNormal.dist(mu[k], chol=chols[k]) for k in range(2)], observed=y)
    return (
        model,
        {"w": [0.35, 0.65], "mu": [[-2.0, 0.0], [2.0, 2.0]]},
        [["w"], ["mu"], ["L0", "L1"]],
    )


def _zero_inflated_negbinomial():
    rng = np.random.default_rng(16)
    y = np.where(rng.random(N) < 0.3, 0, rng.negative_binomial(3, 3 / (3 + 4.0), N))
    with pm.Model() as model:
        psi = pm.Beta("psi", 1.0, 1.0)
        pm.ZeroInflatedNegativeBinomial(
            "y", psi, mu=pm.HalfFlat("mu"), alpha=pm.HalfFlat("alpha"), observed=y
        )
    return model, {"psi": 0.7, "mu": 4.0, "alpha": 3.0}, []


def _hurdle_gamma():
    rng = np.random.default_rng(17)
    y = np.where(rng.random(N) < 0.3, 0.0, rng.gamma(1.5, 2.0, N))
    with pm.Model() as model:
        psi = pm.Beta("psi", 1.0, 1.0)
        pm.HurdleGamma("y", psi, alpha=pm.HalfFlat("alpha"), beta=pm.HalfFlat("beta"), observed=y)
    return model, {"psi": 0.7, "alpha": 1.5, "beta": 0.5}, []


SCENARIOS = {
    "poisson": _poisson,
    "student_t_fixed_nu": functools.partial(_student_t, False),
    "student_t_free_nu": functools.partial(_student_t, True),
    "normal_and_student_t": _normal_and_student_t,
    "mvnormal_lkj": _mvnormal_lkj,
    "zero_inflated_negbinomial": _zero_inflated_negbinomial,
    "hurdle_gamma": _hurdle_gamma,
}


@pytest.mark.parametrize(
    "name",
    [
        *SCENARIOS,
    ],
)
def test_mixture_map_equals_direct_maximization_of_pymcs_density(name):
    model, start, groups = SCENARIOS[name]()
    idata = _fit(model)
    mode = pymc_mode(model, [{k: np.asarray(v) for k, v in start.items()}])
    # The oracle is a stationary point to round-off (Newton step < 1e-10 measured).
    assert mode.newton_step < 1e-8
    est = _estimate(idata, mode.values)
    if groups:
        est = match_components(est, mode.values, groups)
    # Measured: pm_em within 2e-8 of the oracle on every scenario (EM, then its polish);
    # 1e-5 as the issue asks. A wrong density term would move the mode by far more at N=600.
    for var, value in mode.values.items():
        np.testing.assert_allclose(est[var], value, rtol=0, atol=1e-5, err_msg=var)
    assert float(idata.em_stats["final_log_posterior"]) == pytest.approx(
        mode.log_posterior, rel=1e-10
    )
    _assert_monotone(idata)


# ------------------------------------------------------- zero-inflated and hurdle Poisson


def _zero_heavy_counts(seed=18):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(N) < 0.3, 0, rng.poisson(3.0, N))


def _zero_truncated_poisson_rate(y):
    """MLE of a zero-truncated Poisson: lambda / (1 - exp(-lambda)) = mean of the positives."""
    mean = y[y > 0].mean()
    return brentq(lambda lam: lam / -np.expm1(-lam) - mean, 1e-8, 100.0, xtol=1e-15)


@pytest.mark.parametrize("family", ["ZeroInflatedPoisson", "HurdlePoisson"])
def test_zero_inflated_and_hurdle_poisson_equal_their_closed_form_mle(family):
    """Both likelihoods factor into P(y = 0) and a zero-truncated Poisson for y > 0.

    So the MLE of lambda is the zero-truncated Poisson's, and P(y = 0) = n0 / n: psi is
    1 - n0/n for the hurdle, and (1 - n0/n) / (1 - exp(-lambda)) for the zero-inflated model.
    """
    y = _zero_heavy_counts()
    with pm.Model() as model:
        psi = pm.Beta("psi", 1.0, 1.0)  # density 1: the MAP is the MLE
        lam = pm.HalfFlat("lam")
        getattr(pm, family)("y", psi, lam, observed=y)
    idata = _fit(model)
    lam_hat = _zero_truncated_poisson_rate(y)
    p_zero = np.mean(y == 0)
    psi_hat = (1 - p_zero) if family == "HurdlePoisson" else (1 - p_zero) / -np.expm1(-lam_hat)
    est = _estimate(idata, ("psi", "lam"))
    # The closed form is exact; pm_em's polish reaches the mode within ~1e-8 (measured).
    np.testing.assert_allclose(est["lam"], lam_hat, rtol=1e-6)
    np.testing.assert_allclose(est["psi"], psi_hat, rtol=1e-6)
    resp = idata.latent_posterior["y_component"].values
    zero = y == 0
    if family == "HurdlePoisson":
        # A hurdle's zeros come from the zero part only, and its other values never do.
        np.testing.assert_array_equal(resp[zero], np.broadcast_to([1.0, 0.0], (zero.sum(), 2)))
    else:
        # A zero is structural with probability (1 - psi) / P(y = 0).
        structural = (1 - est["psi"]) / ((1 - est["psi"]) + est["psi"] * np.exp(-est["lam"]))
        np.testing.assert_allclose(resp[zero, 0], structural, rtol=1e-10)
    np.testing.assert_array_equal(resp[~zero, 0], 0.0)
    _assert_monotone(idata)


# ---------------------------------------------------------------- the two forms agree


def _two_forms(x):
    coords = {"component": ["a", "b"], "obs": np.arange(len(x))}
    models = {}
    for form in ("marginal", "explicit"):
        with pm.Model(coords=coords) as model:
            w = pm.Dirichlet("w", np.ones(2), dims="component")
            mu = pm.Normal("mu", 0.0, 10.0, dims="component")
            sigma = pm.HalfNormal("sigma", 5.0, dims="component")
            if form == "marginal":
                pm.NormalMixture("y", w=w, mu=mu, sigma=sigma, observed=x, dims="obs")
            else:
                z = pm.Categorical("z", p=w, dims="obs")
                pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x, dims="obs")
        models[form] = model
    return models


def _layout(idata, rename):
    def dims(da):
        return tuple(rename.get(str(d), str(d)) for d in da.dims)

    return {
        group: {rename.get(str(v), str(v)): dims(idata[group][v]) for v in idata[group].data_vars}
        for group in idata.children
    }


def test_normal_mixture_and_explicit_latent_give_the_same_fit():
    rng = np.random.default_rng(19)
    x = np.where(rng.random(500) < 0.35, rng.normal(-1.5, 0.8, 500), rng.normal(1.5, 1.2, 500))
    models = _two_forms(x)
    marginal, explicit = (_fit(models[f], random_seed=3) for f in ("marginal", "explicit"))
    # Same data, priors, start (k-means on the same data) and closed-form updates: the EM
    # iterations agree to round-off; the polish follows gradients of two different graphs
    # (PyMC's mixture vs mu[z] gathers), which agree to ~1e-12 (measured: estimates 2e-9).
    for name in ("w", "mu", "sigma"):
        np.testing.assert_allclose(
            marginal.posterior[name].values, explicit.posterior[name].values, rtol=0, atol=1e-8
        )
    np.testing.assert_allclose(
        marginal.latent_posterior["y_component"].values,
        explicit.latent_posterior["z"].values,
        rtol=0,
        atol=1e-8,
    )
    for key in ("final_log_posterior", "final_log_likelihood"):
        assert float(marginal.em_stats[key]) == pytest.approx(
            float(explicit.em_stats[key]), abs=1e-8
        )
    np.testing.assert_allclose(
        marginal.em_stats["log_posterior"].values,
        explicit.em_stats["log_posterior"].values,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        marginal.log_likelihood["y"].values, explicit.log_likelihood["y"].values, atol=1e-8
    )
    # The same layout, once the latent's name (and its support dim's) is renamed.
    # The mixture's latent takes the weights' dim "component" as its support dim; the
    # explicit latent's is "z_support".
    rename = {"y_component": "z", "y_component_count": "z_count"}
    assert _layout(marginal, rename) == _layout(explicit, {"z_support": "component"})
    np.testing.assert_array_equal(
        marginal.latent_posterior["component"].values, marginal.posterior["component"].values
    )


# --------------------------------------------------------------------------- missing data


def test_normal_mixture_with_nan_is_integrated_out_and_imputed():
    rng = np.random.default_rng(20)
    x = np.where(rng.random(400) < 0.35, rng.normal(-2, 0.8, 400), rng.normal(2, 1.2, 400))
    x[rng.random(400) < 0.1] = np.nan
    missing = np.isnan(x)
    with pm.Model(coords={"component": [0, 1], "obs": range(400)}) as model:
        w = pm.Dirichlet("w", np.ones(2), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        pm.NormalMixture("y", w=w, mu=mu, sigma=sigma, observed=x, dims="obs")
    idata = _fit(model)
    # Oracle: PyMC's density of the parameters and of y_observed only (pm.find_MAP would
    # also maximize over PyMC's y_unobserved, which is not the observed-data MAP).
    params = [model[n] for n in ("w", "mu", "sigma")]
    start = {"w": np.array([0.35, 0.65]), "mu": np.array([-2.0, 2.0]), "sigma": np.ones(2)}
    mode = pymc_mode(model, [start], params=params, terms=[*params, model["y_observed"]])
    est = match_components(
        _estimate(idata, ("w", "mu", "sigma")), mode.values, [["w"], ["mu"], ["sigma"]]
    )
    # Measured within 1e-8; 1e-5 as for the fully observed mixtures.
    for name, value in mode.values.items():
        np.testing.assert_allclose(est[name], value, rtol=0, atol=1e-5, err_msg=name)
    w_, mu_, sigma_ = (idata.posterior[n].values[0, 0] for n in ("w", "mu", "sigma"))
    lat = idata.latent_posterior
    # A missing entry's component posterior is the weights; its imputation the mixture's
    # mean, and its sd by the law of total variance (exact formulas: round-off only).
    mean = (w_ * mu_).sum()
    sd = np.sqrt((w_ * (sigma_**2 + mu_**2)).sum() - mean**2)
    np.testing.assert_allclose(
        lat["y_component"].values[missing], np.broadcast_to(w_, (missing.sum(), 2)), rtol=1e-12
    )
    np.testing.assert_allclose(lat["y_unobserved"].values, mean, rtol=1e-12)
    np.testing.assert_allclose(lat["y_unobserved_sd"].values, sd, rtol=1e-12)
    completed = idata.posterior["y"].values[0, 0]
    np.testing.assert_array_equal(completed[~missing], x[~missing])
    np.testing.assert_allclose(completed[missing], mean, rtol=1e-12)
    assert idata.posterior["y"].dims == ("chain", "draw", "obs")
    _assert_monotone(idata)


def test_zero_inflated_poisson_with_nan_imputes_its_moments():
    y = _zero_heavy_counts(21).astype("float64")
    y[::17] = np.nan
    with pm.Model() as model, warnings.catch_warnings():
        # PyMC itself casts the data, NaN included, to int before imputing them.
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        psi = pm.Beta("psi", 1.0, 1.0)
        lam = pm.HalfFlat("lam")
        pm.ZeroInflatedPoisson("y", psi, lam, observed=y)
    idata = _fit(model)
    obs = y[~np.isnan(y)].astype(int)
    lam_hat = _zero_truncated_poisson_rate(obs)
    psi_hat = (1 - np.mean(obs == 0)) / -np.expm1(-lam_hat)
    est = _estimate(idata, ("psi", "lam"))
    # The closed-form MLE of the observed counts alone (see above).
    np.testing.assert_allclose([est["psi"], est["lam"]], [psi_hat, lam_hat], rtol=1e-6)
    # Imputation: E[y] = psi lam, Var[y] = psi (lam + lam^2) - (psi lam)^2.
    p, lam_ = est["psi"], est["lam"]
    np.testing.assert_allclose(idata.latent_posterior["y_unobserved"].values, p * lam_, rtol=1e-12)
    sd = np.sqrt(p * (lam_ + lam_**2) - (p * lam_) ** 2)
    np.testing.assert_allclose(idata.latent_posterior["y_unobserved_sd"].values, sd, rtol=1e-12)
    _assert_monotone(idata)


@pytest.mark.slow
def test_mvnormal_mixture_with_nan_inside_rows():
    """Oracle: one PyMC mixture per missingness pattern (the observed coordinates' marginals)."""
    rng = np.random.default_rng(22)
    Y = np.where(
        _labels()[:300, None],
        rng.multivariate_normal([-2, 0], [[1.0, 0.5], [0.5, 1.0]], 300),
        rng.multivariate_normal([2, 2], [[0.6, -0.2], [-0.2, 0.5]], 300),
    )
    Y[rng.random(Y.shape) < 0.15] = np.nan

    def model_of(data):
        with pm.Model() as model:
            w = pm.Dirichlet("w", np.ones(2))
            mu = pm.Normal("mu", 0.0, 10.0, shape=(2, 2))
            chol = pm.LKJCholeskyCov("L", n=2, eta=2.0, sd_dist=pm.HalfNormal.dist(5.0))[0]
            cov = chol @ chol.T
            if data is None:
                pm.Mixture(
                    "y", w, [pm.MvNormal.dist(mu[k], cov * (k + 1)) for k in range(2)], observed=Y
                )
                return model
            for j, (cols, rows) in enumerate(data):
                comps = [
                    pm.MvNormal.dist(mu[k][cols], (cov * (k + 1))[cols][:, cols]) for k in range(2)
                ]
                pm.Mixture(f"y{j}", w, comps, observed=Y[np.ix_(rows, cols)])
        return model

    patterns = {}
    for i, row in enumerate(np.isnan(Y)):
        patterns.setdefault(tuple(row), []).append(i)
    oracle = model_of(
        [(np.flatnonzero(~np.array(p)), r) for p, r in patterns.items() if not all(p)]
    )
    idata = _fit(model_of(None))
    mode = pymc_mode(
        oracle, [{"w": np.array([0.35, 0.65]), "mu": np.array([[-2.0, 0.0], [2.0, 2.0]])}]
    )
    # The two components differ by their covariances' scale (1x, 2x): no permutation.
    est = _estimate(idata, mode.values)
    for name, value in mode.values.items():
        np.testing.assert_allclose(est[name], value, rtol=0, atol=1e-5, err_msg=name)
    lat = idata.latent_posterior
    assert lat["y_unobserved"].shape == (int(np.isnan(Y).sum()),)
    assert np.all(np.isfinite(lat["y_unobserved"].values)) and np.all(lat["y_unobserved_sd"] > 0)
    _assert_monotone(idata)


# ----------------------------------------------------------- the rest of what fit offers


@pytest.fixture(scope="module")
def faithful_fit():
    x = O.load_faithful()["waiting"]
    model = _faithful_model(x)
    return model, x, _fit(model)


def test_restarts_and_squarem_reach_the_same_mode(faithful_fit):
    model, _, plain = faithful_fit
    fast = _fit(model, n_init=3, accelerate=True, random_seed=4)
    assert list(fast.em_stats["restart_status"].values) == ["converged"] * 3
    est, ref = _estimate(fast, ("mu",)), _estimate(plain, ("mu",))
    # Both polished to the mode (within 7e-8 of it, measured above).
    np.testing.assert_allclose(np.sort(est["mu"]), np.sort(ref["mu"]), rtol=0, atol=1e-6)
    _assert_monotone(fast)


def test_information_criteria_match_scikit_learn(faithful_fit):
    model, x, idata = faithful_fit
    ic = pm_em.information_criteria(idata, model=model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0: "did not converge"
        gm = GaussianMixture(2, reg_covar=0.0, tol=0.0, max_iter=1000, random_state=0).fit(
            x[:, None]
        )
    # scikit-learn counts 5 free parameters (1 weight, 2 means, 2 variances), as pm_em does
    # (the simplex has one coordinate); both evaluate at the same MLE (1e-7 apart).
    assert int(ic["n_params"]) == 5 and int(ic["n_obs"]) == x.size
    assert float(ic["bic"]) == pytest.approx(gm.bic(x[:, None]), rel=1e-10)
    assert float(ic["aic"]) == pytest.approx(gm.aic(x[:, None]), rel=1e-10)
    r = gm.predict_proba(x[:, None])
    entropy = -np.sum(np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0))
    assert float(ic["entropy"]) == pytest.approx(entropy, rel=1e-6)


def test_plot_mixture_draws_the_fitted_mixture(faithful_fit, tmp_path):
    _, _, idata = faithful_fit
    fig = pm_em.plot_mixture(idata)
    (ax,) = fig.axes
    mixture = next(line for line in ax.lines if line.get_label() == "mixture")
    y, density = mixture.get_xydata().T
    # Oracle: the mixture density at the estimate, written out with scipy.
    w, mu, sigma = (idata.posterior[n].values[0, 0] for n in ("w", "mu", "sigma"))
    expected = (w * stats.norm.pdf(y[:, None], mu, sigma)).sum(axis=1)
    np.testing.assert_allclose(density, expected, rtol=1e-10)
    fig.savefig(tmp_path / "mixture.png")
    assert (tmp_path / "mixture.png").stat().st_size > 0
    plt.close(fig)


def test_plot_mixture_and_criteria_with_missing_values():
    """The imputations sit in latent_posterior beside the responsibilities: not a latent."""
    x = O.load_faithful()["waiting"].copy()
    x[::25] = np.nan
    model = _faithful_model(x)
    idata = _fit(model)
    with pytest.raises(ValueError, match=r"\['y'\] of latent 'y_component' have missing values"):
        pm_em.plot_mixture(idata)
    ic = pm_em.information_criteria(idata, model=model)
    r = idata.latent_posterior["y_component"].values
    # The entropy of the responsibilities alone (the imputed means are no probabilities).
    entropy = -np.sum(np.where(r > 0, r * np.log(np.where(r > 0, r, 1.0)), 0.0))
    assert float(ic["entropy"]) == pytest.approx(entropy, rel=1e-12)


def test_an_empty_component_warns():
    rng = np.random.default_rng(23)
    x = np.concatenate([rng.normal(-5, 1, 60), rng.normal(5, 1, 60)])
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(3))
        mu = pm.Normal("mu", 0, 10, shape=3)
        pm.NormalMixture("y", w, mu, 1.0, observed=x)
    with pytest.warns(
        pm_em.EmptyComponentWarning, match=r"'y_component' has empty component\(s\) \[2\]"
    ):
        idata = _fit(model, initvals={"mu": np.array([-5.0, 5.0, 1000.0])})
    assert float(idata.em_stats["y_component_count"].values[2]) < 1e-3


def test_a_collapsing_mixture_is_abandoned_for_another_restart():
    """Flat priors: a component started on one point with a tiny sd collapses onto it."""
    x = np.random.default_rng(24).normal(0, 1, 40)
    model = _faithful_model(x)
    start = {"mu": np.array([x[0], 0.0]), "sigma": np.array([1e-3, 1.0])}
    with pytest.warns(pm_em.DegenerateRunWarning, match="run 1 of 3 was abandoned"):
        idata = _fit(model, initvals=start, n_init=3, random_seed=0)
    assert idata.em_stats["restart_status"].values[0] == "degenerate"
    assert np.all(idata.posterior["sigma"].values > 0.05)
