"""Closed-form M-steps: recognition from the graph, and agreement with the numeric M-step.

Every closed-form update is checked against the numeric M-step (L-BFGS on the compiled Q) on
the same responsibilities. The numeric reference is run to a tight tolerance and restarted
from its own result, so its error is far below the 1e-8 relative tolerance of the
comparisons; that tolerance is then the closed form's error plus round-off.
"""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
from pymc.distributions.transforms import ordered

import pm_em
import pm_em.engine.mstep
from pm_em.closed_form import match_closed_form
from pm_em.compiling import default_compile_kwargs
from pm_em.engine.compiled import compile_model
from pm_em.engine.estep import compile_estep, compile_lean_estep
from pm_em.engine.mstep import ClosedFormMStep, NumericMStep, compile_q, compile_stats
from pm_em.reading.build import build_problem

K = 3
N_OBS = 300


def _data(seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=N_OBS, p=[0.3, 0.5, 0.2])
    y = rng.normal(np.array([-3.0, 0.0, 4.0])[z], np.array([1.0, 0.7, 1.5])[z])
    return y, z


# Each case: the priors of the weights, locations and scales, as functions that create them.
WEIGHTS = {
    "dirichlet1": lambda: pm.Dirichlet("w", a=np.ones(K)),
    "dirichlet": lambda: pm.Dirichlet("w", a=np.array([2.0, 3.0, 4.0])),
    "fixed": lambda: np.array([0.3, 0.5, 0.2]),
}
LOCATIONS = {
    "flat": lambda: pm.Flat("mu", shape=K),
    "normal": lambda: pm.Normal("mu", 0.0, 10.0, shape=K),
    # A strong prior, far from the data: the prior term matters.
    "normal_strong": lambda: pm.Normal("mu", np.array([-1.0, 1.0, 2.0]), 0.3, shape=K),
    "ordered": lambda: pm.Normal(
        "mu", 0.0, 10.0, shape=K, transform=ordered, initval=np.array([-1.0, 0.0, 1.0])
    ),
    "const": lambda: pt.as_tensor(np.zeros(K)),
}
SCALES = {
    "halfflat": lambda: pm.HalfFlat("sigma", shape=K),
    "halfnormal": lambda: pm.HalfNormal("sigma", 5.0, shape=K),
    "halfnormal_strong": lambda: pm.HalfNormal("sigma", 0.5, shape=K),
    "invgamma": lambda: pm.InverseGamma("sigma", alpha=3.0, beta=2.0, shape=K),
    "shared_halfnormal": lambda: pm.HalfNormal("sigma", 2.0),
    "shared_invgamma": lambda: pm.InverseGamma("sigma", alpha=3.0, beta=2.0),
    "const": lambda: pt.as_tensor(np.array([1.0, 0.8, 1.2])),
}


def _model(weights, locations, scales, y):
    with pm.Model() as model:
        w = WEIGHTS[weights]()
        mu = LOCATIONS[locations]()
        sigma = SCALES[scales]()
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[z], sigma=sigma if sigma.ndim == 0 else sigma[z], observed=y)
    return model


CASES = [
    ("dirichlet1", "flat", "halfflat"),
    ("dirichlet1", "normal", "halfnormal"),
    ("dirichlet", "normal_strong", "halfnormal_strong"),
    ("dirichlet", "normal_strong", "invgamma"),
    ("dirichlet", "normal_strong", "halfflat"),
    ("dirichlet1", "flat", "invgamma"),
    ("fixed", "normal", "halfnormal"),
    ("dirichlet1", "ordered", "halfnormal"),
    ("dirichlet1", "flat", "shared_halfnormal"),
    ("dirichlet1", "normal_strong", "shared_invgamma"),
    ("dirichlet1", "const", "halfnormal"),
    ("dirichlet1", "normal_strong", "const"),
]


def _responsibilities(z, rng):
    """Informative but soft responsibilities: the true labels blurred with random mass."""
    onehot = np.eye(K)[z]
    return np.ascontiguousarray(0.7 * onehot + 0.3 * rng.dirichlet(np.ones(K), size=len(z)))


