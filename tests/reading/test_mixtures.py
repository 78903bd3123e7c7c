"""Marginal mixtures read as implicit latents: the log joint, the layout, selection, refusals.

The oracle of every log joint is PyMC's own log density of the mixture
(``model.logp(vars=[y], sum=False)``): summed over the components, the latent's joint must
give it back exactly, at random parameter points. Component densities are also checked
against scipy where PyMC's mixture formula differs from a plain sum (the hurdles).
"""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from pymc.pytensorf import compile as compile_pymc
from scipy import stats
from scipy.special import logsumexp

import pm_em
from pm_em.compiling import CHECK_MODE
from pm_em.reading.build import build_problem

N = 60


def _data(seed=0):
    rng = np.random.default_rng(seed)
    z = rng.random(N) < 0.4
    return {
        "x": np.where(z, rng.normal(-2.0, 1.0, N), rng.normal(2.5, 1.5, N)),
        "pos": np.where(z, rng.gamma(2.0, 1.0, N), rng.lognormal(1.0, 0.4, N)),
        "counts": np.where(z, rng.poisson(1.5, N), rng.poisson(7.0, N)),
        "zeros": np.where(rng.random(N) < 0.3, 0, rng.poisson(3.0, N)),
        "zero_pos": np.where(rng.random(N) < 0.3, 0.0, rng.gamma(1.5, 2.0, N)),
        "rows": np.where(
            z[:, None], rng.normal([-2, 0], 1, (N, 2)), rng.normal([2, 2], 0.7, (N, 2))
        ),
    }


def _weights():
    return pm.Dirichlet("w", np.ones(2), dims="component")


def _normal_pair():
    mu = pm.Normal("mu", 0.0, 5.0, dims="component")
    sigma = pm.HalfNormal("sigma", 3.0, dims="component")
    return mu, sigma


