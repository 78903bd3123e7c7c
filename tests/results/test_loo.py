"""`pm_em.loo`: PSIS-LOO on Laplace draws, corrected for their being Gaussian."""

import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest
import xarray as xr

import pm_em
from tests.results.test_marginal import gmm, make_data

DATA = make_data(21, 400, means=(-2.5, 2.0))


@pytest.fixture(scope="module")
def fitted():
    model = gmm(DATA)
    em = pm_em.fit(model, random_seed=1, progressbar=False)
    return model, em


def test_loo_of_a_fit_is_the_corrected_loo_of_its_laplace_draws(fitted):
    model, em = fitted
    result = pm_em.loo(em, model=model, draws=500, random_seed=3)
    assert result.approx_posterior
    approx = pm_em.laplace(em, model=model, draws=500, random_seed=3)
    stats = approx["sample_stats"].dataset
    expected = az.loo_approximate_posterior(
        approx, log_p=stats["log_p"], log_q=stats["log_q"], pointwise=True
    )
    assert result.elpd == pytest.approx(expected.elpd, rel=1e-12)
    np.testing.assert_allclose(result.pareto_k, expected.pareto_k)
    # A Laplace result goes in as it is; the same draws give the same numbers.
    again = pm_em.loo(approx)
    assert again.elpd == pytest.approx(result.elpd, rel=1e-12)
    # Against the uncorrected LOO of the same draws: close at n = 400 (the Gaussian is a
    # good posterior here), but not the same computation.
    plain = az.loo(approx, pointwise=True)
    assert not plain.approx_posterior
    assert result.elpd == pytest.approx(plain.elpd, abs=3 * result.se / np.sqrt(400))


def test_loo_reports_pareto_k_honestly(fitted):
    model, em = fitted
    result = pm_em.loo(em, model=model, draws=500, random_seed=3)
    assert result.pareto_k.shape == (400,)
    assert np.isfinite(result.pareto_k).all()
    assert result.warning == bool((result.pareto_k > result.good_k).any())


def test_az_compare_ranks_the_right_number_of_components(fitted):
    model, em = fitted
    with pm.Model() as one:  # one normal for the same data
        mu = pm.Normal("mu", 0.0, 10.0)
        sigma = pm.HalfNormal("sigma", 5.0)
        pm.Normal("y", mu, sigma, observed=DATA)
    with pytest.warns(pm_em.NoLatentWarning):  # one component: plain MAP, and fit says so
        em_one = pm_em.fit(one, progressbar=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Pareto distribution.*")
        loos = {
            "two": pm_em.loo(em, model=model, draws=500, random_seed=3),
            "one": pm_em.loo(em_one, model=one, draws=500, random_seed=3),
        }
    table = az.compare(loos)
    # Bimodal data: two components predict far better than one.
    assert list(table.index) == ["two", "one"]
    assert table.loc["one", "elpd_diff"] < -4 * table.loc["one", "dse"]


def test_loo_of_a_posterior_sample_is_plain_az_loo(fitted):
    model, em = fitted
    approx = pm_em.laplace(em, model=model, draws=300, random_seed=4)
    # A posterior sample without Laplace's densities (as NUTS gives): plain PSIS-LOO.
    sample = xr.DataTree.from_dict(
        {g: approx[g].dataset for g in ("posterior", "log_likelihood", "observed_data")}
    )
    result = pm_em.loo(sample)
    assert not result.approx_posterior
    assert result.elpd == pytest.approx(az.loo(sample, pointwise=True).elpd, rel=1e-12)


def test_loo_errors(fitted):
    _, em = fitted
    single = xr.DataTree.from_dict({"posterior": em["posterior"].dataset})
    with pytest.raises(ValueError, match="holds a single draw"):
        pm_em.loo(single)
    with pytest.raises(ValueError, match="no `posterior` group"):
        pm_em.loo(xr.DataTree())
    approx = pm_em.laplace(em, model=fitted[0], draws=50, random_seed=4)
    no_ll = xr.DataTree.from_dict({"posterior": approx["posterior"].dataset})
    with pytest.raises(ValueError, match="no `log_likelihood` group"):
        pm_em.loo(no_ll)
