"""Reading a Markov chain latent: its graphs against PyMC's own density, and the refusals."""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest

import pm_em
from pm_em.reading.build import build_problem
from tests.oracles import make_rng

T = 30
P_TRUE = np.array([[0.9, 0.1], [0.2, 0.8]])


def _series(rng, shape=(T,)):
    z = pm.draw(pm_em.MarkovChain.dist(P=P_TRUE, init_dist="stationary", shape=shape), 1, rng)
    return z, rng.normal(np.array([-1.0, 1.5])[z], 0.7)


def _issue_model(y):
    with pm.Model(coords={"time": range(len(y)), "state": [0, 1]}) as model:
        trans = pm.Dirichlet("P", a=np.ones((2, 2)))
        p0 = pm.Dirichlet("p0", a=np.ones(2))
        mu = pm.Normal("mu", 0, 5, dims="state")
        sigma = pm.HalfNormal("sigma", 2)
        z = pm_em.MarkovChain("z", P=trans, init_dist=pm.Categorical.dist(p=p0), dims="time")
        pm.Normal("y", mu=mu[z], sigma=sigma, observed=y, dims="time")
    return model


def _batched_model(y, counts):
    s = y.shape[0]
    with pm.Model(coords={"sequence": range(s), "time": range(T), "d": [0, 1]}) as model:
        trans = pm.Dirichlet("P", a=np.ones((s, 2, 2)))  # one transition matrix per sequence
        mu = pm.Normal("mu", 0, 5, shape=2)
        rate = pm.Gamma("rate", 2, 0.5, shape=2)
        sigma = pm.HalfNormal("sigma", 2)
        z = pm_em.MarkovChain("z", P=trans, init_dist="stationary", dims=("sequence", "time"))
        pm.Normal("y", mu=mu[z][..., None], sigma=sigma, observed=y, dims=("sequence", "time", "d"))
        pm.Poisson("c", rate[z], observed=counts, dims=("sequence", "time"))
    return model


def _check_joint(model, rng, n_tries=4):
    """log p(z, deps) from PyMC equals log p0[z0] + Σ log P + Σ_t emission[t, z_t]."""
    problem = build_problem(model)
    (lat,) = problem.latents
    assert lat.coupling == "chain" and lat.kind == "MarkovChain"
    fn = pytensor.function(
        [problem.x], [lat.log_joint, lat.log_init, lat.log_trans], mode="FAST_COMPILE"
    )
    z = model["z"]
    deps = [model[name] for name in lat.dependents]
    joint = pt.add(*[t.sum() for t in model.logp(vars=[z, *deps], jacobian=False, sum=False)])
    direct = model.compile_fn(joint, inputs=model.value_vars, mode="FAST_COMPILE")
    point = model.initial_point()
    for _ in range(n_tries):
        x = problem.start + rng.normal(0, 0.3, problem.start.shape)
        values = problem.from_x(x)
        zz = rng.integers(0, 2, size=lat.shape)
        emission, log_init, log_trans = fn(x)
        log_trans = np.broadcast_to(log_trans, (*lat.shape[:-1], 2, 2))
        want = 0.0
        for idx in np.ndindex(lat.shape[:-1]):
            path = zz[idx]
            want += log_init[idx][path[0]] + log_trans[idx][path[:-1], path[1:]].sum()
            want += emission[idx][np.arange(lat.shape[-1]), path].sum()
        got = direct({**point, **values, "z": zz})
        # The same log densities summed in another order: round-off of sums of ~100 terms.
        assert got == pytest.approx(want, abs=1e-9)
    return lat


def test_one_sequence_matches_pymc_joint():
    rng = make_rng(1)
    _, y = _series(rng)
    lat = _check_joint(_issue_model(y), rng)
    assert lat.shape == (T,) and lat.dims == ("time",)
    assert lat.observed == ("y",)


def test_batch_stationary_two_dependents_per_sequence_P_matches_pymc_joint():
    rng = make_rng(2)
    z, _ = _series(rng, (3, T))
    y2 = rng.normal(np.array([-1.0, 1.5])[z][..., None], 0.7, size=(3, T, 2))
    counts = rng.poisson(np.array([1.0, 6.0])[z])
    lat = _check_joint(_batched_model(y2, counts), rng)
    assert lat.shape == (3, T) and lat.dims == ("sequence", "time")
    assert lat.values_per_element == 3


def test_the_marginal_graph_sums_to_the_forward_algorithm():
    rng = make_rng(3)
    _, y = _series(rng, (8,))
    model = _issue_model(y)
    problem = build_problem(model)
    (lat,) = problem.latents
    fn = pytensor.function(
        [problem.x],
        [lat.log_marginal_graph(), lat.log_joint, lat.log_init, lat.log_trans],
        mode="FAST_COMPILE",
    )
    steps, emission, log_init, log_trans = fn(problem.start)
    from tests.hmm_oracles import enumerate_paths

    ref = enumerate_paths(log_init[None], log_trans, emission[None])
    assert steps.shape == (8,)
    assert steps.sum() == pytest.approx(ref.log_lik[0], abs=1e-10)


