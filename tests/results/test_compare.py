"""`align_components` and `compare`: label switching undone, then a tidy table."""

import itertools
import warnings

import arviz as az
import numpy as np
import pymc as pm
import pytest
import xarray as xr

import pm_em

MU = np.array([-3.0, 0.5, 4.0])
SIGMA = np.array([1.0, 0.6, 1.5])
W = np.array([0.3, 0.5, 0.2])
SD = {"mu": 0.08, "sigma": 0.05, "w": 0.02}  # posterior sds of the synthetic sample


def with_latent(tree, n_obs=5, n_support=3):
    """Add a `pm_em.fit`-like latent_posterior group (no chain/draw)."""
    resp = np.full((n_obs, n_support), 1 / n_support)
    latent = xr.Dataset({"z": (("obs", "z_support"), resp)})
    return xr.DataTree.from_dict(
        {"posterior": tree["posterior"].dataset, "latent_posterior": latent}
    )


def em_tree(mu=MU, sigma=SIGMA, w=W):
    """An EM-like DataTree: chain=draw=1, with a latent_posterior of 3 components."""
    tree = az.from_dict(
        {
            "posterior": {
                "mu": np.asarray(mu)[None, None],
                "sigma": np.asarray(sigma)[None, None],
                "w": np.asarray(w)[None, None],
                "gap": np.array([[1.0]]),
            },
        },
        dims={"mu": ["component"], "sigma": ["component"], "w": ["component"]},
        coords={"component": ["a", "b", "c"]},
    )
    return with_latent(tree)


