"""Missing data: NaN in observed arrays, integrated out by EM, against independent oracles.

Oracles: closed forms (the observed mean and sd; Anderson's 1957 MLE for monotone bivariate
normal data), a direct scipy maximization of the observed-data likelihood (each row's
marginal Gaussian over its observed entries), and a fit of the observed rows alone.
"""

import warnings
from pathlib import Path

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from scipy import optimize, stats

import pm_em

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(autouse=True)
def _imputation_is_expected():
    # PyMC announces every imputation; here that is the point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pm.exceptions.ImputationWarning)
        yield


def _assert_monotone(idata):
    lp = idata.em_stats["log_posterior"].values
    # EM's defining property, up to floating-point noise of the summed log density.
    assert np.all(np.diff(lp) >= -1e-10 * np.abs(lp[1:]))


def test_seed_series_gives_the_observed_moments():
    """The seed example: with flat priors the MLE is the observed mean and sd (ddof 0)."""
    x = np.array([2, np.nan, 6, 8, np.nan, 10, 12, 14, np.nan, 18.0])
    with pm.Model(coords={"t": range(10)}) as model:
        mu = pm.Flat("mu")
        sigma = pm.HalfFlat("sigma")
        pm.Normal("y", mu, sigma, observed=x, dims="t")
    idata = pm_em.fit(model, progressbar=False)
    observed = x[~np.isnan(x)]
    post = idata.posterior
    # Closed form; 1e-6 is the bound and far above L-BFGS's gradient tolerance.
    np.testing.assert_allclose(post["mu"].item(), observed.mean(), atol=1e-6)
    np.testing.assert_allclose(post["sigma"].item(), observed.std(), atol=1e-6)
    lat = idata.latent_posterior
    np.testing.assert_allclose(lat["y_unobserved"].values, 10.0, atol=1e-6)
    np.testing.assert_allclose(lat["y_unobserved_sd"].values, observed.std(), atol=1e-6)
    # The Deterministic `y` holds the completed data, with the model's dims.
    filled = post["y"].values.ravel()
    assert post["y"].dims == ("chain", "draw", "t")
    np.testing.assert_allclose(filled[~np.isnan(x)], observed)
    np.testing.assert_allclose(filled[np.isnan(x)], 10.0, atol=1e-6)
    _assert_monotone(idata)


def _bivariate_model(data):
    with pm.Model() as model:
        mu = pm.Flat("mu", shape=2)
        sd = pm.HalfFlat("sd", shape=2)
        rho = pm.Uniform("rho", -1, 1)
        cov = pm.Deterministic(
            "cov",
            pt.stack(
                [
                    pt.stack([sd[0] ** 2, rho * sd[0] * sd[1]]),
                    pt.stack([rho * sd[0] * sd[1], sd[1] ** 2]),
                ]
            ),
        )
        pm.MvNormal("y", mu, cov=cov, observed=data)
    return model


def _anderson(data):
    """Anderson (1957): MLE of a bivariate normal whose second column is missing at random."""
    y1, y2 = data[:, 0], data[:, 1]
    complete = ~np.isnan(y2)
    c1, c2 = y1[complete], y2[complete]
    slope = np.mean((c1 - c1.mean()) * (c2 - c2.mean())) / c1.var()
    intercept = c2.mean() - slope * c1.mean()
    resid_var = np.mean((c2 - intercept - slope * c1) ** 2)
    mu1, s11 = y1.mean(), y1.var()
    mu = np.array([mu1, intercept + slope * mu1])
    s12 = slope * s11
    cov = np.array([[s11, s12], [s12, resid_var + slope**2 * s11]])
    return mu, cov, intercept, slope, resid_var


