"""`information_criteria`: AIC, BIC, ICL at the EM estimate, and choosing K by BIC."""

import numpy as np
import pymc as pm
import pytest
from sklearn.mixture import GaussianMixture

import pm_em

TRUTH = {
    2: {"w": [0.4, 0.6], "mu": [-3.0, 2.0], "sd": [1.0, 1.2]},
    3: {"w": [0.3, 0.4, 0.3], "mu": [-4.0, 0.0, 4.0], "sd": [1.0, 0.8, 1.2]},
}


def make_data(seed, n, k_true):
    rng = np.random.default_rng(seed)
    t = TRUTH[k_true]
    z = rng.choice(k_true, size=n, p=t["w"])
    return rng.normal(np.asarray(t["mu"])[z], np.asarray(t["sd"])[z])


def gmm(x, k):
    with pm.Model(coords={"component": np.arange(k)}) as model:
        w = pm.Dirichlet("w", a=np.ones(k), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x)
    return model


def sklearn_fit(x, k):
    settings = {"reg_covar": 0.0, "tol": 1e-12, "max_iter": 10000, "n_init": 5}
    return GaussianMixture(k, random_state=0, **settings).fit(x[:, None])


def test_criteria_agree_with_sklearn():
    x = make_data(5, 600, 2)
    model = gmm(x, 2)
    em = pm_em.fit(model, random_seed=1, progressbar=False)
    ic = pm_em.information_criteria(em, model=model)
    gm = sklearn_fit(x, 2)
    X = x[:, None]
    # Free parameters in the unconstrained space: 1 simplex coordinate, 2 means, 2 scales,
    # sklearn's count for a 1-D full-covariance mixture.
    assert ic["n_params"] == gm._n_parameters() == 5
    assert ic["n_obs"] == 600
    # sklearn gives the MLE, pm_em the MAP under Normal(0, 10)/HalfNormal(5) priors: the
    # log likelihoods differ by ~ 1/2 g'I^{-1}g for the prior gradient g, far below 1e-2.
    assert abs(ic["log_likelihood"] - gm.score(X) * len(x)) < 1e-2
    assert abs(ic["bic"] - gm.bic(X)) < 2e-2
    assert abs(ic["aic"] - gm.aic(X)) < 2e-2
    # ICL: BIC plus twice the entropy of the responsibilities (written out with sklearn's).
    r = gm.predict_proba(X)
    entropy = -np.sum(r * np.log(np.where(r > 0, r, 1.0)))
    assert abs(ic["entropy"] - entropy) < 1e-2
    np.testing.assert_allclose(ic["icl"], ic["bic"] + 2 * ic["entropy"], rtol=1e-12)


def test_criteria_take_the_model_from_the_context():
    x = make_data(5, 200, 2)
    with gmm(x, 2):
        em = pm_em.fit(random_seed=1, progressbar=False)
        ic = pm_em.information_criteria(em)
    assert ic["n_params"] == 5


def test_criteria_refuse_a_result_of_another_model():
    x = make_data(5, 200, 2)
    em = pm_em.fit(gmm(x, 2), random_seed=1, progressbar=False)
    with pm.Model() as other:
        pm.Normal("theta", 0.0, 1.0)
        pm.Normal("y", pm.math.constant(0.0), 1.0, observed=x)
    with pytest.raises(ValueError, match=r"lacks parameter\(s\) \['theta'\]"):
        pm_em.information_criteria(em, model=other)


@pytest.mark.slow
@pytest.mark.parametrize("k_true", [2, 3])
def test_bic_picks_the_true_number_of_components(k_true):
    x = make_data(10 + k_true, 600, k_true)
    bic = {}
    for k in range(1, 5):
        model = gmm(x, k)
        em = pm_em.fit(model, random_seed=1, n_init=2, progressbar=False)
        bic[k] = pm_em.information_criteria(em, model=model)["bic"]
    # Oracle: sklearn's BIC at its own MLE picks the same K (and agrees on the values at
    # the true K, where the fit is well identified).
    sk_bic = {k: sklearn_fit(x, k).bic(x[:, None]) for k in range(1, 5)}
    assert min(bic, key=bic.get) == k_true == min(sk_bic, key=sk_bic.get), (bic, sk_bic)
    assert abs(bic[k_true] - sk_bic[k_true]) < 2e-2
