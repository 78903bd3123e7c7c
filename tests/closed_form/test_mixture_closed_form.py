"""Closed-form M-steps of marginal mixtures: the same families as the explicit form.

`pm.NormalMixture` and `pm.Mixture` (a list of components, or one batched distribution) are
matched by the same family modules as ``z = pm.Categorical`` + ``pm.Normal(mu[z], ...)``.
Each closed-form update is checked against the numeric M-step on the same
responsibilities, Newton-polished (see test_closed_form.py), to 1e-8 relative.
"""

import numpy as np
import pymc as pm
import pytest

import pm_em
from pm_em.closed_form import match_closed_form
from pm_em.compiling import default_compile_kwargs
from pm_em.engine.compiled import compile_model
from pm_em.engine.estep import compile_estep, compile_lean_estep
from pm_em.engine.mstep import ClosedFormMStep, compile_q, compile_stats
from pm_em.reading.build import build_problem
from tests.closed_form.test_closed_form import (
    CASES,
    LOCATIONS,
    SCALES,
    WEIGHTS,
    K,
    _constrained,
    _data,
    _data_2d,
    _reference_mstep,
    _responsibilities,
)


def _normal_mixture(form, weights, locations, scales, y):
    with pm.Model() as model:
        w = WEIGHTS[weights]()
        mu = LOCATIONS[locations]()
        sigma = SCALES[scales]()
        if form == "NormalMixture":
            pm.NormalMixture("y", w=w, mu=mu, sigma=sigma, observed=y)
        elif form == "list":
            sigmas = [sigma if sigma.ndim == 0 else sigma[k] for k in range(K)]
            comps = [pm.Normal.dist(mu[k], sigmas[k]) for k in range(K)]
            pm.Mixture("y", w=w, comp_dists=comps, observed=y)
        else:
            comps = pm.Normal.dist(mu, sigma, shape=(len(y), K))
            pm.Mixture("y", w=w, comp_dists=comps, observed=y)
    return model


def _check_against_numeric(problem, z, seed, scale=0.2):
    rng = np.random.default_rng(seed)
    plan = match_closed_form(problem)
    expected = {p.name for p in problem.params}
    assert set(plan.claimed) == expected and plan.complete
    neg_q = compile_q(problem, mode="CVM")
    mstep = ClosedFormMStep(plan, neg_q, compile_stats(problem, plan))
    resp = (_responsibilities(z, rng),)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    x0 = start + rng.normal(0.0, scale, size=start.shape)
    x_closed = mstep(x0, resp)
    assert mstep.n_fallback == 0, "the closed form should apply at this point"
    x_numeric = _reference_mstep(neg_q, x0, resp)
    closed, numeric = _constrained(problem)(x_closed), _constrained(problem)(x_numeric)
    return plan, closed, numeric, expected, (x0, neg_q, resp, x_closed, x_numeric)


# Every prior on the NormalMixture form; the list and batched forms read the same priors
# through other graphs, so a few cases of each run by default and the rest with --runslow.
_FAST = {
    "list": [
        ("dirichlet1", "normal", "halfnormal"),
        ("dirichlet1", "normal_strong", "shared_invgamma"),
        ("dirichlet1", "const", "halfnormal"),
    ],
    "batched": [("dirichlet1", "normal", "halfnormal"), ("fixed", "normal", "halfnormal")],
}
_NORMAL_CASES = [
    pytest.param(
        form,
        *case,
        id="-".join((form, *case)),
        marks=() if form == "NormalMixture" or case in _FAST[form] else pytest.mark.slow,
    )
    for form in ("NormalMixture", "list", "batched")
    for case in CASES
    # A batched Normal takes one scale per component.
    if not (form == "batched" and case[2].startswith("shared"))
]


@pytest.mark.parametrize(("form", "weights", "locations", "scales"), _NORMAL_CASES)
def test_normal_mixture_closed_form_matches_numeric_mstep(form, weights, locations, scales):
    y, z = _data()
    problem = build_problem(_normal_mixture(form, weights, locations, scales, y))
    _, closed, numeric, expected, (_, neg_q, resp, x_closed, x_numeric) = _check_against_numeric(
        problem, z, seed=1
    )
    for name in expected:
        # 1e-8 relative: the closed form is exact; both carry round-off only.
        np.testing.assert_allclose(closed[name], numeric[name], rtol=1e-8, atol=1e-12, err_msg=name)
    assert neg_q(x_closed, *resp)[0] <= neg_q(x_numeric, *resp)[0] + 1e-10 * abs(
        neg_q(x_numeric, *resp)[0]
    )


@pytest.mark.parametrize("form", ["list", "batched"])
def test_poisson_mixture_closed_form_matches_numeric_mstep(form):
    rng = np.random.default_rng(2)
    z = rng.choice(K, size=300, p=[0.3, 0.5, 0.2])
    y = rng.poisson(np.array([1.0, 4.0, 10.0])[z])
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(K))
        lam = pm.Gamma("lam", alpha=2.0, beta=0.5, shape=K)
        comps = (
            [pm.Poisson.dist(lam[k]) for k in range(K)]
            if form == "list"
            else pm.Poisson.dist(lam, shape=(300, K))
        )
        pm.Mixture("y", w, comps, observed=y)
    problem = build_problem(model)
    _, closed, numeric, expected, _ = _check_against_numeric(problem, z, seed=3)
    for name in expected:
        # Exact update against a Newton-polished numeric optimum.
        np.testing.assert_allclose(closed[name], numeric[name], rtol=1e-8, err_msg=name)


