"""pm_em.MarkovChain as a PyMC distribution: density, draws, shapes, the stationary start."""

import itertools

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

import pm_em
from pm_em.distributions import MarkovChainRV, stationary_distribution
from tests.oracles import make_rng

P = np.array([[0.9, 0.1], [0.3, 0.7]])
P3 = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.3, 0.3, 0.4]])


def _path_logp(p0, trans, path):
    return np.log(p0[path[0]]) + sum(np.log(trans[a, b]) for a, b in itertools.pairwise(path))


def _logp_fn(chain):
    value = pt.lvector("value") if chain.type.ndim == 1 else pt.lmatrix("value")
    return pytensor.function([value], pm.logp(chain, value), mode="FAST_COMPILE")


@pytest.mark.parametrize("trans", [P, P3], ids=["K=2", "K=3"])
def test_logp_equals_every_path_by_hand(trans):
    k = trans.shape[0]
    p0 = np.arange(1.0, k + 1) / np.arange(1.0, k + 1).sum()
    chain = pm_em.MarkovChain.dist(P=trans, init_dist=pm.Categorical.dist(p=p0), steps=5)
    logp = _logp_fn(chain)
    paths = list(itertools.product(range(k), repeat=6))
    got = np.array([logp(np.array(path)) for path in paths])
    want = np.array([_path_logp(p0, trans, path) for path in paths])
    # Exact identity: the same sums of logs in another order (round-off only).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.exp(got).sum() == pytest.approx(1.0, abs=1e-12)


def test_out_of_range_states_have_zero_density():
    chain = pm_em.MarkovChain.dist(P=P, init_dist=pm.Categorical.dist(p=[0.5, 0.5]), steps=2)
    logp = _logp_fn(chain)
    assert logp(np.array([0, 2, 1])) == -np.inf
    assert logp(np.array([-1, 0, 1])) == -np.inf


def test_stationary_distribution_solves_pi_p_equals_pi():
    rng = make_rng(3)
    trans = rng.dirichlet(np.ones(4), size=(5, 4))  # a batch of five 4-state chains
    pi = stationary_distribution(trans).eval()
    assert pi.shape == (5, 4)
    np.testing.assert_allclose(np.einsum("bi,bij->bj", pi, trans), pi, rtol=0, atol=1e-14)
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=0, atol=1e-14)


def test_stationary_start_density_and_draws():
    chain = pm_em.MarkovChain.dist(P=P, init_dist="stationary", steps=3)
    assert chain.owner.op.init_kind == "stationary"
    pi = np.array([0.75, 0.25])
    logp = _logp_fn(chain)
    for path in itertools.product(range(2), repeat=4):
        assert logp(np.array(path)) == pytest.approx(_path_logp(pi, P, path), abs=1e-12)
    draws = pm.draw(pm_em.MarkovChain.dist(P=P, init_dist="stationary", steps=2), 4000, 1)
    # Monte Carlo: 4000 draws, sd of a frequency ~ 0.007; 0.03 is > 4 sd.
    np.testing.assert_allclose((draws == 0).mean(axis=0), pi[0], atol=0.03)


def test_draws_have_the_transition_frequencies_of_P():
    init = pm.Categorical.dist(p=[0.2, 0.8])
    draws = pm.draw(pm_em.MarkovChain.dist(P=P, init_dist=init, shape=(2000, 50)), random_seed=1)
    assert draws.shape == (2000, 50)
    prev, nxt = draws[:, :-1].ravel(), draws[:, 1:].ravel()
    freq = np.array([[np.mean(nxt[prev == i] == j) for j in range(2)] for i in range(2)])
    # ~98,000 transitions: the sd of each frequency is < 0.003; 0.01 is > 3 sd.
    np.testing.assert_allclose(freq, P, atol=0.01)
    # 2000 first states: sd 0.009.
    assert np.mean(draws[:, 0] == 0) == pytest.approx(0.2, abs=0.04)