@pytest.mark.parametrize("source", ["generated", "apple"])
def test_bivariate_monotone_equals_anderson(source):
    if source == "apple":
        table = np.genfromtxt(DATA / "apple.csv", delimiter=",", skip_header=1)
        data = table[:, :2]
    else:
        rng = np.random.default_rng(31)
        data = rng.multivariate_normal([1.0, -2.0], [[2.0, 1.2], [1.2, 1.5]], size=300)
        data[rng.random(300) < 0.3, 1] = np.nan
    idata = pm_em.fit(_bivariate_model(data), progressbar=False)
    mu, cov, intercept, slope, resid_var = _anderson(data)
    post = idata.posterior
    # The closed form is exact; 1e-4 relative is the bound, far above the
    # optimizer's tolerance (EM is polished to a gradient of ~1e-10).
    np.testing.assert_allclose(post["mu"].values.ravel(), mu, rtol=1e-4)
    np.testing.assert_allclose(post["cov"].values.reshape(2, 2), cov, rtol=1e-4)
    missing = np.isnan(data[:, 1])
    pred = intercept + slope * data[missing, 0]
    lat = idata.latent_posterior
    np.testing.assert_allclose(lat["y_unobserved"].values, pred, rtol=1e-4)
    np.testing.assert_allclose(lat["y_unobserved_sd"].values, np.sqrt(resid_var), rtol=1e-4)
    if source == "apple":
        # Published MLE (R mvnmle's `apple` example): mvnmle maximizes numerically with
        # nlm, and its printed values differ from the exact closed form by up to 6e-5
        # relative (cov12: -90.69136 vs -90.69673), hence 1e-4.
        np.testing.assert_allclose(post["mu"].values.ravel(), [14.72222, 49.33329], rtol=1e-4)
        np.testing.assert_allclose(
            post["cov"].values.reshape(2, 2),
            [[89.53396, -90.69136], [-90.69136, 114.69323]],
            rtol=1e-4,
        )
    _assert_monotone(idata)


def _observed_data_mle(data):
    """Maximize sum_i log N(x_i,obs | mu_obs, Sigma_obs,obs) directly, over (mu, chol)."""
    d = data.shape[1]
    rows = ~np.isnan(data)
    patterns = {tuple(r) for r in rows}
    tril = np.tril_indices(d)

    def unpack(theta):
        mu = theta[:d]
        chol = np.zeros((d, d))
        chol[tril] = theta[d:]
        chol[np.diag_indices(d)] = np.exp(chol[np.diag_indices(d)])
        return mu, chol @ chol.T

    def neg_log_lik(theta):
        mu, cov = unpack(theta)
        total = 0.0
        for pattern in patterns:
            o = np.array(pattern)
            if not o.any():
                continue
            sel = np.all(rows == o, axis=1)
            total += stats.multivariate_normal.logpdf(
                data[sel][:, o], mu[o], cov[np.ix_(o, o)]
            ).sum()
        return -total

    theta0 = np.concatenate([np.nanmean(data, axis=0), np.zeros(len(tril[0]))])
    res = optimize.minimize(neg_log_lik, theta0, method="BFGS", options={"gtol": 1e-10})
    res = optimize.minimize(
        neg_log_lik,
        res.x,
        method="Nelder-Mead",
        options={"xatol": 1e-12, "fatol": 1e-14, "maxiter": 20000},
    )
    mu, cov = unpack(res.x)
    return mu, cov, -res.fun


