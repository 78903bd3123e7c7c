"""pymc-extras' DiscreteMarkovChain read as a chain latent (an optional environment).

pymc-extras pins an older PyMC (0.15.1: pymc < 6.4), so it is never a dependency of pm_em:
these tests run in a separate environment (``.ci/run`` builds one, and sets
``PM_EM_REQUIRE_PYMC_EXTRAS=1`` so that they fail rather than skip) and are skipped where
pymc-extras is not installed.
"""

import os

import numpy as np
import pymc as pm
import pytest

import pm_em
from tests.hmm_oracles import enumerate_paths
from tests.oracles import make_rng

if os.environ.get("PM_EM_REQUIRE_PYMC_EXTRAS") == "1":
    import pymc_extras as pmx
else:
    pmx = pytest.importorskip("pymc_extras")
from pymc_extras.distributions import DiscreteMarkovChain

P = np.array([[0.9, 0.1], [0.2, 0.8]])
P0 = np.array([0.3, 0.7])


def _data(rng, n):
    z = pm.draw(
        pm_em.MarkovChain.dist(P=P, init_dist=pm.Categorical.dist(p=P0), steps=n - 1), 1, rng
    )
    return rng.normal(np.array([-1.0, 1.0])[z], 0.8)


def _model(y, chain):
    with pm.Model(coords={"time": range(len(y))}) as model:
        trans = pm.Dirichlet("P", a=np.ones((2, 2)))
        p0 = pm.Dirichlet("p0", a=np.ones(2))
        mu = pm.Normal("mu", 0, 3, shape=2)
        z = chain("z", P=trans, init_dist=pm.Categorical.dist(p=p0), dims="time")
        pm.Normal("y", mu=mu[z], sigma=0.8, observed=y, dims="time")
    return model


def test_discrete_markov_chain_fits_as_pm_em_markov_chain():
    rng = make_rng(60)
    y = _data(rng, 200)
    ours = pm_em.fit(_model(y, pm_em.MarkovChain), random_seed=1, progressbar=False)
    theirs = pm_em.fit(_model(y, DiscreteMarkovChain), random_seed=1, progressbar=False)
    # The same density read from two Ops: the same fit to round-off.
    for name in ("P", "p0", "mu"):
        np.testing.assert_allclose(
            theirs.posterior[name].values, ours.posterior[name].values, rtol=0, atol=1e-8
        )
    np.testing.assert_array_equal(
        theirs.latent_posterior["z_viterbi"].values, ours.latent_posterior["z_viterbi"].values
    )


def test_marginal_density_equals_pymc_extras_marginalize():
    rng = make_rng(61)
    y = _data(rng, 7)
    with pm.Model(coords={"time": range(7)}) as model:
        mu = pm.Normal("mu", 0, 3, shape=2)
        z = DiscreteMarkovChain("z", P=P, init_dist=pm.Categorical.dist(p=P0), dims="time")
        pm.Normal("y", mu=mu[z], sigma=0.8, observed=y, dims="time")
    point = {"mu": np.array([-1.0, 1.0])}
    theirs = pmx.marginalize(model, ["z"]).compile_logp(vars=None, jacobian=False)(point)
    ours = pm_em.marginalize(model).compile_logp(jacobian=False)(point)
    log_b = -0.5 * ((y[:, None] - np.array([-1.0, 1.0])) / 0.8) ** 2 - np.log(
        0.8 * np.sqrt(2 * np.pi)
    )
    prior = float(pm.logp(pm.Normal.dist(0, 3), np.array([-1.0, 1.0])).sum().eval())
    ref = enumerate_paths(np.log(P0)[None], np.log(P), log_b[None]).log_lik[0] + prior
    # Three computations of one density (pymc-extras, pm_em's scan, enumeration).
    assert ours == pytest.approx(ref, abs=1e-10)
    assert theirs == pytest.approx(ref, abs=1e-10)


def test_refuses_higher_order_and_time_varying_chains():
    y = np.zeros(6)
    with pm.Model() as second_order:
        z = DiscreteMarkovChain(
            "z", P=np.full((2, 2, 2), 0.5), init_dist=pm.Categorical.dist(p=P0), n_lags=2, shape=6
        )
        pm.Normal("y", mu=z * 1.0, sigma=1.0, observed=y)
    with pytest.raises(ValueError, match="n_lags=2: each state depends on more than the previous"):
        pm_em.fit(second_order, progressbar=False)
    with pm.Model() as varying:
        z = DiscreteMarkovChain(
            "z",
            P=np.broadcast_to(P, (5, 2, 2)),
            init_dist=pm.Categorical.dist(p=P0),
            time_varying_P=True,
            shape=6,
        )
        pm.Normal("y", mu=z * 1.0, sigma=1.0, observed=y)
    with pytest.raises(ValueError, match="time-varying P"):
        pm_em.fit(varying, progressbar=False)


def test_refuses_an_initial_distribution_that_is_not_categorical():
    with pm.Model() as model:
        z = DiscreteMarkovChain("z", P=P, init_dist=pm.DiscreteUniform.dist(0, 1), shape=6)
        pm.Normal("y", mu=z * 1.0, sigma=1.0, observed=np.zeros(6))
    with pytest.raises(ValueError, match="initial distribution of chain 'z' is DiscreteUniform"):
        pm_em.fit(model, progressbar=False)
