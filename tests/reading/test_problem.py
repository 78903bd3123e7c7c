"""Reading the model: latent detection, supports, refusals, and the enumerated E-step.

The E-step oracle enumerates every latent state by hand with scipy densities and
logsumexp, independently of the pytensor graph.
"""

import numpy as np
import pymc as pm
import pytest
from scipy import stats
from scipy.special import logsumexp

from pm_em.engine.estep import compile_estep
from pm_em.reading.build import build_problem
from pm_em.reading.support import finite_support


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: pm.Categorical("z", p=np.ones(4) / 4, shape=3), np.arange(4)),
        (lambda: pm.Bernoulli("z", p=0.3, shape=3), np.arange(2)),
        # Elementwise n: the support is the union; values above an element's n get -inf.
        (lambda: pm.Binomial("z", n=np.array([3, 5]), p=0.3), np.arange(6)),
        (lambda: pm.DiscreteUniform("z", lower=2, upper=5, shape=3), np.arange(2, 6)),
    ],
    ids=["categorical", "bernoulli", "binomial", "discrete_uniform"],
)
def test_finite_support(make, expected):
    with pm.Model():
        z = make()
    np.testing.assert_array_equal(finite_support(z, "z"), expected)


def _mixture(x, k=2):
    model = pm.Model(coords={"component": range(k), "obs": range(len(x))})
    with model:
        w = pm.Dirichlet("w", a=np.ones(k), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x, dims="obs")
    return model


def test_problem_structure():
    x = np.array([-1.0, 0.5, 2.0, 3.0])
    problem = build_problem(_mixture(x, k=3))
    (latent,) = problem.latents
    assert latent.name == "z"
    assert latent.dims == ("obs",)
    assert latent.support_dim == "z_support"
    assert latent.observed == ("y",)
    assert latent.shape == (4,)
    np.testing.assert_array_equal(latent.support, np.arange(3))
    assert [p.name for p in problem.params] == ["w", "mu", "sigma"]
    # w lives on the 2-simplex: 2 unconstrained coordinates.
    assert problem.n_params == 2 + 3 + 3
    point = problem.from_x(np.arange(8.0))
    np.testing.assert_array_equal(problem.to_x(point), np.arange(8.0))


def test_estep_matches_brute_force_enumeration():
    """Responsibilities and log posterior equal a scipy enumeration of all states."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=7)
    model = _mixture(x, k=3)
    with model:
        # A per-element potential touching the latent joins its enumerated term.
        pm.Potential("tilt", 0.3 * model["z"] * model["y"])
    problem = build_problem(model)
    estep = compile_estep(problem)
    for _ in range(3):
        xv = rng.normal(size=problem.n_params)
        vals = problem.from_x(xv)
        # Constrained values from PyMC's own transforms (not from pm_em's graphs).
        w, mu, sigma = (
            np.asarray(v)
            for v in model.compile_fn(
                model.replace_rvs_by_values([model["w"], model["mu"], model["sigma"]]),
                inputs=model.value_vars,
                on_unused_input="ignore",
            )({**vals, "z": np.zeros(7, dtype=int)})
        )
        table = (
            np.log(w)[None, :]
            + stats.norm.logpdf(x[:, None], mu[None, :], sigma[None, :])
            + 0.3 * np.arange(3)[None, :] * x[:, None]
        )
        log_prior = (
            stats.dirichlet.logpdf(w, np.ones(3))
            + stats.norm.logpdf(mu, 0, 10).sum()
            + stats.halfnorm.logpdf(sigma, scale=5).sum()
        )
        e = estep(xv)
        # Responsibilities: an exact identity of float64 arithmetic (1e-10 leaves room for
        # summation order). Absolute log densities: PyTensor autocasts literal parameters
        # (10.0, 5.0) to float32, so PyMC's constants such as log(5) carry ~3e-8 error.
        np.testing.assert_allclose(
            e.log_resp[0], table - logsumexp(table, axis=1, keepdims=True), rtol=1e-10
        )
        np.testing.assert_allclose(e.log_prior, log_prior, rtol=1e-7)
        np.testing.assert_allclose(
            e.log_posterior, logsumexp(table, axis=1).sum() + log_prior, rtol=1e-7
        )
        np.testing.assert_allclose(e.resp[0].sum(axis=1), 1.0, rtol=1e-12)


def test_impossible_assignments_are_legal():
    """Zero-inflated Poisson: y > 0 rules out the zero state (-inf), responsibility 0."""
    y = np.array([0, 0, 3, 5, 0, 2])
    with pm.Model() as model:
        psi = pm.Beta("psi", 1, 1)
        lam = pm.Gamma("lam", 2, 0.5)
        z = pm.Bernoulli("z", psi, shape=len(y))
        pm.Poisson("y", mu=z * lam, observed=y)
    problem = build_problem(model)
    e = compile_estep(problem)(problem.start)
    resp = e.resp[0]
    assert np.all(resp[y > 0, 0] == 0.0)
    assert np.all(np.isfinite(e.log_marginal[0]))
    psi_v, lam_v = 0.5, 2.0 / 0.5  # the initial point: Beta(1,1) mean, Gamma mean
    log_zero = np.log(1 - psi_v + psi_v * np.exp(-lam_v))
    log_pos = np.log(psi_v) + stats.poisson.logpmf(y, lam_v)
    expected = np.where(y == 0, log_zero, log_pos)
    np.testing.assert_allclose(e.log_marginal[0], expected, rtol=1e-10)


def test_two_independent_latents():
    rng = np.random.default_rng(3)
    with pm.Model() as model:
        mu1 = pm.Normal("mu1", 0, 10, shape=2)
        z1 = pm.Bernoulli("z1", 0.5, shape=5)
        pm.Normal("y1", mu1[z1], 1, observed=rng.normal(size=5))
        mu2 = pm.Normal("mu2", 0, 10, shape=3)
        z2 = pm.Categorical("z2", np.ones(3) / 3, shape=4)
        pm.Normal("y2", mu2[z2], 1, observed=rng.normal(size=4))
    problem = build_problem(model)
    assert [lat.name for lat in problem.latents] == ["z1", "z2"]
    assert [lat.observed for lat in problem.latents] == [("y1",), ("y2",)]


def test_row_dependent_is_summed_per_row():
    """A (n, d) univariate likelihood with one latent per row: one term per row."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 2))
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 10, shape=(2, 2))
        z = pm.Bernoulli("z", 0.5, shape=6)
        pm.Normal("y", mu[z], 1, observed=x)
    problem = build_problem(model)
    e = compile_estep(problem)(np.zeros(4))
    # mu = 0 for both states: each row's joint is log 0.5 + sum_j log N(x_ij | 0, 1).
    expected = np.log(0.5) + stats.norm.logpdf(x).sum(axis=1)
    # 1e-8: PyMC takes log(0.5) of the float32-autocast literal 0.5 (error 2e-9).
    np.testing.assert_allclose(e.log_marginal[0], np.log(2) + expected, rtol=1e-8)


