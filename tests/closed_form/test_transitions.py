"""Closed-form M-steps of Markov chains against the numeric M-step on the same expectations."""

import numpy as np
import pymc as pm
import pytest

import pm_em
from pm_em.closed_form import match_closed_form
from pm_em.engine.mstep import ClosedFormMStep, compile_q, compile_stats
from pm_em.reading.build import build_problem
from pm_em.reading.problem import ChainExpectations
from tests.closed_form.test_closed_form import _constrained, _reference_mstep

K = 3


def _data(rng, shape):
    z = rng.integers(0, K, size=shape)
    return z, rng.normal(np.array([-2.0, 0.0, 3.0])[z], 1.0)


def _expectations(rng, z):
    """Informative soft marginals and positive transition counts (any weights will do)."""
    resp = 0.7 * np.eye(K)[z] + 0.3 * rng.dirichlet(np.ones(K), size=z.shape)
    transitions = rng.gamma(2.0, 10.0, size=(*z.shape[:-1], K, K)) + 5 * np.eye(K)
    initial = rng.dirichlet(np.ones(K), size=z.shape[:-1])
    return ChainExpectations(np.ascontiguousarray(resp), transitions, initial)


def _normal_model(y, *, batched_P=False, stationary=False, emission="normal"):
    lead = y.shape[:-1]
    with pm.Model() as model:
        a = np.array([[4.0, 1.5, 1.2], [1.1, 3.0, 1.3], [2.0, 1.0, 5.0]])
        trans = pm.Dirichlet("P", a=np.broadcast_to(a, (*lead, K, K)) if batched_P else a)
        if stationary:
            init = "stationary"
        else:
            init = pm.Categorical.dist(p=pm.Dirichlet("p0", a=np.array([2.0, 3.0, 1.5])))
        z = pm_em.MarkovChain("z", P=trans, init_dist=init, shape=y.shape)
        if emission == "normal":
            mu = pm.Normal("mu", 0.0, 10.0, shape=K)
            sigma = pm.HalfNormal("sigma", 5.0, shape=K)
            pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
        else:
            rate = pm.Gamma("rate", 2.0, 0.5, shape=K)
            pm.Poisson("y", rate[z], observed=np.abs(np.round(y * 3)))
    return model


CASES = {
    "one-sequence": ((150,), {}),
    "batch": ((4, 60), {}),
    "batch-per-sequence-P": ((4, 60), {"batched_P": True}),
    "poisson-batch": ((3, 50), {"emission": "poisson"}),
    "stationary": ((3, 50), {"stationary": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_closed_form_matches_numeric_mstep(case):
    shape, options = CASES[case]
    rng = np.random.default_rng(5)
    z, y = _data(rng, shape)
    problem = build_problem(_normal_model(y, **options))
    plan = match_closed_form(problem)
    names = {p.name for p in problem.params}
    # A stationary start leaves P to the numeric step (log π(P) couples it to the start).
    expected = names - {"P"} if options.get("stationary") else names
    assert set(plan.claimed) == expected
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    expect = (_expectations(rng, z),)
    x0 = problem.start + rng.normal(0.0, 0.2, size=problem.start.shape)
    x_closed = mstep(x0, expect)
    assert mstep.n_fallback == 0, "the closed form should apply at this point"
    x_numeric = _reference_mstep(neg_q, x0, expect)
    values = _constrained(problem)
    closed, numeric = values(x_closed), values(x_numeric)
    # The closed form is exact: round-off only for claimed variables; the numeric rest (P
    # under a stationary start) is an L-BFGS step, warm-started, to ~1e-7.
    for name in names:
        rtol = 1e-8 if name in plan.claimed else 1e-6
        np.testing.assert_allclose(closed[name], numeric[name], rtol=rtol, atol=1e-10)
    assert neg_q(x_closed, *expect)[0] <= neg_q(x_numeric, *expect)[0] + 1e-8


def test_p_shared_with_another_variable_is_left_to_the_numeric_step():
    rng = np.random.default_rng(6)
    _, y = _data(rng, (80,))
    with pm.Model() as model:
        trans = pm.Dirichlet("P", a=np.ones((K, K)))
        z = pm_em.MarkovChain("z", P=trans, init_dist="stationary", shape=80)
        mu = pm.Normal("mu", 0.0, 10.0, shape=K)
        pm.Normal("y", mu=mu[z] + trans[0, 0], sigma=1.0, observed=y)
    plan = match_closed_form(build_problem(model))
    assert plan is None or "P" not in plan.claimed
