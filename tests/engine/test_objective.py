"""`pm_em.engine.objective`: the observed-data log posterior and its gradient (the polish's).

Both forms, the one compiled function of the closed-form path and the E-step with Q's
gradient (Fisher's identity), must equal the observed-data log posterior and its gradient;
a chain latent takes the E-step form, its gradient from its `ChainExpectations`.
"""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest

import pm_em
from pm_em.closed_form import match_closed_form
from pm_em.engine.compiled import compile_model
from pm_em.engine.estep import EStepResult
from pm_em.engine.objective import compile_value_and_grad, estep_value_and_grad
from pm_em.reading.build import build_problem
from tests.oracles import make_rng


def _mixture(rng):
    y = np.concatenate([rng.normal(-2.0, 1.0, 150), rng.normal(1.5, 0.6, 100)])
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
    return model


def _chain(rng):
    trans = np.array([[0.9, 0.1], [0.2, 0.8]])
    z = pm.draw(
        pm_em.MarkovChain.dist(P=trans, init_dist=pm.Categorical.dist(p=[0.5, 0.5]), shape=120),
        random_seed=rng,
    )
    y = rng.normal(np.array([-1.0, 1.5])[z], 0.6)
    with pm.Model() as model:
        P = pm.Dirichlet("P", a=np.ones((2, 2)))
        p0 = pm.Dirichlet("p0", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0)
        z = pm_em.MarkovChain("z", P=P, init_dist=pm.Categorical.dist(p=p0), shape=120)
        pm.Normal("y", mu=mu[z], sigma=sigma, observed=y)
    return model


def _points(problem, rng, n=3):
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    return [start + rng.normal(0.0, 0.3, size=start.shape) for _ in range(n)]


def _central_difference(f, x, h=1e-6):
    grad = np.empty_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def test_one_compiled_function_equals_the_estep_and_q_gradient():
    rng = make_rng(21)
    model = _mixture(rng)
    compiled = compile_model(model)
    problem = compiled.problem
    plan = match_closed_form(problem)
    assert plan is not None and plan.complete
    # The closed-form path's function, from the plan's broadcasts.
    fused = compile_value_and_grad(problem, [plan.log_joint(0)], mode="CVM")
    reference = estep_value_and_grad(compiled.estep, compiled.neg_q)
    for x in _points(problem, rng):
        value, grad = fused(x)
        want_value, want_grad = reference(x)
        # Two graphs of one density: round-off apart.
        np.testing.assert_allclose(value, want_value, rtol=1e-11)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-8, atol=1e-8)
    # The closed-form fit's own function is the fused one.
    np.testing.assert_allclose(compiled.value_and_grad(x)[0], want_value, rtol=1e-11)


def test_a_chain_objective_is_forward_backward_and_its_gradient():
    rng = make_rng(22)
    compiled = compile_model(_chain(rng))
    problem = compiled.problem
    assert problem.latents[0].coupling == "chain"
    with pytest.raises(ValueError, match="forward-backward"):
        compile_value_and_grad(problem)

    def log_post(x):
        e = compiled.estep(x)
        assert isinstance(e, EStepResult) and e.chains[0] is not None
        return e.log_posterior

    for x in _points(problem, rng, n=2):
        value, grad = compiled.value_and_grad(x)
        assert value == pytest.approx(log_post(x), rel=1e-12)
        # Fisher's identity through the chain's expected transitions and initial state.
        np.testing.assert_allclose(grad, _central_difference(log_post, x), rtol=1e-5, atol=1e-5)


def _unconstrained(model, problem, posterior) -> np.ndarray:
    """The flat vector of an estimate given in the constrained space (``posterior``)."""
    point = {}
    for p in problem.params:
        rv = model[p.name]
        value = posterior[p.name].values[0, 0]
        transform = model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = transform.forward(pt.as_tensor(value), *rv.owner.inputs).eval()
        point[p.value_name] = value
    return problem.to_x(point)


def test_the_polish_of_a_chain_ends_where_the_gradient_vanishes():
    model = _chain(make_rng(23))
    idata = pm_em.fit(model, random_seed=1, progressbar=False)
    compiled = compile_model(model)
    x = _unconstrained(model, compiled.problem, idata.posterior)
    value, grad = compiled.value_and_grad(x)
    assert value == pytest.approx(float(idata.em_stats.final_log_posterior), rel=1e-10)
    # At the mode: the polish (L-BFGS, then Newton steps) leaves a gradient of round-off size
    # (EM alone stops where its linear rate leaves ~1e-3 here).
    assert np.max(np.abs(grad)) < 1e-5, grad
    assert float(idata.em_stats.polish_gain) >= 0.0


def test_the_objective_of_a_partial_plan_is_the_estep_form():
    rng = make_rng(24)
    y = np.concatenate([rng.normal(-2.0, 1.0, 150), rng.normal(1.5, 0.6, 100)])
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        nu = pm.Gamma("nu", 2.0, 0.1)  # StudentT: no closed form for its components
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.StudentT("y", nu=nu, mu=mu[z], sigma=1.0, observed=y)
    compiled = compile_model(model)
    problem = build_problem(model)
    for x in _points(problem, rng, n=2):
        value, grad = compiled.value_and_grad(x)
        assert value == pytest.approx(compiled.estep(x).log_posterior, rel=1e-12)
        np.testing.assert_allclose(
            grad,
            _central_difference(lambda x: compiled.estep(x).log_posterior, x),
            rtol=1e-5,
            atol=1e-5,
        )
