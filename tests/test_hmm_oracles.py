"""Baum–Welch EM on PyMC hidden Markov models against independent oracles.

- enumeration of every K^T state path (`tests.hmm_oracles.enumerate_paths`) at random
  parameters, through the model's own E-step: log likelihood, smoothed marginals, expected
  transitions, Viterbi path and path entropy;
- hmmlearn (GaussianHMM, CategoricalHMM, PoissonHMM) from the same start, both run to
  convergence, for the maximum-likelihood estimate;
- a direct scipy maximization of the numpy forward-algorithm likelihood for models hmmlearn
  has no family for (a switching regression, Student-t emissions, a stationary start).

Tolerance tiers (repeated at each assertion):
- exact identities (the same sums computed two ways): 1e-10;
- two optimizers at one mode: parameters to 1e-6 (hmmlearn, which stops EM at ``tol``
  1e-13 on the log likelihood, leaving ~1e-7 in the slowest parameter) and log
  likelihoods to 1e-8 (quadratic in the parameter error at a mode);
- the scipy oracle, whose gradients are central differences (error ~1e-9): 2e-5.
"""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from hmmlearn import hmm
from scipy import special, stats

import pm_em
from pm_em.engine.compiled import compile_model
from tests.hmm_oracles import enumerate_paths, forward_log_lik, maximize, softmax_rows
from tests.oracles import make_rng

EXACT = 1e-10
# The log posterior may not decrease between EM iterations beyond round-off of a sum of
# ~1e3 log terms (~1e-13 relative); 1e-10 relative catches any real decrease.
MONOTONE_RTOL = 1e-10


def assert_monotone(idata):
    trace = idata.em_stats["log_posterior"].values
    assert np.all(np.diff(trace) >= -MONOTONE_RTOL * np.abs(trace[1:])), np.diff(trace).min()


def _draw_chain(rng, trans, p0, shape):
    init = pm.Categorical.dist(p=p0)
    return pm.draw(pm_em.MarkovChain.dist(P=trans, init_dist=init, shape=shape), 1, rng)


# ------------------------------------------------------------------ enumeration of paths
@pytest.mark.parametrize(
    ("n_states", "shape"), [(2, (8,)), (3, (6,)), (3, (2, 5))], ids=["K2T8", "K3T6", "K3S2T5"]
)
def test_estep_against_every_path(n_states, shape):
    rng = make_rng(40 + n_states)
    trans_true = rng.dirichlet(np.full(n_states, 3.0), size=n_states)
    z = _draw_chain(rng, trans_true, np.full(n_states, 1 / n_states), shape)
    y = rng.normal(np.arange(n_states)[z] * 1.5, 1.0)
    with pm.Model() as model:
        trans = pm.Dirichlet("P", a=np.ones((n_states, n_states)))
        p0 = pm.Dirichlet("p0", a=np.ones(n_states))
        mu = pm.Normal("mu", 0, 5, shape=n_states)
        sigma = pm.HalfNormal("sigma", 2, shape=n_states)
        z = pm_em.MarkovChain("z", P=trans, init_dist=pm.Categorical.dist(p=p0), shape=shape)
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
    compiled = compile_model(model)
    for _ in range(3):
        x = compiled.problem.start + rng.normal(0, 0.7, compiled.problem.start.shape)
        e = compiled.estep(x)
        v = compiled.point_values(x)
        log_b = stats.norm.logpdf(y[..., None], v["mu"], v["sigma"]).reshape(
            -1, shape[-1], n_states
        )
        ref = enumerate_paths(np.log(v["p0"])[None], np.log(v["P"]), log_b)
        (chain,) = e.chains
        # Exact identities: forward-backward vs the sum over all K^T paths.
        assert e.log_likelihood == pytest.approx(ref.log_lik.sum(), abs=EXACT * shape[-1])
        np.testing.assert_allclose(e.resp[0].reshape(ref.resp.shape), ref.resp, atol=EXACT)
        transitions = chain.expectations.transitions.reshape(ref.transitions.shape)
        np.testing.assert_allclose(transitions, ref.transitions, atol=EXACT)
        np.testing.assert_array_equal(chain.viterbi.reshape(ref.viterbi.shape), ref.viterbi)
        assert chain.entropy == pytest.approx(ref.entropy.sum(), abs=EXACT)
        # Per-step log p(y_t | y_<t) sum to each sequence's log likelihood.
        np.testing.assert_allclose(
            e.log_marginal[0].reshape(-1, shape[-1]).sum(-1), ref.log_lik, atol=EXACT
        )