def posterior_tree(order, seed=0, chains=2, draws=400, chain_orders=None):
    """A posterior sample around the true values, components listed in ``order``."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, value in (("mu", MU), ("sigma", SIGMA), ("w", W)):
        per_chain = []
        for c in range(chains):
            o = np.asarray(chain_orders[c] if chain_orders else order)
            per_chain.append(rng.normal(value[o], SD[name], size=(draws, 3)))
        data[name] = np.stack(per_chain)
    data["gap"] = rng.normal(1.0, 0.1, size=(chains, draws))
    return az.from_dict(
        {"posterior": data},
        dims={"mu": ["component"], "sigma": ["component"], "w": ["component"]},
        coords={"component": ["a", "b", "c"]},
    )


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_alignment_recovers_a_known_permutation(order):
    # The posterior lists component order[k] of EM as its component k: matching must find
    # exactly that permutation (the components are 10+ sds apart, so there is no doubt).
    alignment = pm_em.align_components(em_tree(), posterior_tree(order))
    np.testing.assert_array_equal(alignment["component"], order)


def test_compare_applies_the_permutation_and_says_so():
    order = (2, 0, 1)
    table = pm_em.compare(em_tree(), posterior_tree(order))
    assert table.attrs["alignment"] == {"component": [2, 0, 1]}
    # Row mu[a] of the posterior is EM's component c.
    assert table.loc["mu[a]", "em_label"] == "mu[c]"
    assert table.loc["mu[a]", "em"] == MU[2]
    np.testing.assert_allclose(table.loc[["mu[a]", "mu[b]", "mu[c]"], "em"], MU[list(order)])
    # After alignment the EM values sit in the middle of the posterior.
    assert (table["std_diff"].abs() < 4).all()
    assert table.loc["gap", "em_label"] == "gap"


def test_compare_columns_against_numpy():
    rng = np.random.default_rng(4)
    post = posterior_tree((0, 1, 2), seed=5)
    em = em_tree(mu=MU + rng.normal(0, 0.05, 3))
    table = pm_em.compare(em, post, var_names=["mu"])
    assert list(table.columns) == [
        "em",
        "mean",
        "sd",
        "hdi_3%",
        "hdi_97%",
        "std_diff",
        "in_hdi",
        "em_label",
    ]
    draws = post["posterior"]["mu"].values.reshape(-1, 3)
    np.testing.assert_allclose(table["mean"], draws.mean(0), rtol=1e-12)
    np.testing.assert_allclose(table["sd"], draws.std(0), rtol=1e-12)
    np.testing.assert_allclose(
        table["std_diff"], (em["posterior"]["mu"].values.ravel() - draws.mean(0)) / draws.std(0)
    )
    # Oracle HDI: the shortest interval holding ceil(0.94 n) sorted draws. ArviZ's
    # "nearest" method picks the same draws, up to one draw at either end.
    n = draws.shape[0]
    keep = int(np.ceil(0.94 * n))
    for k in range(3):
        s = np.sort(draws[:, k])
        widths = s[keep - 1 :] - s[: n - keep + 1]
        i = int(np.argmin(widths))
        spacing = np.max(np.diff(s[max(i - 1, 0) : i + keep + 1]))
        assert abs(table["hdi_3%"].iloc[k] - s[i]) <= spacing
        assert abs(table["hdi_97%"].iloc[k] - s[i + keep - 1]) <= spacing
    inside = (table["em"] >= table["hdi_3%"]) & (table["em"] <= table["hdi_97%"])
    assert (table["in_hdi"] == inside).all()


def test_label_switching_between_chains_warns():
    post = posterior_tree(None, chain_orders=[(0, 1, 2), (1, 0, 2)])
    with pytest.warns(pm_em.LabelSwitchingWarning, match="label the 'component'"):
        pm_em.compare(em_tree(), post)


def _two_dim_trees(mu_dim="component", with_weights=False, seed=0):
    """EM and posterior trees where two dims (mu_dim, "feature") both have length 2."""
    em_vars = {"mu": np.array([[[-1.0, 3.0]]]), "beta": np.full((1, 1, 2), 0.2)}
    dims = {"mu": [mu_dim], "beta": ["feature"], "w": [mu_dim]}
    rng = np.random.default_rng(seed)
    post_vars = {
        "mu": rng.normal([3.0, -1.0], 0.1, size=(2, 50, 2)),  # components swapped
        "beta": rng.normal(0.2, 0.1, size=(2, 50, 2)),
    }
    if with_weights:
        em_vars["w"] = np.array([[[0.3, 0.7]]])
        post_vars["w"] = np.broadcast_to([0.7, 0.3], (2, 50, 2)).copy()
    em = with_latent(az.from_dict({"posterior": em_vars}, dims=dims), n_support=2)
    return em, az.from_dict({"posterior": post_vars}, dims=dims)


def test_component_dim_is_explicit_when_ambiguous():
    # Neither dim carries weights nor is named like "component": the user must say.
    em, post = _two_dim_trees(mu_dim="group")
    with pytest.raises(ValueError, match="component axis is ambiguous"):
        pm_em.compare(em, post)
    table = pm_em.compare(em, post, component_dim="group")
    assert table.attrs["alignment"] == {"group": [1, 0]}
    table = pm_em.compare(em, post, component_dim=[])
    assert table.attrs["alignment"] == {}


@pytest.mark.parametrize(
    ("mu_dim", "with_weights"),
    [
        ("group", True),  # the dim the weights (a simplex) live on
        ("component", False),  # no weights variable: the dim named like "component"
        ("mixture_component", True),
    ],
)
def test_component_dim_inferred_from_the_weights_or_the_name(mu_dim, with_weights):
    em, post = _two_dim_trees(mu_dim=mu_dim, with_weights=with_weights)
    assert {k: v.tolist() for k, v in pm_em.align_components(em, post).items()} == {mu_dim: [1, 0]}
    table = pm_em.compare(em, post)
    # Posterior component 0 (mean 3) is matched with EM's component 1 (mu = 3).
    assert table.loc["mu[0]", "em"] == 3.0
    assert table.loc["mu[0]", "em_label"] == "mu[1]"


def test_compare_errors_name_the_variable():
    with pytest.raises(ValueError, match="Variable 'nu' is not in the posterior of `em_idata`"):
        pm_em.compare(em_tree(), posterior_tree((0, 1, 2)), var_names=["nu"])
    with pytest.raises(ValueError, match="an EM estimate has one of each"):
        pm_em.compare(posterior_tree((0, 1, 2)), posterior_tree((0, 1, 2)))
    with pytest.raises(ValueError, match="hdi_prob"):
        pm_em.compare(em_tree(), posterior_tree((0, 1, 2)), hdi_prob=1.5)


def test_alignment_of_a_real_fit():
    # EM on an unordered model, and a "posterior" made of its own Laplace draws with the
    # components relabelled: the known relabelling must come back.
    rng = np.random.default_rng(7)
    z = rng.choice(3, size=600, p=W)
    x = rng.normal(MU[z], SIGMA[z])
    with pm.Model(coords={"component": ["a", "b", "c"]}):
        w = pm.Dirichlet("w", a=np.ones(3), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        lat = pm.Categorical("z", p=w, shape=len(x))
        pm.Normal("y", mu=mu[lat], sigma=sigma[lat], observed=x)
        em = pm_em.fit(random_seed=3, progressbar=False)
        approx = pm_em.laplace(em, draws=400, random_seed=4)
    order = [1, 2, 0]
    relabelled = approx["posterior"].dataset.isel(component=order)
    relabelled = relabelled.assign_coords(component=["a", "b", "c"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alignment = pm_em.align_components(em, az.convert_to_datatree(relabelled))
    np.testing.assert_array_equal(alignment["component"], order)
