"""`marginalize` and `sample_marginal`: EM and NUTS target one density."""

import warnings

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from scipy import special, stats

import pm_em
from pm_em.compiling import pytensor_compile_kwargs
from pm_em.engine.estep import compile_estep
from pm_em.reading.build import build_problem
from pm_em.results.marginal import compile_to_x


def make_data(seed, n, weights=(0.35, 0.65), means=(-1.5, 1.2), sds=(0.7, 1.0)):
    rng = np.random.default_rng(seed)
    z = rng.choice(len(weights), size=n, p=np.asarray(weights))
    return rng.normal(np.asarray(means)[z], np.asarray(sds)[z])


def gmm(x, *, ordered=False, extras=False, use_data=False):
    """The classic 1-D Gaussian mixture; ``extras`` adds every other kind of model term."""
    coords = {"component": [0, 1], "obs": np.arange(len(x))}
    with pm.Model(coords=coords) as model:
        data = pm.Data("x_data", x, dims="obs") if use_data else x
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu_kwargs = (
            {"transform": pm.distributions.transforms.ordered, "initval": [-1.0, 1.0]}
            if ordered
            else {}
        )
        mu = pm.Normal("mu", 0.0, 10.0, dims="component", **mu_kwargs)
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=data, dims="obs")
        pm.Deterministic("gap", mu[1] - mu[0])
        if extras:
            pm.Deterministic("z_twice", 2 * z, dims="obs")  # involves the latent: dropped
            pm.Potential("shrink", -0.5 * (mu[0] + mu[1]) ** 2 / 25.0)  # on parameters: kept
            pm.Potential("z_bonus", 0.1 * z, dims="obs")  # on the latent: summed out with it
            tau = pm.Gamma("tau", 2.0, 2.0)
            pm.Normal("v", 0.0, tau, observed=np.linspace(-1, 1, 7))  # no latent: kept
    return model


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # the classic model
        {"ordered": True},  # an ordered transform with initvals on the model
        {"extras": True},  # potentials, Deterministics, another observed variable
        {"use_data": True},  # observed data in a pm.Data container
    ],
)
def test_marginal_logp_equals_em_log_posterior(kwargs):
    x = make_data(1, 60)
    model = gmm(x, **kwargs)
    marginal = pm_em.marginalize(model)
    problem = build_problem(model)
    estep = compile_estep(problem, **pytensor_compile_kwargs())
    logp = marginal.compile_logp(jacobian=False)
    rng = np.random.default_rng(2)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    for _ in range(5):
        x_test = start + rng.normal(0.0, 0.7, size=start.shape)
        expected = estep(x_test).log_posterior
        # Both sides evaluate the same graph (the E-step's enumeration); only the
        # transforms' forward(backward(.)) round trip in the marginal model differs, at
        # round-off level, so 1e-8 relative leaves orders of magnitude to spare.
        np.testing.assert_allclose(logp(problem.from_x(x_test)), expected, rtol=1e-8)


def test_marginal_logp_matches_scipy_oracle():
    # An independent check of the density itself: the mixture log posterior in scipy.
    x = make_data(3, 40)
    model = gmm(x)
    logp = pm_em.marginalize(model).compile_logp(jacobian=False)
    w, mu, sigma = np.array([0.3, 0.7]), np.array([-1.0, 1.5]), np.array([0.8, 1.1])
    problem = build_problem(model)
    point = problem.from_x(compile_to_x(problem)(w, mu, sigma))
    lik = special.logsumexp(np.log(w) + stats.norm.logpdf(x[:, None], mu, sigma), axis=1)
    prior = (
        stats.dirichlet.logpdf(w, [1, 1])
        + stats.norm.logpdf(mu, 0, 10).sum()
        + stats.halfnorm.logpdf(sigma, scale=5).sum()
    )
    # PyTensor keeps hyperparameters such as 10.0 as float32 constants, so PyMC computes
    # log(sigma) of the priors in float32 (~3e-8 absolute per prior term, measured): the
    # agreement is ~1e-9 relative, not round-off. A wrong term (a missing weight, prior or
    # Jacobian) would be off by more than 1e-3.
    np.testing.assert_allclose(logp(point), lik.sum() + prior, rtol=1e-8)