# ------------------------------------------------------------------------------ hmmlearn
S, T = 4, 150
TRANS = np.array([[0.92, 0.05, 0.03], [0.04, 0.9, 0.06], [0.05, 0.05, 0.9]])
P0 = np.array([0.5, 0.3, 0.2])
# hmmlearn to convergence: 1e-13 on the log likelihood per iteration, many iterations.
HMMLEARN = {"n_iter": 20_000, "tol": 1e-13, "init_params": "", "params": "ste"}


def _lengths_x(y):
    return np.asarray(y).reshape(-1, 1), [y.shape[1]] * y.shape[0]


def _fit_pm_em(model, initvals):
    idata = pm_em.fit(model, initvals=initvals, tol=1e-12, max_iter=5000, progressbar=False)
    assert_monotone(idata)
    return idata


def _chain_block(k):
    trans = pm.Dirichlet("P", a=np.ones((k, k)))
    p0 = pm.Dirichlet("p0", a=np.ones(k))
    init = pm.Categorical.dist(p=p0)
    return pm_em.MarkovChain("z", P=trans, init_dist=init, dims=("sequence", "time"))


def _start(k):
    trans = np.full((k, k), 0.2 / (k - 1)) + np.eye(k) * (0.8 - 0.2 / (k - 1))
    return trans, np.full(k, 1.0 / k)


def _compare(idata, ref: dict, log_lik: float):
    post = idata.posterior
    for name, value in ref.items():
        # Two optimizers at one mode: 1e-6 (hmmlearn's EM stops at tol = 1e-13).
        np.testing.assert_allclose(post[name].values[0, 0], value, rtol=0, atol=1e-6)
    # At a mode the log likelihood is flat: 1e-6 in the parameters is ~1e-10 here.
    assert float(idata.em_stats["final_log_likelihood"]) == pytest.approx(log_lik, abs=1e-8)


def test_gaussian_hmm_same_mle_as_hmmlearn():
    rng = make_rng(21)
    z = _draw_chain(rng, TRANS, P0, (S, T))
    y = rng.normal(np.array([-2.0, 0.5, 3.0])[z], np.array([0.7, 1.0, 0.8])[z])
    trans0, p00 = _start(3)
    mu0, sd0 = np.array([-1.5, 0.0, 2.0]), np.ones(3)
    ref = hmm.GaussianHMM(3, covariance_type="diag", covars_prior=0.0, **HMMLEARN)
    ref.params = "stmc"
    ref.startprob_, ref.transmat_ = p00, trans0
    ref.means_, ref.covars_ = mu0[:, None], (sd0**2)[:, None]
    ref.fit(*_lengths_x(y))
    with pm.Model(coords={"sequence": range(S), "time": range(T)}) as model:
        mu = pm.Flat("mu", shape=3)
        sigma = pm.HalfFlat("sigma", shape=3)
        z = _chain_block(3)
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y, dims=("sequence", "time"))
    idata = _fit_pm_em(model, {"P": trans0, "p0": p00, "mu": mu0, "sigma": sd0})
    expected = {
        "P": ref.transmat_,
        "p0": ref.startprob_,
        "mu": ref.means_[:, 0],
        "sigma": np.sqrt(ref.covars_[:, 0, 0]),
    }
    _compare(idata, expected, ref.score(*_lengths_x(y)))
    # hmmlearn's smoothed marginals and Viterbi path at its estimate.
    _, resp = ref.score_samples(*_lengths_x(y))
    got = idata.latent_posterior["z"].values.reshape(-1, 3)
    np.testing.assert_allclose(got, resp, rtol=0, atol=1e-5)
    _, path = ref.decode(*_lengths_x(y), algorithm="viterbi")
    assert np.mean(idata.latent_posterior["z_viterbi"].values.ravel() == path) > 0.999