# Each variant declares its mixture "y" (with data from `_data`) inside a model with coords.
VARIANTS = {
    "normal_mixture": lambda d: pm.NormalMixture("y", _weights(), *_normal_pair(), observed=d["x"]),
    "mixed_families": lambda d: pm.Mixture(
        "y",
        pm.Dirichlet("w", np.ones(3)),
        [
            pm.Normal.dist(pm.Normal("m0", 0, 5), 1.0),
            pm.StudentT.dist(nu=4, mu=pm.Normal("m1", 0, 5), sigma=pm.HalfNormal("s1", 2)),
            pm.Laplace.dist(pm.Normal("m2", 0, 5), 2.0),
        ],
        observed=d["x"],
    ),
    "batched_normal": lambda d: pm.Mixture(
        "y", _weights(), pm.Normal.dist(*_normal_pair(), shape=(N, 2)), observed=d["x"]
    ),
    "weights_per_observation": lambda d: pm.NormalMixture(
        "y",
        pm.math.stack(
            [1 - (t := pm.math.sigmoid(pm.Normal("b", 0, 2) * np.linspace(-2, 2, N))), t], -1
        ),
        *_normal_pair(),
        observed=d["x"],
    ),
    "gamma_lognormal": lambda d: pm.Mixture(
        "y",
        _weights(),
        [
            pm.Gamma.dist(pm.HalfNormal("a", 3), pm.HalfNormal("b", 3)),
            pm.LogNormal.dist(pm.Normal("m", 0, 2), pm.HalfNormal("s", 2)),
        ],
        observed=d["pos"],
    ),
    "poisson_negbinomial": lambda d: pm.Mixture(
        "y",
        _weights(),
        [
            pm.Poisson.dist(pm.HalfNormal("lam", 5)),
            pm.NegativeBinomial.dist(mu=pm.HalfNormal("m", 5), alpha=pm.HalfNormal("al", 5)),
        ],
        observed=d["counts"],
    ),
    "mvnormal_list": lambda d: pm.Mixture(
        "y",
        _weights(),
        [
            pm.MvNormal.dist(
                (mu := pm.Normal("mu", 0, 5, shape=(2, 2)))[0],
                chol=pm.LKJCholeskyCov("L", n=2, eta=2, sd_dist=pm.HalfNormal.dist(2))[0],
            ),
            pm.MvNormal.dist(mu[1], cov=np.array([[1.0, 0.3], [0.3, 0.8]])),
        ],
        observed=d["rows"],
    ),
    "mvnormal_batched": lambda d: pm.Mixture(
        "y",
        _weights(),
        pm.MvNormal.dist(pm.Normal("mu", 0, 5, shape=(2, 2)), cov=np.eye(2), shape=(N, 2, 2)),
        observed=d["rows"],
    ),
    "zero_inflated_poisson": lambda d: pm.ZeroInflatedPoisson(
        "y", pm.Beta("psi", 2, 2), pm.HalfNormal("lam", 5), observed=d["zeros"]
    ),
    "zero_inflated_negbinomial": lambda d: pm.ZeroInflatedNegativeBinomial(
        "y",
        pm.Beta("psi", 2, 2),
        mu=pm.HalfNormal("m", 5),
        alpha=pm.HalfNormal("a", 5),
        observed=d["zeros"],
    ),
    "zero_inflated_binomial": lambda d: pm.ZeroInflatedBinomial(
        "y", pm.Beta("psi", 2, 2), n=20, p=pm.Beta("p", 2, 2), observed=d["zeros"]
    ),
    "hurdle_poisson": lambda d: pm.HurdlePoisson(
        "y", pm.Beta("psi", 2, 2), pm.HalfNormal("lam", 5), observed=d["zeros"]
    ),
    "hurdle_negbinomial": lambda d: pm.HurdleNegativeBinomial(
        "y",
        pm.Beta("psi", 2, 2),
        mu=pm.HalfNormal("m", 5),
        alpha=pm.HalfNormal("a", 5),
        observed=d["zeros"],
    ),
    "hurdle_gamma": lambda d: pm.HurdleGamma(
        "y",
        pm.Beta("psi", 2, 2),
        alpha=pm.HalfNormal("a", 2),
        beta=pm.HalfNormal("b", 2),
        observed=d["zero_pos"],
    ),
    # alpha = 1: the Gamma density at 0 is finite (beta), and must not count at y = 0.
    "hurdle_exponential": lambda d: pm.HurdleGamma(
        "y", pm.Beta("psi", 2, 2), alpha=1.0, beta=pm.HalfNormal("b", 2), observed=d["zero_pos"]
    ),
    "hurdle_lognormal": lambda d: pm.HurdleLogNormal(
        "y",
        pm.Beta("psi", 2, 2),
        mu=pm.Normal("m", 0, 2),
        sigma=pm.HalfNormal("s", 2),
        observed=d["zero_pos"],
    ),
    "entries_of_a_matrix": lambda d: pm.NormalMixture(
        "y", _weights(), *_normal_pair(), observed=d["rows"]
    ),
}


def _model(variant, seed=0):
    with pm.Model(coords={"component": ["a", "b"]}) as model:
        VARIANTS[variant](_data(seed))
    return model


def _pymc_and_ours(model):
    """Compile PyMC's pointwise mixture density and ours (the latent summed out), of x."""
    problem = build_problem(model)
    (latent,) = problem.latents
    ours = compile_pymc([problem.x], pt.logsumexp(latent.log_joint, axis=-1), mode=CHECK_MODE)
    (ref,) = model.logp(vars=[model["y"]], sum=False)
    pymc = compile_pymc(model.value_vars, ref, mode=CHECK_MODE, on_unused_input="ignore")
    return problem, latent, ours, pymc


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_log_joint_sums_to_pymcs_mixture_density(variant):
    model = _model(variant)
    problem, latent, ours, pymc = _pymc_and_ours(model)
    rng = np.random.default_rng(1)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    for _ in range(3):
        x = start + rng.normal(0.0, 0.5, size=start.shape)
        expected = np.asarray(pymc(**problem.from_x(x)))
        got = np.asarray(ours(x))
        # Two graphs of the same sums (PyMC's logsumexp and ours): round-off only, on
        # log densities of order 1-10 (1e-12 is ~1e3 ulp).
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # One latent element per observed value (per row for MvNormal components).
    expected_shape = (N, 2) if variant == "entries_of_a_matrix" else (N,)
    assert latent.shape == expected_shape
    assert latent.support.size == (3 if variant == "mixed_families" else 2)