# ------------------------------------------------------------------ refusals
def _refuse(build, match):
    with pm.Model() as model:
        build()
    with pytest.raises(ValueError, match=match):
        build_problem(model)


def test_refuses_infinite_support():
    def build():
        mu = pm.Normal("mu")
        z = pm.Poisson("counts", 3, shape=4)
        pm.Normal("y", mu + z, 1, observed=np.ones(4))

    _refuse(build, r"'counts' has a Poisson distribution.*not known to be finite")


def test_refuses_interacting_elements_by_shape():
    def build():
        mu = pm.Normal("mu", shape=2)
        z = pm.Bernoulli("z", 0.5, shape=5)
        pm.Normal("y", mu[z].sum(), 1, observed=1.0)

    _refuse(build, r"'y'.*does not split into one term per element of latent 'z'")


def test_refuses_interacting_elements_of_matching_shape():
    """Shapes agree, but element i depends on z[4 - i]: only the numeric check sees it."""

    def build():
        mu = pm.Normal("mu", shape=2)
        z = pm.Bernoulli("z", 0.5, shape=5)
        pm.Normal("y", mu[z] + mu[z[::-1]], 1, observed=np.arange(5.0))

    _refuse(build, r"latent 'z'.*does not split into one term per element")


def test_refuses_variable_depending_on_two_latents():
    def build():
        mu = pm.Normal("mu", shape=(2, 2))
        a = pm.Bernoulli("a", 0.5, shape=3)
        b = pm.Bernoulli("b", 0.5, shape=3)
        pm.Normal("y", mu[a, b], 1, observed=np.zeros(3))

    _refuse(build, r"'y' depends on both latent 'a' and latent 'b'")


def test_refuses_latent_depending_on_latent():
    def build():
        a = pm.Bernoulli("a", 0.5, shape=3)
        b = pm.Bernoulli("b", pm.math.switch(a, 0.9, 0.1), shape=3)
        mu = pm.Normal("mu", shape=2)
        pm.Normal("y", mu[b], 1, observed=np.zeros(3))

    _refuse(build, r"Latent 'b' depends on latent 'a'")


def test_refuses_continuous_child_of_latent():
    def build():
        z = pm.Bernoulli("z", 0.5, shape=3)
        theta = pm.Normal("theta", z, 1, shape=3)
        pm.Normal("y", theta, 1, observed=np.zeros(3))

    _refuse(build, r"Free variable 'theta' depends on latent 'z'")


def test_refuses_discrete_left_out_of_latent():
    with pm.Model() as model:
        mu = pm.Normal("mu", shape=2)
        a = pm.Bernoulli("a", 0.5, shape=3)
        b = pm.Bernoulli("b", 0.5, shape=3)
        pm.Normal("y", mu[a], 1, observed=np.zeros(3))
        pm.Normal("y2", mu[b], 1, observed=np.zeros(3))
    with pytest.raises(ValueError, match=r"\['b'\] are not in `latent`"):
        build_problem(model, latent=["a"])
    with pytest.raises(ValueError, match=r"'nope', which is not a variable"):
        build_problem(model, latent=["nope"])
    with pytest.raises(ValueError, match=r"'mu', which is neither a discrete free variable"):
        build_problem(model, latent=["mu", "a", "b"])


def test_refuses_non_finite_data():
    def build_inf():
        pm.Normal("y", pm.Normal("mu"), 1, observed=np.array([0.0, np.inf]))

    _refuse(build_inf, r"'y' contains infinite values")

    def build_nan_data():
        data = pm.Data("data", np.array([0.0, 1.0]))
        pm.Normal("y", pm.Normal("mu"), 1, observed=data)
        # pm.Data refuses NaN at creation, not when the value is replaced later.
        data.set_value(np.array([0.0, np.nan]))

    _refuse(build_nan_data, r"'y' contains NaN that PyMC did not impute")

    def build_no_data():
        pm.Normal("mu")

    _refuse(build_no_data, "no observed variable")