# ----------------------------------------------------------------------------- refusals
def _chain_model(trans, y, *, init=None, mu_of=None):
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 5, shape=2)
        init_dist = init if init is not None else pm.Categorical.dist(p=[0.5, 0.5])
        z = pm_em.MarkovChain("z", P=trans, init_dist=init_dist, shape=len(y))
        pm.Normal("y", mu=mu[z] if mu_of is None else mu_of(mu, z), sigma=1.0, observed=y)
    return model


def test_refuses_a_transition_matrix_that_is_not_row_stochastic():
    y = np.zeros(10)
    with pytest.raises(ValueError, match=r"transition matrix of chain 'z'.*not row-stochastic"):
        pm_em.fit(_chain_model(np.array([[0.9, 0.2], [0.2, 0.8]]), y), progressbar=False)
    with pm.Model() as model:
        trans = pm.HalfNormal("P", 1.0, shape=(2, 2))
        z = pm_em.MarkovChain("z", P=trans, init_dist="stationary", shape=10)
        pm.Normal("y", mu=z * 1.0, sigma=1.0, observed=y)
    with pytest.raises(ValueError, match=r"\('P'\) is not row-stochastic.*Dirichlet prior per row"):
        pm_em.fit(model, progressbar=False)


def test_refuses_initial_probabilities_that_do_not_sum_to_one():
    # (PyMC itself rescales a constant p; a free one is taken as given.)
    with pm.Model() as model:
        p0 = pm.HalfNormal("p0", 1.0, shape=2)
        z = pm_em.MarkovChain("z", P=P_TRUE, init_dist=pm.Categorical.dist(p=p0), shape=10)
        pm.Normal("y", mu=z * 1.0, sigma=1.0, observed=np.zeros(10))
    with pytest.raises(ValueError, match=r"initial distribution of chain 'z'.*not row-stochastic"):
        pm_em.fit(model, progressbar=False)


def test_refuses_a_non_square_transition_matrix():
    trans = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"must be square \(K, K\)"):
        pm_em.MarkovChain.dist(P=trans, init_dist=pm.Categorical.dist(p=[0.5, 0.5]), steps=4)


def test_refuses_a_number_of_states_that_is_not_a_constant():
    with pm.Model() as model:
        trans = pm.Data("P", P_TRUE)
        z = pm_em.MarkovChain("z", P=trans, init_dist="stationary", shape=5)
        pm.Normal("y", mu=z * 1.0, sigma=1.0, observed=np.zeros(5))
    with pytest.raises(ValueError, match=r"number of states .* of chain 'z' is not a constant"):
        pm_em.fit(model, progressbar=False)


def test_refuses_emissions_that_couple_two_time_steps_by_shape():
    y = np.zeros(9)
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 5, shape=2)
        z = pm_em.MarkovChain("z", P=P_TRUE, init_dist="stationary", shape=10)
        pm.Normal("y", mu=mu[z[1:]] + mu[z[:-1]], sigma=1.0, observed=y)
    with pytest.raises(ValueError, match=r"\['y'\] does not split into one term per time step"):
        pm_em.fit(model, progressbar=False)


def test_refuses_emissions_that_couple_two_time_steps_numerically():
    def lagged(mu, z):  # the same shape as z, but step t also reads z[t - 1]
        return mu[z] + 0.5 * mu[pt.roll(z, 1)]

    model = _chain_model(P_TRUE, np.zeros(10), mu_of=lagged)
    with pytest.raises(ValueError, match=r"depends on 'z' at more than one time step"):
        pm_em.fit(model, progressbar=False)


def test_refuses_a_chain_written_as_separate_categoricals():
    with pm.Model() as model:
        z0 = pm.Categorical("z0", p=[0.5, 0.5])
        z1 = pm.Categorical("z1", p=pt.as_tensor(P_TRUE)[z0])
        mu = pm.Normal("mu", 0, 5, shape=2)
        pm.Normal("y", mu=mu[pt.stack([z0, z1])], sigma=1.0, observed=np.zeros(2))
    with pytest.raises(ValueError, match=r"Latent 'z1' depends on latent 'z0'.*pm_em.MarkovChain"):
        pm_em.fit(model, progressbar=False)


def test_refuses_a_latent_that_depends_on_the_chain():
    with pm.Model() as model:
        z = pm_em.MarkovChain("z", P=P_TRUE, init_dist="stationary", shape=5)
        w = pm.Categorical("w", p=pt.as_tensor(P_TRUE)[z[-1]])
        pm.Normal("y", mu=w * 1.0, sigma=1.0, observed=0.0)
    with pytest.raises(ValueError, match="Latent 'w' depends on latent 'z'"):
        pm_em.fit(model, progressbar=False)