def test_trivariate_arbitrary_pattern_equals_direct_maximization():
    rng = np.random.default_rng(32)
    cov_true = np.array([[1.0, 0.5, 0.2], [0.5, 2.0, 0.3], [0.2, 0.3, 1.5]])
    data = rng.multivariate_normal([1.0, 2.0, 3.0], cov_true, size=150)
    data[rng.random(data.shape) < 0.2] = np.nan  # arbitrary pattern, some rows empty
    with pm.Model() as model:
        mu = pm.Flat("mu", shape=3)
        diag = pm.HalfFlat("diag", shape=3)
        off = pm.Flat("off", shape=3)
        chol = pt.zeros((3, 3))
        chol = pt.set_subtensor(chol[np.diag_indices(3)], diag)
        chol = pt.set_subtensor(chol[np.tril_indices(3, -1)], off)
        cov = pm.Deterministic("cov", chol @ chol.T)
        pm.MvNormal("y", mu, cov=cov, observed=data)
    idata = pm_em.fit(model, progressbar=False)
    mu, cov, log_lik = _observed_data_mle(data)
    post = idata.posterior
    # Both are optima of the same smooth likelihood; 1e-4 relative covers the oracle's
    # optimizer tolerance (BFGS then Nelder-Mead) with room to spare.
    np.testing.assert_allclose(post["mu"].values.ravel(), mu, rtol=1e-4)
    np.testing.assert_allclose(post["cov"].values.reshape(3, 3), cov, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(idata.em_stats["final_log_likelihood"]), log_lik, rtol=1e-8)
    # Imputation: the Gaussian conditional of each row's missing entries given its observed.
    miss = np.isnan(data)
    expected_mean, expected_sd = [], []
    c = post["cov"].values.reshape(3, 3)
    m = post["mu"].values.ravel()
    for row, mrow in zip(data, miss, strict=True):
        if not mrow.any():
            continue
        o = ~mrow
        gain = (
            c[np.ix_(mrow, o)] @ np.linalg.inv(c[np.ix_(o, o)])
            if o.any()
            else np.zeros((mrow.sum(), 0))
        )
        expected_mean.extend(m[mrow] + gain @ (row[o] - m[o]))
        cond_cov = c[np.ix_(mrow, mrow)] - gain @ c[np.ix_(o, mrow)]
        expected_sd.extend(np.sqrt(np.diag(cond_cov)))
    lat = idata.latent_posterior
    # Same estimate on both sides: an exact identity up to linear-algebra round-off.
    np.testing.assert_allclose(lat["y_unobserved"].values, expected_mean, rtol=1e-8)
    np.testing.assert_allclose(lat["y_unobserved_sd"].values, expected_sd, rtol=1e-8)
    _assert_monotone(idata)


def _mixture(x):
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", w, shape=len(x))
        pm.Normal("y", mu[z], sigma[z], observed=x)
    return model


def test_mixture_with_nan_equals_the_observed_rows_alone():
    rng = np.random.default_rng(33)
    x = np.concatenate([rng.normal(-3, 1, 150), rng.normal(3, 1.2, 150)])
    x[rng.choice(300, 30, replace=False)] = np.nan
    with_nan = pm_em.fit(_mixture(x), progressbar=False, random_seed=1)
    alone = pm_em.fit(_mixture(x[~np.isnan(x)]), progressbar=False, random_seed=1)
    # A missing entry of a mixture carries no information about the parameters: the two
    # fits maximize the same function (1e-6: both are polished to the same mode).
    for var in ("w", "mu", "sigma"):
        np.testing.assert_allclose(
            with_nan.posterior[var].values, alone.posterior[var].values, rtol=1e-6
        )
    w = with_nan.posterior["w"].values.ravel()
    mu = with_nan.posterior["mu"].values.ravel()
    sigma = with_nan.posterior["sigma"].values.ravel()
    lat = with_nan.latent_posterior
    # Missing rows keep the prior responsibilities: the imputation is the mixture mean, and
    # its sd follows the law of total variance.
    mean = (w * mu).sum()
    sd = np.sqrt((w * (sigma**2 + mu**2)).sum() - mean**2)
    np.testing.assert_allclose(lat["y_unobserved"].values, mean, rtol=1e-10)
    np.testing.assert_allclose(lat["y_unobserved_sd"].values, sd, rtol=1e-10)
    np.testing.assert_allclose(
        lat["z"].values[np.isnan(x)], np.broadcast_to(w, (30, 2)), rtol=1e-10
    )
    _assert_monotone(with_nan)