def test_batches_of_sequences_from_P_init_size_and_steps():
    init = pm.Categorical.dist(p=[0.5, 0.5])
    batched_P = pm_em.MarkovChain.dist(P=np.stack([P, P[::-1]]), init_dist=init, steps=9)
    assert pm.draw(batched_P, random_seed=1).shape == (2, 10)
    by_init = pm_em.MarkovChain.dist(
        P=P, init_dist=pm.Categorical.dist(p=np.full((3, 2), 0.5)), steps=3
    )
    assert pm.draw(by_init, random_seed=1).shape == (3, 4)
    sized = pm_em.MarkovChain.dist(P=P, init_dist=init, steps=4, size=(3,))
    assert pm.draw(sized, random_seed=1).shape == (3, 5)
    logp = pytensor.function([v := pt.lmatrix()], pm.logp(batched_P, v), mode="FAST_COMPILE")
    value = np.array([[0, 0, 1, 1, 0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 1, 1, 0, 1, 1]])
    want = [
        _path_logp(np.array([0.5, 0.5]), P, value[0]),
        _path_logp(np.array([0.5, 0.5]), P[::-1], value[1]),
    ]
    np.testing.assert_allclose(logp(value), want, rtol=0, atol=1e-12)


def test_in_a_model_with_dims_prior_predictive_and_initial_point():
    with pm.Model(coords={"sequence": range(3), "time": range(20)}) as model:
        trans = pm.Dirichlet("P", a=np.ones((2, 2)))
        p0 = pm.Dirichlet("p0", a=np.ones(2))
        z = pm_em.MarkovChain(
            "z", P=trans, init_dist=pm.Categorical.dist(p=p0), dims=("sequence", "time")
        )
        prior = pm.sample_prior_predictive(20, random_seed=1)
    assert isinstance(z.owner.op, MarkovChainRV)
    assert prior.prior["z"].shape == (1, 20, 3, 20)
    assert set(np.unique(prior.prior["z"].values)) <= {0, 1}
    point = model.initial_point()
    assert point["z"].shape == (3, 20)
    assert np.isfinite(model.compile_logp()(point))


def test_change_dist_size_keeps_the_chain():
    chain = pm_em.MarkovChain.dist(P=P, init_dist=pm.Categorical.dist(p=[0.5, 0.5]), steps=3)
    bigger = pm.distributions.shape_utils.change_dist_size(chain, (5,))
    assert isinstance(bigger.owner.op, MarkovChainRV)
    assert pm.draw(bigger, random_seed=1).shape == (5, 4)
    expanded = pm.distributions.shape_utils.change_dist_size(bigger, (2,), expand=True)
    assert pm.draw(expanded, random_seed=1).shape == (2, 5, 4)


def test_bad_arguments_are_refused_with_a_fix():
    with pytest.raises(ValueError, match="needs `init_dist`"):
        pm_em.MarkovChain.dist(P=P, steps=3)
    with pytest.raises(ValueError, match=r"must be `pm.Categorical.dist\(p=...\)`"):
        pm_em.MarkovChain.dist(P=P, init_dist=pm.Poisson.dist(1.0), steps=3)
    with pytest.raises(ValueError, match="needs its length"):
        pm_em.MarkovChain.dist(P=P, init_dist="stationary")
    with pytest.raises(ValueError, match=r"shape \(..., K, K\)"):
        pm_em.MarkovChain.dist(P=np.array([0.5, 0.5]), init_dist="stationary", steps=3)


@pytest.mark.slow
def test_pm_sample_assigns_the_gibbs_step():
    rng = make_rng(5)
    y = rng.normal(size=30)
    with pm.Model():
        mu = pm.Normal("mu", 0, 3, shape=2)
        z = pm_em.MarkovChain("z", P=P, init_dist="stationary", shape=30)
        pm.Normal("y", mu=mu[z], sigma=1.0, observed=y)
        idata = pm.sample(
            20,
            tune=20,
            chains=1,
            random_seed=1,
            progressbar=False,
            compute_convergence_checks=False,
        )
    assert idata.posterior["z"].shape == (1, 20, 30)


def test_a_batch_of_one_sequence():
    # A static batch of length 1 must survive the scans of the draws and the support point.
    with pm.Model() as model:
        z = pm_em.MarkovChain("z", P=P, init_dist="stationary", shape=(1, 20))
    assert model.initial_point()["z"].shape == (1, 20)
    assert pm.draw(z, random_seed=1).shape == (1, 20)