@pytest.mark.parametrize(
    ("variant", "kind", "support_dim", "per_element"),
    [
        ("normal_mixture", "Mixture", "component", 1),
        ("mixed_families", "Mixture", "y_component_support", 1),
        ("mvnormal_list", "Mixture", "component", 2),
        ("zero_inflated_poisson", "ZeroInflated", "y_component_support", 1),
        ("hurdle_gamma", "Hurdle", "y_component_support", 1),
    ],
)
def test_latent_layout(variant, kind, support_dim, per_element):
    (latent,) = build_problem(_model(variant)).latents
    assert latent.name == "y_component"
    assert latent.kind == kind
    assert latent.support_dim == support_dim
    assert latent.dims == ("y_dim_0",)  # ArviZ's name for y's axis: it lines up with y
    assert latent.observed == ("y",) and latent.dependents == ("y",)
    assert latent.mixture_of == "y"
    assert latent.values_per_element == per_element


def test_element_dims_are_the_observed_variables():
    x = _data()["x"]
    with pm.Model(coords={"component": ["a", "b"], "obs": range(N)}) as model:
        pm.NormalMixture("y", _weights(), *_normal_pair(), observed=x, dims="obs")
    (latent,) = build_problem(model).latents
    assert latent.dims == ("obs",) and latent.support_dim == "component"


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_hurdle_at_zero_is_the_zero_component_only(alpha):
    """At y = 0 a hurdle is its zero part alone, whatever the Gamma density there.

    At alpha = 0.5 PyMC's Gamma log density at 0 is -inf, at alpha = 1 it is finite (log b):
    a plain logsumexp over the components would then count it.
    """
    y = _data()["zero_pos"]
    with pm.Model() as model:
        pm.HurdleGamma(
            "y", pm.Beta("psi", 2, 2), alpha=alpha, beta=pm.HalfNormal("b", 2), observed=y
        )
    problem = build_problem(model)
    (latent,) = problem.latents
    fn = compile_pymc([problem.x], latent.log_joint, mode=CHECK_MODE)
    psi, b = 0.7, 1.3
    table = np.asarray(
        fn(problem.to_x({"psi_logodds__": np.log(psi / (1 - psi)), "b_log__": np.log(b)}))
    )
    zero = y == 0
    # scipy oracle of PyMC's hurdle: log(1 - psi) at 0, log(psi) + Gamma logpdf elsewhere.
    gamma = stats.gamma.logpdf(y[~zero], a=alpha, scale=1 / b)
    np.testing.assert_allclose(table[zero, 0], np.log(1 - psi), rtol=1e-14)
    assert np.all(np.isneginf(table[zero, 1])) and np.all(np.isneginf(table[~zero, 0]))
    # PyTensor's gammaln(0.5) is 1.66e-8 off scipy's (measured), so at alpha = 0.5 the two
    # log densities differ by that constant; 1e-7 absolute still tells any structural error
    # (a missing log psi, a wrong component) by orders of magnitude.
    np.testing.assert_allclose(table[~zero, 1], np.log(psi) + gamma, rtol=0, atol=1e-7)


def test_fit_leaves_the_users_model_as_it_was():
    model = _model("normal_mixture")
    before = (
        list(model.named_vars),
        [v.name for v in model.value_vars],
        list(model.free_RVs),
        list(model.observed_RVs),
        dict(model.rvs_to_values),
    )
    logp = model.compile_logp()
    point = model.initial_point()
    value = float(logp(point))
    pm_em.fit(model, progressbar=False, random_seed=0)
    after = (
        list(model.named_vars),
        [v.name for v in model.value_vars],
        list(model.free_RVs),
        list(model.observed_RVs),
        dict(model.rvs_to_values),
    )
    assert before == after
    assert float(model.compile_logp()(point)) == value


