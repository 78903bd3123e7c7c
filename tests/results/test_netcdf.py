"""A pm_em result survives ``to_netcdf`` / ``az.from_netcdf`` (the h5netcdf backend)."""

import arviz as az
import numpy as np
import pymc as pm
import pytest
import xarray as xr

import pm_em
from tests.results.test_marginal import gmm, make_data


def _round_trip(tree: xr.DataTree, path) -> xr.DataTree:
    tree.to_netcdf(path)
    return az.from_netcdf(path)


def _assert_same(tree: xr.DataTree, back: xr.DataTree):
    assert set(back.children) == set(tree.children)
    for group in tree.children:
        original, loaded = tree[group].dataset, back[group].dataset
        xr.testing.assert_equal(loaded, original)
        for name in [*original.data_vars, *original.coords]:
            # Booleans, strings, integers keep their dtype (not only their values).
            assert loaded[name].dtype == original[name].dtype, (group, name)
        for key, value in original.attrs.items():
            assert np.array_equal(np.asarray(loaded.attrs[key]), np.asarray(value)), key


@pytest.fixture(scope="module")
def mixture():
    model = gmm(make_data(21, 200))
    return model, pm_em.fit(model, n_init=2, random_seed=1, progressbar=False)


def test_fit_round_trip(mixture, tmp_path):
    _, em = mixture
    stats = em["em_stats"].dataset
    kinds = {stats[v].dtype.kind for v in stats.data_vars}
    assert {"b", "U", "i", "f"} <= kinds  # the dtypes this test is about are present
    _assert_same(em, _round_trip(em, tmp_path / "em.nc"))


def test_laplace_round_trip(mixture, tmp_path):
    model, em = mixture
    approx = pm_em.laplace(em, model=model, draws=50, random_seed=2)
    back = _round_trip(approx, tmp_path / "laplace.nc")
    _assert_same(approx, back)
    # What was read back still feeds ArviZ: LOO on the stored draws (50 draws are too few
    # for PSIS, and ArviZ says so).
    with pytest.warns(UserWarning, match="Pareto distribution"):
        assert pm_em.loo(back).elpd == pytest.approx(pm_em.loo(approx).elpd, rel=1e-12)


def test_missing_data_round_trip(tmp_path):
    x = np.array([2.0, np.nan, 6.0, 8.0, np.nan, 10.0, 12.0])
    with pm.Model(coords={"t": range(x.size)}) as model:
        mu = pm.Flat("mu")
        sigma = pm.HalfFlat("sigma")
        pm.Normal("y", mu, sigma, observed=x, dims="t")
    em = pm_em.fit(model, progressbar=False)
    back = _round_trip(em, tmp_path / "missing.nc")
    _assert_same(em, back)
    # The imputed entries' conditional moments, and the completed data with them.
    lat = back["latent_posterior"].dataset
    assert set(lat.data_vars) == {"y_unobserved", "y_unobserved_sd"}
    np.testing.assert_allclose(back["posterior"]["y"].values.ravel()[[1, 4]], lat["y_unobserved"])