def _constrained(problem):
    names = list(problem.constrained)
    fn = pytensor.function(
        [problem.x], [problem.constrained[k] for k in names], on_unused_input="ignore"
    )
    return lambda x: dict(zip(names, fn(x), strict=True))


def _reference_mstep(neg_q, x, resp):
    """The numeric M-step, then Newton steps on its exact gradient.

    L-BFGS stops with a relative error near 1e-8; Newton steps with a central-difference
    Hessian of the analytic gradient converge to the stationary point itself (the gradient
    is exact, so the Hessian's error only slows convergence), far below 1e-8.
    """
    x = NumericMStep(neg_q, maxiter=5000)(x, resp)
    h = 1e-5
    for _ in range(4):
        _, grad = neg_q(x, *resp)
        hess = np.empty((x.size, x.size))
        for i in range(x.size):
            step = np.zeros_like(x)
            step[i] = h
            hess[:, i] = (neg_q(x + step, *resp)[1] - neg_q(x - step, *resp)[1]) / (2 * h)
        # lstsq: coordinates Q does not depend on (the upper triangle of a Flat covariance)
        # give zero rows, and stay where they are.
        x = x - np.linalg.lstsq(0.5 * (hess + hess.T), grad, rcond=1e-12)[0]
    return x


@pytest.mark.parametrize(
    ("weights", "locations", "scales"), CASES, ids=["-".join(c) for c in CASES]
)
def test_closed_form_matches_numeric_mstep(weights, locations, scales):
    rng = np.random.default_rng(1)
    y, z = _data()
    problem = build_problem(_model(weights, locations, scales, y))
    plan = match_closed_form(problem)
    expected = {p.name for p in problem.params}
    assert set(plan.claimed) == expected
    assert plan.complete
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    x0 = start + rng.normal(0.0, 0.2, size=start.shape)

    x_closed = mstep(x0, resp)
    assert mstep.n_fallback == 0, "the closed form should apply at this point"
    x_numeric = _reference_mstep(neg_q, x0, resp)

    values = _constrained(problem)
    closed, numeric = values(x_closed), values(x_numeric)
    for name in expected:
        # 1e-8 relative: the closed form is exact; both carry round-off only.
        np.testing.assert_allclose(closed[name], numeric[name], rtol=1e-8, atol=1e-12, err_msg=name)
    q_closed, _ = neg_q(x_closed, *resp)
    q_numeric, _ = neg_q(x_numeric, *resp)
    # The closed form is the maximizer: no lower Q than the numeric optimum (up to round-off).
    assert q_closed <= q_numeric + 1e-10 * abs(q_numeric)


def test_stationary_point_of_q():
    """The gradient of Q vanishes at the closed-form update (an optimizer-free check)."""
    rng = np.random.default_rng(2)
    y, z = _data()
    problem = build_problem(_model("dirichlet", "normal_strong", "halfnormal_strong", y))
    plan = match_closed_form(problem)
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    x0 = np.where(np.isfinite(problem.start), problem.start, 0.0)
    _, grad0 = neg_q(x0, *resp)
    _, grad = neg_q(mstep(x0, resp), *resp)
    # Round-off in Q's gradient is ~1e-13 of its scale at the start.
    assert np.max(np.abs(grad)) <= 1e-9 * np.max(np.abs(grad0))


