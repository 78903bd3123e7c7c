"""Headless smoke tests of the plots, with a few checks of what they draw."""

import arviz as az
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pymc as pm
import pytest
import xarray as xr
from matplotlib.figure import Figure
from scipy import stats

import pm_em

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(41)
    z = rng.choice(2, size=400, p=[0.4, 0.6])
    x = rng.normal(np.array([-2.0, 2.0])[z], np.array([0.8, 1.0])[z])
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(x.size)}):
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        lat = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[lat], sigma=sigma[lat], observed=x, dims="obs")
        em = pm_em.fit(random_seed=1, progressbar=False)
        approx = pm_em.laplace(em, draws=500, random_seed=2)
    return em, approx


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_convergence(fitted, tmp_path):
    em, _ = fitted
    fig = pm_em.plot_convergence(em)
    assert isinstance(fig, Figure)
    left = fig.axes[0]
    np.testing.assert_array_equal(left.lines[0].get_ydata(), em["em_stats"]["log_posterior"])
    fig.savefig(tmp_path / "convergence.png")
    assert (tmp_path / "convergence.png").stat().st_size > 0


def test_plot_mixture_1d(fitted, tmp_path):
    em, _ = fitted
    fig = pm_em.plot_mixture(em)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    mixture = next(line for line in ax.lines if line.get_label() == "mixture")
    y, density = mixture.get_xydata().T
    # Oracle: the mixture density at the estimate, written out with scipy.
    post = em["posterior"].dataset.squeeze(("chain", "draw"))
    expected = (
        post["w"].values * stats.norm.pdf(y[:, None], post["mu"].values, post["sigma"].values)
    ).sum(axis=1)
    np.testing.assert_allclose(density, expected, rtol=1e-10)
    fig.savefig(tmp_path / "mixture.png")


def test_plot_mixture_2d(tmp_path):
    # plot_mixture reads only the DataTree: a hand-made 2-D mixture "fit".
    rng = np.random.default_rng(3)
    means = np.array([[-2.0, 0.0], [2.0, 1.0]])
    z = rng.choice(2, size=300)
    y = means[z] + rng.normal(size=(300, 2))
    log_joint = np.log(0.5) + np.stack(
        [stats.multivariate_normal.logpdf(y, m, np.eye(2)) for m in means], axis=1
    )
    log_lik = np.logaddexp(log_joint[:, 0], log_joint[:, 1])
    resp = np.exp(log_joint - log_lik[:, None])
    em = xr.DataTree.from_dict(
        {
            "latent_posterior": xr.Dataset({"z": (("obs", "z_support"), resp)}),
            "log_likelihood": xr.Dataset({"y": (("chain", "draw", "obs"), log_lik[None, None])}),
            "observed_data": xr.Dataset({"y": (("obs", "coord"), y)}),
        }
    )
    fig = pm_em.plot_mixture(em)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.collections) >= 3  # two scatters and the contours
    fig.savefig(tmp_path / "mixture2d.png")


def test_plot_mixture_errors(fitted):
    em, _ = fitted
    with pytest.raises(ValueError, match="Latent 'q' is not in"):
        pm_em.plot_mixture(em, latent="q")


def test_plot_em_posterior(fitted, tmp_path):
    em, approx = fitted
    # A stand-in for NUTS: the Laplace draws split into two chains, components swapped, so
    # the plot must align EM with it.
    draws = approx["posterior"].dataset.isel(chain=0)
    halves = [draws.isel(draw=slice(0, 250)), draws.isel(draw=slice(250, 500))]
    sample = xr.concat(
        [h.assign_coords(draw=np.arange(250)) for h in halves], dim="chain"
    ).transpose("chain", "draw", ...)
    swapped = sample.isel(component=[1, 0]).assign_coords(component=[0, 1])
    pc = pm_em.plot_em_posterior(
        em, az.convert_to_datatree(swapped), laplace_idata=approx, var_names=["mu", "sigma"]
    )
    fig = pc.viz["figure"].item()
    assert len([ax for ax in fig.axes if ax.has_data()]) == 4
    # The EM line on the panel of posterior component 0 is EM's component 1.
    em_mu = em["posterior"]["mu"].values.ravel()
    lines = [
        line.get_xdata()[0]
        for ax in fig.axes
        for line in ax.lines
        if line.get_linestyle() == "--" and np.isclose(line.get_xdata()[0], em_mu).any()
    ]
    assert np.isclose(lines[0], em_mu[1])
    pc.savefig(tmp_path / "em_vs_posterior.png")
    assert (tmp_path / "em_vs_posterior.png").stat().st_size > 0