@pytest.mark.parametrize("name", ["y_component", "y"])
def test_latent_selects_the_mixture_by_either_name(name):
    problem = build_problem(_model("normal_mixture"), latent=[name])
    assert [lat.name for lat in problem.latents] == ["y_component"]


def test_a_mixture_left_out_of_latent_keeps_pymcs_density():
    """latent names the explicit latent only: the mixture stays a likelihood term."""
    d = _data()
    with pm.Model(coords={"component": ["a", "b"]}) as model:
        mu, sigma = _normal_pair()
        w = _weights()
        z = pm.Categorical("z", w, shape=N)
        pm.Normal("x", mu[z], sigma[z], observed=d["x"])
        pm.NormalMixture("y", w, mu, sigma, observed=d["x"][::-1])
    problem = build_problem(model, latent=["z"])
    assert [lat.name for lat in problem.latents] == ["z"]
    assert list(problem.log_lik_rest) == ["y"]
    both = build_problem(model)
    assert [lat.name for lat in both.latents] == ["z", "y_component"]


def test_unknown_latent_name_is_refused():
    with pytest.raises(ValueError, match="`latent` names 'y_components', which is not a variable"):
        build_problem(_model("normal_mixture"), latent=["y_components"])


@pytest.mark.parametrize(
    "make_weights",
    [lambda: np.array([0.3, 0.3]), lambda: pm.HalfNormal("w", 1.0, shape=2)],
    ids=["constant", "halfnormal"],
)
def test_weights_that_are_not_a_distribution_are_refused(make_weights):
    with pm.Model() as model:
        pm.NormalMixture("y", make_weights(), np.array([0.0, 1.0]), 1.0, observed=_data()["x"])
    with pytest.raises(ValueError, match=r"weights of mixture 'y' are not probabilities summing"):
        build_problem(model)


def test_latent_name_taken_by_a_model_variable_is_refused():
    with pm.Model(coords={"component": ["a", "b"]}) as model:
        pm.Normal("y_component", 0, 1)
        pm.NormalMixture("y", _weights(), *_normal_pair(), observed=_data()["x"])
    with pytest.raises(ValueError, match=r"variable named 'y_component'.*Rename that variable"):
        build_problem(model)


def test_explicit_latent_inside_a_mixture_is_refused():
    with pm.Model(coords={"component": ["a", "b"]}) as model:
        mu, _ = _normal_pair()
        z = pm.Bernoulli("z", 0.5, shape=N)
        shift = pm.math.stack([mu[z], mu[z] + 1.0], axis=-1)
        pm.NormalMixture("y", _weights(), shift, 1.0, observed=_data()["x"])
    with pytest.raises(ValueError, match="'y' depends on both latent 'z' and latent 'y_component'"):
        build_problem(model)


# --------------------------------------------------------------------------- missing values


def _with_nan(x, rate, seed):
    rng = np.random.default_rng(seed)
    x = np.array(x, dtype="float64")
    x[rng.random(x.shape) < rate] = np.nan
    return x