# The batched form compiles for ~45 s (a 4-D covariance graph): with --runslow.
@pytest.mark.parametrize("form", ["list", pytest.param("batched", marks=pytest.mark.slow)])
def test_mvnormal_mixture_closed_form_matches_numeric_mstep(form):
    x, z = _data_2d()
    init = np.repeat(4 * np.eye(2)[None], K, axis=0)
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(K))
        mu = pm.Flat("mu", shape=(K, 2))
        cov = pm.Flat("cov", shape=(K, 2, 2), initval=init)
        comps = (
            [pm.MvNormal.dist(mu[k], cov[k]) for k in range(K)]
            if form == "list"
            else pm.MvNormal.dist(mu, cov, shape=(len(x), K, 2))
        )
        pm.Mixture("y", w, comps, observed=x)
    problem = build_problem(model)
    _, closed, numeric, _, _ = _check_against_numeric(problem, z, seed=4, scale=0.05)
    lower = np.tril_indices(2)
    # The density reads the covariance's lower triangle only: compare that part.
    np.testing.assert_allclose(
        closed["cov"][:, lower[0], lower[1]], numeric["cov"][:, lower[0], lower[1]], rtol=1e-8
    )
    for name in ("w", "mu"):
        np.testing.assert_allclose(closed[name], numeric[name], rtol=1e-8, atol=1e-12)


def test_lean_estep_of_a_mixture_is_its_own_density():
    y, _ = _data()
    problem = build_problem(_normal_mixture("list", "dirichlet", "normal_strong", "invgamma", y))
    plan = match_closed_form(problem)
    assert plan.unrolled_terms(0) is not None
    lean = compile_lean_estep(problem, plan, mode="CVM")
    full = compile_estep(problem, mode="CVM")  # PyMC's own component densities
    x = problem.start + np.random.default_rng(5).normal(0.0, 0.3, size=problem.start.shape)
    # Two graphs of the same sums: round-off agreement.
    np.testing.assert_allclose(lean(x).log_posterior, full(x).log_posterior, rtol=1e-12)
    np.testing.assert_allclose(lean(x).log_marginal[0], full(x).log_marginal[0], rtol=1e-12)


@pytest.mark.parametrize(
    ("make", "claimed"),
    [
        # StudentT components: no closed form; the Dirichlet weights still have one.
        (lambda y, w, mu, s: pm.StudentT.dist(nu=4, mu=mu, sigma=s, shape=(len(y), K)), {"w"}),
        # Mixed families: the components as a whole are left to the numeric M-step.
        (
            lambda y, w, mu, s: [
                pm.Normal.dist(mu[0], s[0]),
                pm.Normal.dist(mu[1], s[1]),
                pm.StudentT.dist(nu=4, mu=mu[2], sigma=s[2]),
            ],
            {"w"},
        ),
        # Components given their own variables each: not one parameter per component, so (as
        # in the explicit form) the Normal family is not matched, its scales included.
        (
            lambda y, w, mu, s: [pm.Normal.dist(pm.Normal(f"m{k}", 0, 10), s[k]) for k in range(K)],
            {"w"},
        ),
    ],
    ids=["student_t", "mixed_families", "separate_variables"],
)
def test_unrecognized_components_are_left_to_the_numeric_mstep(make, claimed):
    y, _ = _data()
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(K))
        mu = pm.Normal("mu", 0.0, 10.0, shape=K)
        sigma = pm.HalfNormal("sigma", 5.0, shape=K)
        pm.Mixture("y", w, make(y, w, mu, sigma), observed=y)
    plan = match_closed_form(build_problem(model))
    assert set(plan.claimed) == claimed and not plan.complete


def test_zero_inflated_and_per_observation_weights_have_no_closed_form_weights():
    y, _ = _data()
    counts = np.abs(np.round(y)).astype(int)
    with pm.Model() as zip_model:
        pm.ZeroInflatedPoisson("y", pm.Beta("psi", 2, 2), pm.Gamma("lam", 2, 1), observed=counts)
    assert match_closed_form(build_problem(zip_model)) is None
    with pm.Model() as covariate_model:
        b = pm.Normal("b", 0, 1)
        t = pm.math.sigmoid(b * np.linspace(-1, 1, len(y)))
        weights = pm.math.stack([t, (1 - t) / 2, (1 - t) / 2], axis=-1)
        mu = pm.Normal("mu", 0.0, 10.0, shape=K)
        pm.NormalMixture("y", weights, mu, pm.HalfNormal("sigma", 5.0, shape=K), observed=y)
    plan = match_closed_form(build_problem(covariate_model))
    assert set(plan.claimed) == {"mu", "sigma"} and not plan.complete


def test_fit_of_a_normal_mixture_uses_the_verified_lean_path():
    y, _ = _data()
    model = _normal_mixture("NormalMixture", "dirichlet1", "normal", "halfnormal", y)
    idata = pm_em.fit(model, random_seed=1, progressbar=False)
    em_map = compile_model(model, None, default_compile_kwargs()).em_map
    assert em_map.lean
    # The lean E-step was checked against PyMC's mixture density, and agreed.
    assert em_map.estep.verified and not em_map.estep.failed
    history = idata.em_stats.log_posterior.values
    assert np.all(np.diff(history) >= -1e-10 * np.abs(history[1:]))