def missing_data_model(seed=0):
    """A mixture with NaN in its data, and a plain variable with NaN, both integrated out."""
    rng = np.random.default_rng(seed)
    x = make_data(seed, 150)
    x[[3, 50, 100]] = np.nan
    v = rng.normal(1.0, 2.0, 20)
    v[[2, 5]] = np.nan
    with pm.Model(coords={"component": [0, 1]}) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x)
        m = pm.Normal("m", 0.0, 5.0)
        pm.Normal("v", m, 2.0, observed=v)
    return model


def test_marginal_logp_with_missing_values():
    model = missing_data_model()
    marginal = pm_em.marginalize(model)
    # The missing entries are integrated out, not sampled.
    assert [rv.name for rv in marginal.free_RVs] == ["w", "mu", "sigma", "m"]
    problem = build_problem(model)
    estep = compile_estep(problem, **pytensor_compile_kwargs())
    logp = marginal.compile_logp(jacobian=False)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x_test = problem.start + rng.normal(0.0, 0.7, size=problem.start.shape)
        # Same graphs on both sides (see above): round-off agreement.
        np.testing.assert_allclose(
            logp(problem.from_x(x_test)), estep(x_test).log_posterior, rtol=1e-8
        )


@pytest.mark.slow
def test_sample_marginal_missing_values_layout():
    model = missing_data_model()
    em = pm_em.fit(model, random_seed=1, progressbar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pm.sample's advice on one short chain
        post = pm_em.sample_marginal(
            model, draws=100, tune=100, chains=1, random_seed=2, progressbar=False
        )
    lat_em, lat_nuts = em["latent_posterior"].dataset, post["latent_posterior"].dataset
    assert set(lat_nuts.data_vars) == set(lat_em.data_vars)
    for name in lat_em.data_vars:
        assert lat_nuts[name].dims == lat_em[name].dims
    # Oracle for v's missing entries: given m they are N(m, 2), so over the posterior their
    # mean is E[m] and their variance 4 + Var[m] (total expectation and variance), computed
    # here from the draws of m directly.
    m = post["posterior"]["m"].values.ravel()
    np.testing.assert_allclose(lat_nuts["v_unobserved"], m.mean(), rtol=1e-10)
    np.testing.assert_allclose(lat_nuts["v_unobserved_sd"], np.sqrt(4.0 + m.var()), rtol=1e-10)


def test_marginalize_keeps_the_parameter_part_of_the_model():
    model = gmm(make_data(1, 30), ordered=True, extras=True)
    marginal = pm_em.marginalize(model)
    assert [rv.name for rv in marginal.free_RVs] == ["w", "mu", "sigma", "tau"]
    assert [rv.name for rv in marginal.observed_RVs] == ["v"]
    assert sorted(p.name for p in marginal.potentials) == ["shrink", "z_marginal"]
    assert [d.name for d in marginal.deterministics] == ["gap"]
    assert marginal.named_vars_to_dims["mu"] == ("component",)
    assert marginal.coords["component"] == (0, 1)
    # Same transforms, and the initvals survive on both models.
    assert type(marginal.rvs_to_transforms[marginal["mu"]]) is type(
        model.rvs_to_transforms[model["mu"]]
    )
    np.testing.assert_array_equal(marginal.rvs_to_initial_values[marginal["mu"]], [-1.0, 1.0])
    np.testing.assert_array_equal(model.rvs_to_initial_values[model["mu"]], [-1.0, 1.0])


def test_marginalize_takes_the_model_from_the_context():
    with gmm(make_data(1, 30)):
        marginal = pm_em.marginalize()
    assert "z" not in marginal.named_vars


def test_compile_to_x_inverts_the_transforms():
    model = gmm(make_data(1, 30), ordered=True)
    problem = build_problem(model)
    values = [np.array([0.25, 0.75]), np.array([-1.0, 2.0]), np.array([0.5, 2.0])]
    x = compile_to_x(problem)(*values)
    # ordered: (mu0, log(mu1 - mu0)); log: log(sigma). Exact maps, so round-off only.
    np.testing.assert_allclose(x[1:], [-1.0, np.log(3.0), np.log(0.5), np.log(2.0)], rtol=1e-12)
    # The simplex coordinates: the model's own backward transform recovers w.
    back = pytensor.function([problem.x], list(problem.constrained.values()))(x)
    for got, want in zip(back, values, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_sample_marginal_rejects_bad_keywords():
    model = gmm(make_data(1, 30))
    with pytest.raises(ValueError, match="return_inferencedata=False"):
        pm_em.sample_marginal(model, return_inferencedata=False)


@pytest.fixture(scope="module")
def em_and_nuts():
    x = make_data(11, 1000)
    model = gmm(x, ordered=True)
    em = pm_em.fit(model, random_seed=1, progressbar=False)
    with warnings.catch_warnings():
        # pm.sample's advice about chain counts and r_hat with 2 short chains.
        warnings.simplefilter("ignore", UserWarning)
        post = pm_em.sample_marginal(
            model,
            draws=500,
            tune=500,
            chains=2,
            cores=1,
            random_seed=12,
            progressbar=False,
            idata_kwargs={"log_likelihood": True},
        )
    return model, em, post


@pytest.mark.slow
def test_em_estimate_within_one_posterior_sd_of_nuts_mean(em_and_nuts):
    _, em, post = em_and_nuts
    draws = post["posterior"].dataset
    for name in ("w", "mu", "sigma", "gap"):
        estimate = em["posterior"][name].values[0, 0]
        mean = draws[name].mean(("chain", "draw")).values
        sd = draws[name].std(("chain", "draw")).values
        # MAP and posterior mean differ by O(1/n) while the posterior sd is O(1/sqrt(n)); the
        # Monte Carlo error of the mean (ESS ~ 500+) is ~0.05 sd. One sd is a generous bound
        # that a wrong density (e.g. a missing prior term or a Jacobian) would still break.
        # (The ordered transform fixes the labels, so no alignment is needed here.)
        assert np.all(np.abs(estimate - mean) < sd), (name, estimate, mean, sd)


@pytest.mark.slow
def test_responsibilities_agree_with_nuts(em_and_nuts):
    _, em, post = em_and_nuts
    r_em = em["latent_posterior"]["z"]
    r_nuts = post["latent_posterior"]["z"]
    assert r_nuts.dims == r_em.dims == ("obs", "z_support")
    np.testing.assert_array_equal(r_nuts["z_support"], r_em["z_support"])
    np.testing.assert_allclose(r_nuts.sum("z_support"), 1.0, rtol=1e-12)
    # Averaging p(z | y, θ) over the posterior vs plugging in the mode: the difference is
    # second order in the posterior spread; well under the 0.05 the issue allows.
    assert float(np.abs(r_em - r_nuts).mean()) < 0.05


@pytest.mark.slow
def test_sample_marginal_groups_line_up_with_fit(em_and_nuts):
    _, em, post = em_and_nuts
    for group in ("posterior", "sample_stats", "latent_posterior", "observed_data"):
        assert group in post.children
    np.testing.assert_array_equal(post["observed_data"]["y"], em["observed_data"]["y"])
    ll = post["log_likelihood"]["y"]
    assert ll.dims == ("chain", "draw", "obs")
    # Oracle for the pointwise log likelihood: scipy at one draw.
    draw = post["posterior"].dataset.isel(chain=1, draw=7)
    x = em["observed_data"]["y"].values
    expected = special.logsumexp(
        np.log(draw["w"].values)
        + stats.norm.logpdf(x[:, None], draw["mu"].values, draw["sigma"].values),
        axis=1,
    )
    np.testing.assert_allclose(ll.isel(chain=1, draw=7), expected, rtol=1e-10)


def test_marginal_potential_uses_model_variables():
    # The potential is a graph of the marginal model's own variables (no stray inputs):
    # NUTS's logp compiles from the model's value variables alone.
    model = gmm(make_data(1, 30))
    marginal = pm_em.marginalize(model)
    [pot] = marginal.potentials
    inputs = {v for v in pt.as_tensor(pot).owner.inputs}
    assert inputs  # a real graph
    fn = marginal.compile_logp()
    assert np.isfinite(fn(marginal.initial_point()))
