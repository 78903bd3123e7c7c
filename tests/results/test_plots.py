"""The plots, rendered headless and checked by what they draw (artists, labels, limits)."""

import io

import arviz as az
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pymc as pm
import pytest
import xarray as xr
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from scipy import stats

import pm_em

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(41)
    z = rng.choice(2, size=400, p=[0.4, 0.6])
    x = rng.normal(np.array([-2.0, 2.0])[z], np.array([0.8, 1.0])[z])
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(x.size)}) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        lat = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[lat], sigma=sigma[lat], observed=x, dims="obs")
        em = pm_em.fit(random_seed=1, progressbar=False)
        approx = pm_em.laplace(em, draws=500, random_seed=2)
    FITTED_MODEL["model"] = model
    return em, approx


FITTED_MODEL = {}


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


def _estimate(em):
    return em["posterior"].dataset.squeeze(("chain", "draw"))


def test_plot_mixture_1d_on_a_grid_with_the_model(fitted):
    em, _ = fitted
    fig = pm_em.plot_mixture(em, model=FITTED_MODEL["model"])
    (ax,) = fig.axes
    mixture = next(line for line in ax.lines if line.get_label() == "mixture")
    grid, density = mixture.get_xydata().T
    # A regular grid over the data's range (not the observations themselves).
    np.testing.assert_allclose(np.diff(grid), np.diff(grid)[0], rtol=1e-9)
    x = em["observed_data"]["y"].values
    assert grid[0] < x.min() and grid[-1] > x.max() and grid.size == 400
    post = _estimate(em)
    parts = post["w"].values * stats.norm.pdf(grid[:, None], post["mu"].values, post["sigma"])
    # The model's float32 constants (PyMC) against scipy: 1e-6 relative.
    np.testing.assert_allclose(density, parts.sum(axis=1), rtol=1e-6)
    for k in range(2):
        line = next(line for line in ax.lines if line.get_label() == str(k))
        np.testing.assert_allclose(line.get_ydata(), parts[:, k], rtol=1e-6)
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "component"
    assert sorted(t.get_text() for t in legend.get_texts()) == ["0", "1", "data", "mixture"]
    assert ax.get_xlabel() == "y" and ax.get_ylabel() == "density"


@pytest.fixture(scope="module")
def counts_fit():
    rng = np.random.default_rng(5)
    z = rng.choice(2, size=400, p=[0.4, 0.6])
    y = rng.poisson(np.array([2.0, 9.0])[z])
    with pm.Model(coords={"component": ["low", "high"]}) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        lam = pm.Gamma("lam", 2.0, 0.2, dims="component")
        lat = pm.Categorical("z", p=w, shape=y.size)
        pm.Poisson("y", lam[lat], observed=y)
        em = pm_em.fit(random_seed=1, progressbar=False)
    return model, em, y


def test_plot_mixture_counts_draws_mass_at_the_integers(counts_fit):
    model, em, y = counts_fit
    fig = pm_em.plot_mixture(em, model=model)
    (ax,) = fig.axes
    bars = ax.patches
    centres = np.array([b.get_x() + b.get_width() / 2 for b in bars])
    heights = np.array([b.get_height() for b in bars])
    values, counts = np.unique(y, return_counts=True)
    # One bar per observed value, at the integer, as high as its relative frequency.
    np.testing.assert_allclose(centres, values)
    np.testing.assert_allclose(heights, counts / y.size)
    assert np.isclose(heights.sum(), 1.0)
    mixture = next(line for line in ax.lines if line.get_label() == "mixture")
    k, pmf = mixture.get_xydata().T
    np.testing.assert_array_equal(k, np.arange(y.min(), y.max() + 1))
    post = _estimate(em)
    expected = (post["w"].values * stats.poisson.pmf(k[:, None], post["lam"].values)).sum(1)
    np.testing.assert_allclose(pmf, expected, rtol=1e-6)
    # The mass is a probability, on the same scale as the bars (not a density histogram).
    assert ax.get_ylabel() == "probability"
    assert abs(pmf.sum() - 1.0) < 0.01
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert labels == {"low", "high", "mixture", "data (relative frequency)"}


def test_plot_mixture_counts_without_the_model(counts_fit):
    _, em, y = counts_fit
    fig = pm_em.plot_mixture(em)  # no model: the mass at the observed values only
    (ax,) = fig.axes
    mixture = next(line for line in ax.lines if line.get_label() == "mixture")
    k, pmf = mixture.get_xydata().T
    np.testing.assert_array_equal(k, np.unique(y))
    loglik = em["log_likelihood"]["y"].values.ravel()
    first = [int(np.flatnonzero(y == v)[0]) for v in k]
    np.testing.assert_allclose(pmf, np.exp(loglik[first]), rtol=1e-12)