def test_lean_estep_statistics_equal_those_of_the_responsibilities():
    rng = np.random.default_rng(3)
    y, _ = _data()
    problem = build_problem(_model("dirichlet", "normal_strong", "invgamma", y))
    plan = match_closed_form(problem)
    # Normal components and Dirichlet weights: the lean E-step works one component at a time.
    assert plan.unrolled_terms(0) is not None
    lean = compile_lean_estep(problem, plan, mode="CVM")
    full = compile_estep(problem, mode="CVM")
    stats_from_resp = compile_stats(problem, plan)
    x = problem.start + rng.normal(0.0, 0.3, size=problem.start.shape)
    e_lean, e_full = lean(x), full(x)
    # Two independent graphs of the same sums: agreement to round-off.
    np.testing.assert_allclose(e_lean.log_posterior, e_full.log_posterior, rtol=1e-12)
    np.testing.assert_allclose(e_lean.log_marginal[0], e_full.log_marginal[0], rtol=1e-12)
    for a, b in zip(e_lean.stats, stats_from_resp(x, *e_full.resp), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("make_sigma", "claimed"),
    [
        # Exponential prior on the scales: no closed form registered, left to L-BFGS.
        (lambda: pm.Exponential("sigma", 1.0, shape=K), {"w", "mu"}),
        # A hierarchical prior: the hyperparameter is random, so no closed form.
        (lambda: pm.HalfNormal("sigma", pm.HalfNormal("tau", 1.0), shape=K), {"w", "mu"}),
    ],
    ids=["exponential", "hierarchical"],
)
def test_unrecognized_priors_are_left_to_the_numeric_mstep(make_sigma, claimed):
    rng = np.random.default_rng(4)
    y, z = _data()
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Normal("mu", 0.0, 10.0, shape=K)
        sigma = make_sigma()
        zz = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[zz], sigma=sigma[zz], observed=y)
    problem = build_problem(model)
    plan = match_closed_form(problem)
    assert set(plan.claimed) == claimed
    assert not plan.complete
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    x0 = np.where(np.isfinite(problem.start), problem.start, 0.0)
    x_new = mstep(x0, resp)
    # An ECM step: never lowers Q, and moves every block.
    assert neg_q(x_new, *resp)[0] < neg_q(x0, *resp)[0]
    assert np.all(x_new != x0)


def test_parameter_used_elsewhere_is_not_claimed():
    """mu also enters a second likelihood: its update must see both, so it stays numeric."""
    y, _ = _data()
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Normal("mu", 0.0, 10.0, shape=K)
        sigma = pm.HalfNormal("sigma", 5.0, shape=K)
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
        pm.Normal("anchor", mu=mu.sum(), sigma=1.0, observed=0.5)
    plan = match_closed_form(build_problem(model))
    assert set(plan.claimed) == {"w", "sigma"}


def test_no_closed_form_without_recognized_structure():
    rng = np.random.default_rng(5)
    y = rng.normal(size=50)
    with pm.Model() as model:
        logits = pm.Normal("logits", 0.0, 1.0, shape=2)
        z = pm.Categorical("z", logit_p=logits, shape=len(y))
        pm.StudentT("y", nu=4, mu=pm.math.stack([-1.0, 1.0])[z], sigma=1.0, observed=y)
    assert match_closed_form(build_problem(model)) is None


def test_ordered_update_that_breaks_the_order_falls_back():
    """Responsibilities that swap the components' means: the ordered closed form cannot hold."""
    y, z = _data()
    problem = build_problem(_model("dirichlet1", "ordered", "halfnormal", y))
    plan = match_closed_form(problem)
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (np.ascontiguousarray(np.eye(K)[(2 - z)] * 0.9 + 0.1 / K),)
    x0 = np.where(np.isfinite(problem.start), problem.start, 0.0)
    x_new = mstep(x0, resp)
    assert mstep.n_fallback == 1
    assert neg_q(x_new, *resp)[0] <= neg_q(x0, *resp)[0]


def test_fit_uses_the_lean_path_and_matches_the_numeric_fit(monkeypatch):
    y, _ = _data()
    model = _model("dirichlet1", "normal", "halfnormal", y)
    closed = pm_em.fit(model, random_seed=1, progressbar=False, tol=1e-10)
    em_map = compile_model(model, None, default_compile_kwargs()).em_map
    assert em_map.lean
    # The lean E-step was checked against the model's own density, and agreed.
    assert em_map.estep.verified and not em_map.estep.failed
    monkeypatch.setattr(pm_em.engine.mstep, "match_closed_form", lambda problem: None)
    numeric = pm_em.fit(
        _model("dirichlet1", "normal", "halfnormal", y), random_seed=1, progressbar=False, tol=1e-10
    )
    # Both end at the mode (polished): agreement to the polish's precision.
    for name in ("w", "mu", "sigma"):
        np.testing.assert_allclose(
            closed.posterior[name].values, numeric.posterior[name].values, rtol=1e-6
        )
    history = closed.em_stats.log_posterior.values
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))