def test_missing_entries_keep_their_weights_and_observed_ones_pymcs_density():
    x = _with_nan(_data()["x"], 0.2, seed=3)
    with pm.Model(coords={"component": ["a", "b"]}) as model:
        pm.NormalMixture("y", _weights(), *_normal_pair(), observed=x)
    problem = build_problem(model)
    (latent,) = problem.latents
    assert latent.shape == (N,) and latent.mixture_of == "y_observed"
    fn = compile_pymc([problem.x], latent.log_joint, mode=CHECK_MODE)
    (ref,) = model.logp(vars=[model["y_observed"]], sum=False)
    pymc = compile_pymc(model.value_vars, ref, mode=CHECK_MODE, on_unused_input="ignore")
    w = compile_pymc([problem.x], problem.constrained["w"], mode=CHECK_MODE)
    rng = np.random.default_rng(4)
    for _ in range(3):
        xx = problem.start + rng.normal(0.0, 0.5, size=problem.start.shape)
        table = np.asarray(fn(xx))
        missing = np.isnan(x)
        # A missing entry integrates to 1 under every component: only its weight is left.
        np.testing.assert_allclose(
            table[missing], np.log(np.broadcast_to(w(xx), (missing.sum(), 2))), rtol=1e-14
        )
        point = {**model.initial_point(), **problem.from_x(xx)}
        np.testing.assert_allclose(
            logsumexp(table[~missing], axis=-1), pymc(**point), rtol=0, atol=1e-12
        )


def _mvnormal_nan_model(X, pattern_rows=None):
    """The MvNormal mixture; with ``pattern_rows``, one PyMC mixture per missingness pattern.

    The per-pattern model is the oracle: its mixture components are the marginal Gaussians
    of the observed coordinates, written with PyMC's own MvNormal, so its density is the
    observed-data density with the missing entries integrated out.
    """
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0, 3, shape=(2, 3))
        chol, _, _ = pm.LKJCholeskyCov(
            "L", n=3, eta=2, sd_dist=pm.Exponential.dist(1.0), compute_corr=True
        )
        covs = [chol @ chol.T, 2.0 * chol @ chol.T]
        if pattern_rows is None:
            pm.Mixture("y", w, [pm.MvNormal.dist(mu[k], covs[k]) for k in range(2)], observed=X)
            return model
        for j, (cols, rows) in enumerate(pattern_rows):
            comps = [pm.MvNormal.dist(mu[k][cols], covs[k][cols][:, cols]) for k in range(2)]
            pm.Mixture(f"y{j}", w, comps, observed=X[np.ix_(rows, cols)])
    return model


def test_missing_entries_inside_mvnormal_rows_match_a_per_pattern_oracle():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(80, 3))
    X[rng.random(X.shape) < 0.25] = np.nan
    X[7] = np.nan  # one fully missing row: it keeps its weights
    model = _mvnormal_nan_model(X)
    patterns = {}
    for i, row in enumerate(np.isnan(X)):
        patterns.setdefault(tuple(row), []).append(i)
    pattern_rows = [(np.flatnonzero(~np.array(p)), r) for p, r in patterns.items() if not all(p)]
    oracle = _mvnormal_nan_model(X, pattern_rows)
    problem = build_problem(model)
    (latent,) = problem.latents
    assert latent.shape == (80,) and latent.values_per_element == 3
    ours = compile_pymc([problem.x], pt.logsumexp(latent.log_joint, -1), mode=CHECK_MODE)
    ref = oracle.compile_logp(vars=oracle.observed_RVs, jacobian=False, mode=CHECK_MODE)
    for _ in range(3):
        xx = problem.start + rng.normal(0.0, 0.3, size=problem.start.shape)
        point = problem.from_x(xx)
        got = np.asarray(ours(xx))
        assert got[7] == pytest.approx(0.0, abs=1e-14)
        # The same Gaussians by two routes (masked Cholesky vs sub-matrices): round-off on
        # a total of ~-400 (1e-10 relative is ~1e6 ulp of the sum, a generous bound).
        np.testing.assert_allclose(got.sum(), float(ref(point)), rtol=1e-10)


def test_missing_entries_inside_rows_of_other_multivariate_components_are_refused():
    X = np.abs(np.random.default_rng(6).normal(size=(20, 2))) + 1.0
    X[3, 1] = np.nan
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        comps = [pm.MvStudentT.dist(nu=5, mu=np.zeros(2) + k, scale=np.eye(2)) for k in range(2)]
        pm.Mixture("y", w, comps, observed=X)
    with pytest.raises(
        ValueError, match="missing entries inside the rows of a mixture of MvStudentT"
    ):
        build_problem(model)