def test_categorical_hmm_same_mle_as_hmmlearn():
    rng = make_rng(22)
    emission = np.array([[0.7, 0.2, 0.05, 0.05], [0.1, 0.1, 0.4, 0.4]])
    trans_true = np.array([[0.9, 0.1], [0.15, 0.85]])
    z = _draw_chain(rng, trans_true, [0.5, 0.5], (S, T))
    y = np.array([rng.choice(4, p=emission[k]) for k in z.ravel()]).reshape(S, T)
    trans0, p00 = _start(2)
    e0 = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
    ref = hmm.CategoricalHMM(2, n_features=4, **HMMLEARN)
    ref.startprob_, ref.transmat_, ref.emissionprob_ = p00, trans0, e0
    ref.fit(*_lengths_x(y))
    with pm.Model(coords={"sequence": range(S), "time": range(T)}) as model:
        em = pm.Dirichlet("E", a=np.ones((2, 4)))
        z = _chain_block(2)
        pm.Categorical("y", p=em[z], observed=y, dims=("sequence", "time"))
    idata = _fit_pm_em(model, {"P": trans0, "p0": p00, "E": e0})
    expected = {"P": ref.transmat_, "p0": ref.startprob_, "E": ref.emissionprob_}
    _compare(idata, expected, ref.score(*_lengths_x(y)))


def test_poisson_hmm_same_mle_as_hmmlearn():
    rng = make_rng(23)
    z = _draw_chain(rng, TRANS, P0, (S, T))
    y = rng.poisson(np.array([1.0, 5.0, 12.0])[z])
    trans0, p00 = _start(3)
    lam0 = np.array([2.0, 6.0, 10.0])
    ref = hmm.PoissonHMM(3, **HMMLEARN)
    ref.params = "stl"
    ref.startprob_, ref.transmat_, ref.lambdas_ = p00, trans0, lam0[:, None]
    ref.fit(*_lengths_x(y))
    with pm.Model(coords={"sequence": range(S), "time": range(T)}) as model:
        lam = pm.HalfFlat("lam", shape=3)
        z = _chain_block(3)
        pm.Poisson("y", lam[z], observed=y, dims=("sequence", "time"))
    idata = _fit_pm_em(model, {"P": trans0, "p0": p00, "lam": lam0})
    expected = {"P": ref.transmat_, "p0": ref.startprob_, "lam": ref.lambdas_[:, 0]}
    _compare(idata, expected, ref.score(*_lengths_x(y)))


# ------------------------------------------------------------------ direct maximization
def _fixed_start_model(y, emission, k):
    """A one-sequence model with p0 fixed uniform, P Dirichlet(1), and ``emission(z)``."""
    with pm.Model() as model:
        trans = pm.Dirichlet("P", a=np.ones((k, k)))
        z = pm_em.MarkovChain(
            "z", P=trans, init_dist=pm.Categorical.dist(p=np.full(k, 1 / k)), shape=len(y)
        )
        emission(z, y)
    return model


def test_switching_regression_matches_direct_maximization():
    rng = make_rng(31)
    n = 300
    z = _draw_chain(rng, np.array([[0.95, 0.05], [0.1, 0.9]]), [0.5, 0.5], (n,))
    x = rng.uniform(-2, 2, n)
    a_true, b_true = np.array([-1.0, 2.0]), np.array([0.5, -1.5])
    y = a_true[z] + b_true[z] * x + rng.normal(0, 0.6, n)

    def emission(z, y):
        a = pm.Flat("a", shape=2)
        b = pm.Flat("b", shape=2)
        sigma = pm.HalfFlat("sigma")
        pm.Normal("y", mu=a[z] + b[z] * x, sigma=sigma, observed=y)

    idata = _fit_pm_em(_fixed_start_model(y, emission, 2), {"a": [-0.5, 1.5], "b": [0.0, 0.0]})

    def neg_ll(theta):
        a, b, log_s, u = theta[:2], theta[2:4], theta[4], theta[5:].reshape(2, 1)
        log_b = stats.norm.logpdf(y[:, None], a + b * x[:, None], np.exp(log_s))[None]
        return -forward_log_lik(np.log([[0.5, 0.5]]), softmax_rows(u), log_b)

    post = idata.posterior
    trans = post["P"].values[0, 0]
    em = np.r_[post["a"].values[0, 0], post["b"].values[0, 0], np.log(post["sigma"].values[0, 0])]
    em = np.r_[em, np.log(trans[:, 0] / trans[:, 1])]
    theta = maximize(neg_ll, em + 0.05)
    # Finite-difference oracle: its gradient error ~1e-9 moves the mode by ~1e-6.
    np.testing.assert_allclose(em, theta, rtol=0, atol=2e-5)
    assert -neg_ll(theta) == pytest.approx(float(idata.em_stats["final_log_likelihood"]), abs=1e-8)