@pytest.fixture(scope="module")
def fit_2d():
    rng = np.random.default_rng(8)
    z = rng.choice(2, size=300, p=[0.4, 0.6])
    means = np.array([[-2.0, 0.0], [2.5, 1.5]])
    y = means[z] + rng.normal(size=(300, 2)) @ np.array([[1.0, 0.0], [0.5, 0.7]])
    coords = {"component": ["left", "right"], "axis": ["width", "height"], "obs": range(300)}
    with pm.Model(coords=coords) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Flat("mu", dims=("component", "axis"))
        cov = pm.Flat("cov", shape=(2, 2, 2), initval=np.repeat(np.cov(y.T)[None], 2, axis=0))
        lat = pm.Categorical("z", p=w, dims="obs")
        pm.MvNormal("y", mu=mu[lat], cov=cov[lat], observed=y, dims=("obs", "axis"))
        em = pm_em.fit(random_seed=1, progressbar=False)
    return model, em, y


def test_plot_mixture_2d_smooth_contours_in_the_model_coords(fit_2d):
    model, em, y = fit_2d
    fig = pm_em.plot_mixture(em, model=model)
    (ax,) = fig.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("width", "height")
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "component"
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:2] == ["left", "right"] and "regions" in texts[2] and len(texts) == 3
    (contours,) = [c for c in ax.collections if isinstance(c, ContourSet)]
    assert len(contours.levels) == 4
    # Smooth: each level is at most one closed curve per component (no ragged pieces),
    # each with many vertices.
    for path in contours.get_paths():
        pieces = [p for p in path.to_polygons(closed_only=False) if len(p) > 2]
        assert 1 <= len(pieces) <= 2
        assert all(len(p) > 30 for p in pieces)
    # The levels are densities of the fitted mixture: the innermost lies below its peak.
    post = _estimate(em)
    peak = max(
        float(
            (
                post["w"].values
                * np.array(
                    [
                        stats.multivariate_normal.pdf(post["mu"].values[j], m, c)
                        for m, c in zip(post["mu"].values, post["cov"].values, strict=True)
                    ]
                )
            ).sum()
        )
        for j in range(2)
    )
    assert contours.levels[-1] < peak
    # The axes cover the data.
    assert ax.get_xlim()[0] <= y[:, 0].min() and ax.get_xlim()[1] >= y[:, 0].max()


def test_plot_mixture_refuses_covariates():
    rng = np.random.default_rng(9)
    t = np.linspace(0, 1, 200)
    z = rng.choice(2, size=200)
    y = np.where(z == 0, -2.0, 2.0) + 3.0 * t + rng.normal(0, 0.5, 200)
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        slope = pm.Normal("slope", 0.0, 10.0)
        lat = pm.Categorical("z", p=w, shape=200)
        pm.Normal("y", mu=mu[lat] + slope * t, sigma=0.5, observed=y)
        em = pm_em.fit(random_seed=1, progressbar=False)
    with pytest.raises(ValueError, match="differ between its elements"):
        pm_em.plot_mixture(em, model=model)


def test_plot_em_forest_draws_em_on_top(fitted):
    em, approx = fitted
    draws = approx["posterior"].dataset.isel(chain=0)
    halves = [draws.isel(draw=slice(0, 250)), draws.isel(draw=slice(250, 500))]
    sample = xr.concat(
        [h.assign_coords(draw=np.arange(250)) for h in halves], dim="chain"
    ).transpose("chain", "draw", ...)
    swapped = az.convert_to_datatree(sample.isel(component=[1, 0]).assign_coords(component=[0, 1]))
    fig = pm_em.plot_em_forest(em, swapped, laplace_idata=approx, var_names=["mu", "sigma"])
    panels = [ax for ax in fig.axes if ax.get_yticklabels()]
    assert len(panels) == 2
    ax = panels[0]  # mu
    assert [t.get_text() for t in ax.get_yticklabels()] == ["mu[0]", "mu[1]"]
    em_line = next(line for line in ax.lines if line.get_marker() == "D")
    post_line = next(line for line in ax.lines if line.get_marker() == "o")
    em_mu = em["posterior"]["mu"].values.ravel()
    # Rows are the posterior's components: row mu[0] shows EM's component 1.
    np.testing.assert_allclose(em_line.get_xdata(), em_mu[[1, 0]])
    np.testing.assert_allclose(post_line.get_xdata(), sample["mu"].mean(("chain", "draw"))[[1, 0]])
    # EM sits above the posterior's mark on every row, and is drawn over it.
    assert np.all(np.asarray(em_line.get_ydata()) > np.asarray(post_line.get_ydata()))
    assert em_line.get_zorder() > post_line.get_zorder()
    # The thick red bars are the Laplace HDI of the aligned components.
    thick = [c for c in ax.collections if np.max(c.get_linewidths()) > 3]
    segments = np.array([s[:, 0] for s in thick[0].get_segments()])
    hdi = az.hdi(approx["posterior"]["mu"].isel(component=[1, 0]), prob=0.94)
    np.testing.assert_allclose(segments, hdi.values, rtol=1e-12)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["EM estimate", "Laplace 94% HDI", "NUTS mean", "NUTS 94% HDI"]
    fig.savefig(io.BytesIO(), format="png")


def test_plot_em_forest_without_a_posterior(fitted):
    em, approx = fitted
    fig = pm_em.plot_em_forest(em, laplace_idata=approx)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["EM estimate", "Laplace 94% HDI"]
    assert len([ax for ax in fig.axes if ax.get_yticklabels()]) == 3  # w, mu, sigma