def _mvnormal_model(x, mu_prior="flat"):
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        if mu_prior == "flat":
            mu = pm.Flat("mu", shape=(K, 2))
        else:
            mu = pm.Normal("mu", 0.0, 10.0, shape=(K, 2))
        # problem.py's separability check perturbs the initial point: start inside the support.
        cov = pm.Flat("cov", shape=(K, 2, 2), initval=np.repeat(4 * np.eye(2)[None], K, axis=0))
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.MvNormal("y", mu=mu[z], cov=cov[z], observed=x)
    return model


def _data_2d(seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=N_OBS, p=[0.3, 0.5, 0.2])
    means = np.array([[-3.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    chol = np.array([[1.0, 0.0], [0.5, 0.8]])
    return means[z] + rng.normal(size=(N_OBS, 2)) @ chol.T, z


def test_mvnormal_closed_form_matches_numeric_mstep():
    rng = np.random.default_rng(6)
    x, z = _data_2d()
    problem = build_problem(_mvnormal_model(x))
    plan = match_closed_form(problem)
    assert set(plan.claimed) == {"w", "mu", "cov"} and plan.complete
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    x0 = problem.start + rng.normal(0.0, 0.05, size=problem.start.shape)
    x_closed = mstep(x0, resp)
    assert mstep.n_fallback == 0
    x_numeric = _reference_mstep(neg_q, x0, resp)
    closed, numeric = _constrained(problem)(x_closed), _constrained(problem)(x_numeric)
    lower = np.tril_indices(2)
    # The density reads the covariance's lower triangle only: compare that part.
    np.testing.assert_allclose(
        closed["cov"][:, lower[0], lower[1]], numeric["cov"][:, lower[0], lower[1]], rtol=1e-8
    )
    for name in ("w", "mu"):
        np.testing.assert_allclose(closed[name], numeric[name], rtol=1e-8, atol=1e-12)
    assert neg_q(x_closed, *resp)[0] <= neg_q(x_numeric, *resp)[0] + 1e-10


def test_mvnormal_lean_estep_matches_the_model_density():
    rng = np.random.default_rng(7)
    x, _ = _data_2d()
    problem = build_problem(_mvnormal_model(x))
    plan = match_closed_form(problem)
    lean = compile_lean_estep(problem, plan, mode="CVM")
    full = compile_estep(problem, mode="CVM")
    point = problem.start + rng.normal(0.0, 0.1, size=problem.start.shape)
    np.testing.assert_allclose(lean(point).log_marginal[0], full(point).log_marginal[0], rtol=1e-12)


def test_mvnormal_with_a_normal_mean_prior_keeps_the_mean_numeric():
    x, _ = _data_2d()
    plan = match_closed_form(build_problem(_mvnormal_model(x, mu_prior="normal")))
    assert set(plan.claimed) == {"w", "cov"} and not plan.complete


def _counts_model(kind, prior, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.choice(K, size=N_OBS, p=[0.3, 0.5, 0.2])
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        zz = pm.Categorical("z", p=w, shape=N_OBS)
        if kind == "poisson":
            lam = (
                pm.Gamma("theta", alpha=2.0, beta=0.5, shape=K)
                if prior
                else pm.HalfFlat("theta", shape=K)
            )
            y = rng.poisson(np.array([1.0, 4.0, 10.0])[z])
            pm.Poisson("y", mu=lam[zz], observed=y)
        elif kind in ("bernoulli", "binomial"):
            p = pm.Beta("theta", 2.0, 3.0, shape=K) if prior else pm.Beta("theta", 1, 1, shape=K)
            probs = np.array([0.2, 0.5, 0.8])[z]
            if kind == "bernoulli":
                pm.Bernoulli("y", p=p[zz], observed=rng.binomial(1, probs))
            else:
                pm.Binomial("y", n=10, p=p[zz], observed=rng.binomial(10, probs))
        else:
            alpha = np.full((K, 4), 2.0) if prior else np.ones((K, 4))
            p = pm.Dirichlet("theta", a=alpha, shape=(K, 4))
            table = rng.dirichlet(np.ones(4), size=K)
            y = np.array([rng.choice(4, p=table[k]) for k in z])
            pm.Categorical("y", p=p[zz], observed=y)
    return model, z


# The flat variants run the same formulas with a = 1: slow-only, to keep the default run short.
@pytest.mark.parametrize(
    "prior", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["conjugate", "flat"]
)
@pytest.mark.parametrize("kind", ["poisson", "bernoulli", "binomial", "categorical"])
def test_discrete_closed_forms_match_numeric_mstep(kind, prior):
    rng = np.random.default_rng(8)
    model, z = _counts_model(kind, prior)
    problem = build_problem(model)
    plan = match_closed_form(problem)
    assert set(plan.claimed) == {"w", "theta"} and plan.complete
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    x0 = problem.start + rng.normal(0.0, 0.2, size=problem.start.shape)
    x_closed = mstep(x0, resp)
    assert mstep.n_fallback == 0
    x_numeric = _reference_mstep(neg_q, x0, resp)
    closed, numeric = _constrained(problem)(x_closed), _constrained(problem)(x_numeric)
    for name in ("w", "theta"):
        # 1e-8 relative: exact update against a Newton-polished numeric optimum.
        np.testing.assert_allclose(closed[name], numeric[name], rtol=1e-8, err_msg=name)
    lean = compile_lean_estep(problem, plan, mode="CVM")
    full = compile_estep(problem, mode="CVM")
    np.testing.assert_allclose(lean(x0).log_marginal[0], full(x0).log_marginal[0], rtol=1e-12)


def _mvnormal_model_d(x):
    d = x.shape[1]
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(K))
        mu = pm.Flat("mu", shape=(K, d))
        cov = pm.Flat("cov", shape=(K, d, d), initval=np.repeat(4 * np.eye(d)[None], K, axis=0))
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.MvNormal("y", mu=mu[z], cov=cov[z], observed=x)
    return model


@pytest.mark.parametrize(("d", "unrolled"), [(2, True), (3, True), (3, False)])
def test_mvnormal_lean_statistics_equal_brute_force_sums(d, unrolled, monkeypatch):
    # Rows up to MAX_UNROLLED_D long are written one coordinate at a time; longer ones over
    # (n, K, d, d). Both must give the sums of the class docstring, computed here in numpy
    # from the responsibilities of the model's own E-step (its gathers, not our broadcasts).
    import pm_em.closed_form.mvnormal as mvnormal

    if not unrolled:
        monkeypatch.setattr(mvnormal, "MAX_UNROLLED_D", d - 1)
    rng = np.random.default_rng(11 + d)
    y = rng.normal(size=(N_OBS, d)) + rng.choice([-3.0, 0.0, 3.0], size=(N_OBS, 1))
    problem = build_problem(_mvnormal_model_d(y))
    plan = match_closed_form(problem)
    assert plan.complete and (plan.unrolled_terms(0) is not None) == unrolled
    # A covariance that is positive definite, near the start.
    x = problem.start + rng.normal(0.0, 0.05, size=problem.start.shape)
    lean = compile_lean_estep(problem, plan, mode="CVM")(x)
    resp = compile_estep(problem, mode="CVM")(x).resp[0]  # (n, K)
    mu = _constrained(problem)(x)["mu"]
    diff = y[:, None, :] - mu[None]  # (n, K, d)
    expected = [
        resp.sum(axis=0),
        np.einsum("nk,nki->ki", resp, diff),
        np.einsum("nk,nki,nkj->kij", resp, diff, diff),
    ]
    # lean.stats: the weights' statistics, the components' N, A, B, then the values read.
    end = len(lean.stats) - len(plan.reads)
    n_k, a, b = lean.stats[end - 3 : end]
    for got, want in zip((n_k, a, b), expected, strict=True):
        # Sums of n = N_OBS terms of size O(10): round-off well below 1e-10 relative.
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)