def test_student_t_hmm_matches_direct_maximization():
    rng = make_rng(32)
    n = 400
    z = _draw_chain(rng, np.array([[0.9, 0.1], [0.2, 0.8]]), [0.5, 0.5], (n,))
    y = np.array([-1.0, 2.0])[z] + np.array([0.5, 1.0])[z] * rng.standard_t(3, n)

    def emission(z, y):
        mu = pm.Flat("mu", shape=2)
        sigma = pm.HalfFlat("sigma", shape=2)
        pm.StudentT("y", nu=3, mu=mu[z], sigma=sigma[z], observed=y)

    idata = _fit_pm_em(_fixed_start_model(y, emission, 2), {"mu": [-0.5, 1.5], "sigma": [1.0, 1.0]})

    def neg_ll(theta):
        mu, log_s, u = theta[:2], theta[2:4], theta[4:].reshape(2, 1)
        log_b = stats.t.logpdf(y[:, None], 3, mu, np.exp(log_s))[None]
        return -forward_log_lik(np.log([[0.5, 0.5]]), softmax_rows(u), log_b)

    post = idata.posterior
    trans = post["P"].values[0, 0]
    em = np.r_[post["mu"].values[0, 0], np.log(post["sigma"].values[0, 0])]
    em = np.r_[em, np.log(trans[:, 0] / trans[:, 1])]
    theta = maximize(neg_ll, em + 0.05)
    np.testing.assert_allclose(em, theta, rtol=0, atol=2e-5)  # finite-difference oracle
    # PyMC's Student-t log density is scipy's + 3.6e-9 per term (a rounded constant):
    # 400 terms, 1.4e-6.
    ll = float(idata.em_stats["final_log_likelihood"])
    assert -neg_ll(theta) == pytest.approx(ll, abs=n * 5e-9)


def test_stationary_start_matches_direct_maximization():
    # No closed form for P (log π(P) couples it to the start): numeric for P, closed form
    # for the emissions; the estimate is the mode of the marginal with π(P) as p0.
    rng = make_rng(33)
    trans_true = np.array([[0.9, 0.1], [0.3, 0.7]])
    z = _draw_chain(rng, trans_true, [0.75, 0.25], (3, 60))
    y = rng.normal(np.array([-1.0, 1.0])[z], 0.8)
    with pm.Model() as model:
        trans = pm.Dirichlet("P", a=np.ones((2, 2)))
        mu = pm.Flat("mu", shape=2)
        sigma = pm.HalfFlat("sigma")
        z = pm_em.MarkovChain("z", P=trans, init_dist="stationary", shape=(3, 60))
        pm.Normal("y", mu=mu[z], sigma=sigma, observed=y)
    idata = _fit_pm_em(model, {"mu": [-0.5, 0.5]})

    def neg_ll(theta):
        mu, log_s, u = theta[:2], theta[2], theta[3:].reshape(2, 1)
        trans = softmax_rows(u)
        pi = np.linalg.solve(np.eye(2) - trans.T + 1.0, np.ones(2))
        log_b = stats.norm.logpdf(y[..., None], mu, np.exp(log_s))
        return -forward_log_lik(np.log(np.broadcast_to(pi, (3, 2))), trans, log_b)

    post = idata.posterior
    trans = post["P"].values[0, 0]
    em = np.r_[post["mu"].values[0, 0], np.log(post["sigma"].values[0, 0])]
    em = np.r_[em, np.log(trans[:, 0] / trans[:, 1])]
    theta = maximize(neg_ll, em + 0.05)
    np.testing.assert_allclose(em, theta, rtol=0, atol=2e-5)  # finite-difference oracle
    assert -neg_ll(theta) == pytest.approx(float(idata.em_stats["final_log_likelihood"]), abs=1e-8)
    # The closed-form rows (ξ normalized) are not the answer here: the start's log π(P)
    # moves P away from them.
    counts = idata.em_stats["z_transitions"].values
    assert np.abs(counts / counts.sum(1, keepdims=True) - trans).max() > 1e-5


