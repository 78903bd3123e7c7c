"""The ECM step for MvNormal components with LKJ Cholesky covariances (closed_form/mvnormal_cov.py).

An ECM step is a conditional maximization of Q, not its joint maximizer, so it is checked
against the numeric M-step where both must agree: it never lowers Q, the maximizer of Q is
its fixed point, and a fit with it ends at the numeric fit's mode.
"""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest

import pm_em
import pm_em.engine.mstep
from pm_em.closed_form import match_closed_form
from pm_em.engine.mstep import ClosedFormMStep, compile_q, compile_stats
from pm_em.reading.build import build_problem
from tests.closed_form.test_closed_form import _constrained, _reference_mstep
from tests.oracles import make_rng

N_OBS = 240


def _data(rng):
    covs = np.array([[[1.0, 0.5], [0.5, 2.0]], [[1.5, -0.6], [-0.6, 0.8]]])
    means = np.array([[0.0, 0.0], [4.0, 3.0]])
    z = rng.choice(2, size=N_OBS, p=[0.4, 0.6])
    noise = np.einsum("nij,nj->ni", np.linalg.cholesky(covs)[z], rng.normal(size=(N_OBS, 2)))
    return means[z] + noise, z


def _model(x, form="explicit"):
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=(2, 2))
        chols = [
            pm.LKJCholeskyCov(f"chol{k}", n=2, eta=2.0, sd_dist=pm.HalfNormal.dist(5.0))[0]
            for k in range(2)
        ]
        if form == "explicit":
            z = pm.Categorical("z", p=w, shape=len(x))
            pm.MvNormal("y", mu=mu[z], chol=pt.stack(chols)[z], observed=x)
        else:
            comps = [pm.MvNormal.dist(mu[k], chol=chols[k]) for k in range(2)]
            pm.Mixture("y", w=w, comp_dists=comps, observed=x)
    return model


def _responsibilities(z, rng):
    onehot = np.eye(2)[z]
    return np.ascontiguousarray(0.8 * onehot + 0.2 * rng.dirichlet(np.ones(2), size=len(z)))


@pytest.mark.parametrize("form", ["explicit", "mixture"])
def test_the_lkj_covariances_are_claimed_by_the_ecm_step(form):
    x, _ = _data(make_rng(31))
    plan = match_closed_form(build_problem(_model(x, form)))
    assert plan is not None and plan.complete
    assert set(plan.claimed) == {"w", "mu", "chol0", "chol1"}


def test_the_ecm_step_never_lowers_q_and_fixes_its_maximizer():
    rng = make_rng(32)
    x, z = _data(rng)
    problem = build_problem(_model(x))
    plan = match_closed_form(problem)
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    x0 = problem.start + rng.normal(0.0, 0.1, size=problem.start.shape)
    x1 = mstep(x0, resp)
    assert mstep.n_fallback == 0
    # A conditional maximization: Q does not decrease (up to round-off).
    assert neg_q(x1, *resp)[0] <= neg_q(x0, *resp)[0] + 1e-10
    # At the maximizer of Q (the numeric M-step, Newton-refined), each conditional step
    # is already at its maximum: the ECM step leaves it there.
    x_star = _reference_mstep(neg_q, x1, resp)
    x_again = mstep(x_star, resp)
    values = _constrained(problem)
    star, again = values(x_star), values(x_again)
    for name in ("w", "mu", "chol0", "chol1"):
        # 1e-6: the covariance step is L-BFGS to gtol 1e-10 on an objective of size ~1e2.
        np.testing.assert_allclose(again[name], star[name], rtol=1e-6, atol=1e-8, err_msg=name)


@pytest.mark.slow
def test_a_fit_with_the_ecm_step_ends_at_the_numeric_fits_mode(monkeypatch):
    x, _ = _data(make_rng(33))
    ecm = pm_em.fit(_model(x), random_seed=2, progressbar=False)
    history = ecm.em_stats.log_posterior.values
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))  # EM is monotone
    monkeypatch.setattr(pm_em.engine.mstep, "match_closed_form", lambda problem: None)
    numeric = pm_em.fit(_model(x), random_seed=2, progressbar=False)
    # Both polished to the mode of one log posterior.
    assert float(ecm.em_stats.final_log_posterior) == pytest.approx(
        float(numeric.em_stats.final_log_posterior), rel=1e-9
    )
    for name in ("w", "mu", "chol0", "chol1"):
        np.testing.assert_allclose(
            ecm.posterior[name].values, numeric.posterior[name].values, rtol=1e-5, atol=1e-6
        )