def test_partly_missing_rows_in_a_mixture():
    """2-D rows with one coordinate missing: responsibilities from the observed coordinate."""
    rng = np.random.default_rng(34)
    x = np.concatenate([rng.normal(-3, 1, (60, 2)), rng.normal(3, 1, (60, 2))])
    x[::7, 1] = np.nan
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=(2, 2))
        z = pm.Categorical("z", w, shape=120)
        pm.Normal("y", mu[z], 1.0, observed=x)
    idata = pm_em.fit(model, progressbar=False, random_seed=2)
    w = idata.posterior["w"].values.ravel()
    mu = idata.posterior["mu"].values.reshape(2, 2)
    rows = np.flatnonzero(np.isnan(x[:, 1]))
    # Oracle: p(z | x_i0) from the observed coordinate only, then the mixed conditional mean.
    log_r = np.log(w) + stats.norm.logpdf(x[rows, 0][:, None], mu[:, 0], 1.0)
    r = np.exp(log_r - log_r.max(axis=1, keepdims=True))
    r /= r.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(idata.latent_posterior["z"].values[rows], r, rtol=1e-8)
    np.testing.assert_allclose(
        idata.latent_posterior["y_unobserved"].values, r @ mu[:, 1], rtol=1e-8
    )
    _assert_monotone(idata)


def test_missing_values_something_depends_on_are_refused():
    x = np.array([1.0, np.nan, 2.0])
    with pm.Model() as model:
        mu = pm.Normal("mu")
        y = pm.Normal("y", mu, 1.0, observed=x)
        pm.Normal("child", y.sum(), 1.0, observed=3.0)
    with pytest.raises(ValueError, match="'child' depends on the missing values of 'y'"):
        pm_em.fit(model, progressbar=False)


def test_latent_may_name_the_imputed_variable():
    x = np.array([1.0, np.nan, 3.0, 4.0])
    with pm.Model() as model:
        mu = pm.Flat("mu")
        pm.Normal("y", mu, 1.0, observed=x)
    for name in ("y", "y_unobserved"):
        idata = pm_em.fit(model, latent=[name], progressbar=False)
        np.testing.assert_allclose(idata.posterior["mu"].item(), np.nanmean(x), atol=1e-6)


def test_nan_in_a_discrete_likelihood_is_integrated_out():
    """PyMC's y_unobserved is integer here: it is a missing value, not a latent to enumerate."""
    y = np.array([3, 5, np.nan, 2, 4, np.nan, 6.0])
    with pm.Model() as model, warnings.catch_warnings():
        # PyMC itself casts the data, NaN included, to int before imputing them.
        warnings.filterwarnings("ignore", "invalid value encountered in cast", RuntimeWarning)
        lam = pm.Gamma("lam", 1.0, 1.0)
        pm.Poisson("y", lam, observed=y)
    idata = pm_em.fit(model, progressbar=False)
    obs = y[~np.isnan(y)]
    # Gamma(1, 1) prior: the MAP (no Jacobian) is sum(y) / (n + 1) in closed form.
    lam_hat = obs.sum() / (obs.size + 1)
    np.testing.assert_allclose(idata.posterior["lam"].item(), lam_hat, rtol=1e-6)
    np.testing.assert_allclose(idata.latent_posterior["y_unobserved"].values, lam_hat, rtol=1e-6)
    np.testing.assert_allclose(
        idata.latent_posterior["y_unobserved_sd"].values, np.sqrt(lam_hat), rtol=1e-6
    )
    assert "y_unobserved_count" not in idata.em_stats


def test_unknown_moments_warn_but_do_not_stop_the_fit():
    y = np.array([0.5, 1.5, np.nan, 2.0])
    with pm.Model() as model:
        s = pm.HalfFlat("s")
        pm.HalfNormal("y", s, observed=y)
    with pytest.warns(pm_em.MissingMomentWarning, match="no variance for the HalfNormal"):
        idata = pm_em.fit(model, progressbar=False)
    obs = y[~np.isnan(y)]
    # HalfNormal MLE of the scale: sqrt(mean(y^2)).
    np.testing.assert_allclose(idata.posterior["s"].item(), np.sqrt((obs**2).mean()), rtol=1e-6)
    assert np.isnan(idata.latent_posterior["y_unobserved_sd"].values).all()


def test_missing_values_of_a_mixture_must_be_in_latent():
    x = np.array([1.0, np.nan, 3.0, 4.0])
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 10, shape=2)
        z = pm.Bernoulli("z", 0.5, shape=4)
        pm.Normal("y", mu[z], 1.0, observed=x)
    with pytest.raises(ValueError, match="missing values of 'y' depend on latent 'z'"):
        pm_em.fit(model, latent=["z"], progressbar=False)