def test_no_free_parameter_returns_the_estep_umbrella():
    # hmmlearn's Wikipedia umbrella example as a PyMC model with everything fixed.
    with pm.Model(coords={"time": range(5)}) as model:
        init = pm.Categorical.dist(p=[0.5, 0.5])
        z = pm_em.MarkovChain(
            "z", P=np.array([[0.7, 0.3], [0.3, 0.7]]), init_dist=init, dims="time"
        )
        p_umbrella = pt.as_tensor([0.9, 0.2])[z]
        pm.Bernoulli("umbrella", p=p_umbrella, observed=[1, 1, 0, 1, 1], dims="time")
    idata = pm_em.fit(model, progressbar=False)
    assert round(float(idata.em_stats["final_log_likelihood"]), 4) == -3.3725
    np.testing.assert_array_equal(idata.latent_posterior["z_viterbi"].values, [0, 0, 1, 0, 0])
    frameprob = np.array([[0.9, 0.2], [0.9, 0.2], [0.1, 0.8], [0.9, 0.2], [0.9, 0.2]])
    ref = enumerate_paths(
        np.log([[0.5, 0.5]]), np.log([[0.7, 0.3], [0.3, 0.7]]), np.log(frameprob)[None]
    )
    np.testing.assert_allclose(idata.latent_posterior["z"].values, ref.resp[0], atol=EXACT)
    assert int(idata.em_stats["n_iter"]) <= 1
    assert special.logsumexp(ref.viterbi_log_joint) == pytest.approx(-4.4590, abs=5e-5)


def _fedfunds_fit(start):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
    import hmm_fedfunds

    model = hmm_fedfunds.regime_model(hmm_fedfunds.load(), start)
    idata = pm_em.fit(model, random_seed=1, progressbar=False)
    assert_monotone(idata)
    return model, idata


def test_fedfunds_free_start_against_statsmodels():
    # TECH-NOTES §8: -508.310 with a free initial distribution (3 decimals).
    _, idata = _fedfunds_fit("free")
    assert float(idata.em_stats["final_log_likelihood"]) == pytest.approx(-508.310, abs=5e-4)


def test_fedfunds_stationary_start_against_statsmodels():
    # statsmodels' MarkovRegression(fedfunds, k_regimes=2), switching mean, shared variance,
    # stationary start: its tests/test_markov_regression.py (fedfunds_const) publishes
    # llf -508.63592, params (p00, p10, mu0, mu1, sigma) = (0.9820939, 0.0503587, 3.70877,
    # 9.556793, 2.107562) and standard errors from the observed information, bse_oim
    # (0.0104002, 0.0268434, 0.1767083, 0.2999889); its EM alone stops at -508.65852.
    _, idata = _fedfunds_fit("stationary")
    assert float(idata.em_stats["final_log_likelihood"]) == pytest.approx(-508.63592, abs=1e-5)
    post = idata.posterior
    order = np.argsort(post["mu"].values.ravel())
    trans = post["P"].values[0, 0][np.ix_(order, order)]
    got = [trans[0, 0], trans[1, 0], *post["mu"].values.ravel()[order], post["sigma"].item()]
    # Published to 6-7 significant digits; both optimizers at one mode.
    want = [0.9820939, 0.0503587, 3.70877, 9.556793, 2.107562]
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


@pytest.mark.slow  # compiling the Hessian through the scan takes minutes in CVM
def test_fedfunds_laplace_standard_errors_against_statsmodels():
    model, idata = _fedfunds_fit("stationary")
    order = np.argsort(idata.posterior["mu"].values.ravel())
    # The Laplace approximation differentiates the forward-algorithm scan twice: its
    # delta-method standard errors are statsmodels' observed-information ones (published to
    # 6 digits; 1e-3 relative allows for its numerical Hessian).
    se = pm_em.laplace(idata, model=model, random_seed=1, draws=10)["standard_error"]
    se_trans = se["P"].values[np.ix_(order, order)]
    got = [se_trans[0, 0], se_trans[1, 0], *se["mu"].values[order]]
    np.testing.assert_allclose(got, [0.0104002, 0.0268434, 0.1767083, 0.2999889], rtol=1e-3)
