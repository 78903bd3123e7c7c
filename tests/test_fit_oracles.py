"""``pm_em.fit`` against independent oracles.

Every reference here is computed without pm_em (see ``tests/oracles.py``): the marginal
log posterior (latents summed out with logsumexp) is written in numpy/scipy and maximized
directly with scipy, then polished with Newton steps until its gradient is at round-off
level; for the faithful data scikit-learn's ``GaussianMixture`` is a second, unrelated
reference. The oracles themselves were cross-checked against ``pm.find_MAP`` on
hand-marginalized PyMC models (agreement 1e-8 in every parameter, which is find_MAP's own
precision) and against PyMC's ``model.logp(jacobian=False)`` (see the tolerance notes).

Each scenario is fitted once per process (``_fitted``) and shared by its oracle test and
by ``test_em_invariants``.

Tolerance tiers (each assertion repeats the reason next to it):
- exact identities (normalization, brute-force enumeration at the returned estimate):
  1e-8 or tighter. PyMC's log densities differ from scipy's by up to ~3e-8 per term
  (rounded constants: measured 3.2e-8 for ``pm.logp(pm.Normal.dist(0, 10), x)``, 1e-9
  for a Student-t term, up to 1.9e-9 per observation in these fits), so pointwise log
  likelihoods get an absolute 1e-7 and totals a relative 1e-7.
- estimate vs oracle mode: absolute 1e-4 in every parameter (2e-5 where the test must
  tell MAP from MLE), with ``tol=TOL`` so that the comparison measures EM's fixed point
  rather than its stopping rule.
- estimate vs truth: a few standard errors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import pytest
from numpy.testing import assert_allclose

import pm_em

try:  # tests/ as a rootdir-relative package, or on sys.path (pytest "prepend" mode)
    from tests import oracles as O
except ImportError:  # pragma: no cover
    import oracles as O

# EM's stopping rule is on the relative change of the log posterior. EM's linear tail
# means that at the default tol=1e-8 a plain EM stops with parameter errors of ~1e-3 on
# faithful (measured with a numpy EM: mu 1.3e-3, sigma 1.1e-3) and 1.3e-4 on the
# known-sigma model, i.e. above the 1e-4 comparisons below; `fit` closes that gap with a
# final L-BFGS polish. The oracle tests run EM itself to 1e-12, where plain EM is within
# 1.3e-5 (faithful) and 4e-6 (20,000 points), so they check EM's fixed point and not only
# the polish; relative changes of 1e-12 are still 10^3-10^4 times the round-off of a sum
# of n <= 20,000 log terms (~1e-16 relative). The defaults are tested on their own in
# ``test_default_settings_faithful``.
TOL = 1e-12

# The log posterior may not decrease from one EM iteration to the next. Round-off in the
# sum of n log-terms is ~n * 1e-16 * |term| ~ 1e-15 of the total; 1e-10 relative leaves
# 10^5 headroom and still catches any decrease above ~1e-7 in absolute terms.
MONOTONE_RTOL = 1e-10

# Responsibilities vs a brute-force numpy enumeration at the returned estimate: an exact
# identity. Constant log-density offsets cancel in the normalization; PyMC's Student-t
# logp differs from scipy's by ~1e-9 per term, which moves r by at most 1e-9 * r(1-r).
RESP_ATOL = 1e-8

# Pointwise observed-data log likelihood vs numpy at the returned estimate: PyMC's log
# densities differ from scipy's by up to ~3e-8 per term (rounded constants; see the module
# docstring), so 1e-7 absolute per point and 1e-7 relative for the totals (|term| >= ~1 in
# every scenario). Measured: <= 1.9e-9 per point, <= 7e-10 relative on totals.
LOGLIK_ATOL = 1e-7
TOTAL_RTOL = 1e-7


def _fit(model, **kwargs):
    return pm_em.fit(model, progressbar=False, **kwargs)


def _point(idata, name: str) -> np.ndarray:
    """A continuous estimate from ``posterior``, with its (chain=1, draw=1) stripped."""
    da = idata.posterior[name]
    assert da.dims[:2] == ("chain", "draw")
    assert da.sizes["chain"] == 1 and da.sizes["draw"] == 1
    return np.asarray(da.values[0, 0], dtype=float)


# --------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    model: pm.Model
    data: np.ndarray  # observed y, as passed to the model
    oracle: O.Mixture  # marginal log density of the same model, in numpy
    mode: O.MixtureMode  # the oracle's MAP
    fit_kwargs: dict
    extract: Callable  # idata -> estimate in the oracle's parameter names, library order
    sort_key: Callable  # params -> per-component key that undoes label switching
    param_dims: dict  # variable -> expected posterior dims


def _gmm_extract(idata):
    return {name: _point(idata, name) for name in ("w", "mu", "sigma")}


def _known_sigma() -> Scenario:
    """Test 1: sigma = 2 and weights 0.5 are constants; mu ~ Normal(0, 10)."""
    rng = O.make_rng(101)
    x = np.concatenate([rng.normal(1.0, 2.0, 1000), rng.normal(9.0, 2.0, 1000)])
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(x.size)}) as model:
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        z = pm.Categorical("z", p=np.array([0.5, 0.5]), dims="obs")
        pm.Normal("y", mu=mu[z], sigma=2.0, observed=x, dims="obs")
    oracle = O.LocationScaleMixture(
        x, weights=[0.5, 0.5], sigma=2.0, loc_prior=O.NormalPrior(0.0, 10.0)
    )
    mode = O.maximize_mixture(oracle, [{"mu": np.array([0.0, 1.0])}, {"mu": np.array([1.0, 9.0])}])
    return Scenario(
        model,
        x,
        oracle,
        mode,
        dict(initvals={"mu": np.array([0.0, 1.0])}, tol=TOL, random_seed=1),
        lambda idata: {"mu": _point(idata, "mu")},
        lambda p: p["mu"],
        {"mu": ("chain", "draw", "component")},
    )


def _flat_gmm_model(x):
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(x.size)}) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Flat("mu", dims="component")
        sigma = pm.HalfFlat("sigma", dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x, dims="obs")
    return model


_GMM_DIMS = {name: ("chain", "draw", "component") for name in ("w", "mu", "sigma")}


def _faithful() -> Scenario:
    """Test 2: Old Faithful waiting times, flat priors (MAP = MLE)."""
    x = O.load_faithful()["waiting"]
    oracle = O.LocationScaleMixture(x)
    starts = [
        {"w": np.array([0.5, 0.5]), "mu": np.array([50.0, 80.0]), "sigma": np.array([5.0, 5.0])},
        {"w": np.array([0.3, 0.7]), "mu": np.array([60.0, 70.0]), "sigma": np.array([10.0, 10.0])},
        O.sklearn_gmm_1d(x),
    ]
    mode = O.maximize_mixture(oracle, starts)
    return Scenario(
        _flat_gmm_model(x),
        x,
        oracle,
        mode,
        dict(tol=TOL, random_seed=2),
        _gmm_extract,
        lambda p: p["mu"],
        _GMM_DIMS,
    )


def _large_unequal() -> Scenario:
    """Test 3: 20,000 points, weights 0.2/0.8, means -2/3, sd 1/1.5, flat priors."""
    rng = O.make_rng(103)
    x, _ = O.normal_mixture_data(rng, 20_000, [0.2, 0.8], [-2.0, 3.0], [1.0, 1.5])
    oracle = O.LocationScaleMixture(x)
    truth = {"w": np.array([0.2, 0.8]), "mu": np.array([-2.0, 3.0]), "sigma": np.array([1.0, 1.5])}
    spread = {
        "w": np.array([0.5, 0.5]),
        "mu": np.quantile(x, [0.25, 0.75]),
        "sigma": np.full(2, x.std()),
    }
    mode = O.maximize_mixture(oracle, [truth, spread])
    return Scenario(
        _flat_gmm_model(x),
        x,
        oracle,
        mode,
        dict(tol=TOL, random_seed=3),
        _gmm_extract,
        lambda p: p["mu"],
        _GMM_DIMS,
    )


def _poisson() -> Scenario:
    """Test 4a: two Poisson rates, Gamma(1, 0.01) priors, Dirichlet(1, 1) weights."""
    rng = O.make_rng(104)
    y, _ = O.poisson_mixture_data(rng, 1000, [0.35, 0.65], [3.0, 12.0])
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(y.size)}) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        lam = pm.Gamma("lam", alpha=1.0, beta=0.01, dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Poisson("y", mu=lam[z], observed=y, dims="obs")
    oracle = O.PoissonMixture(y, rate_prior=O.GammaPrior(1.0, 0.01))
    mode = O.maximize_mixture(
        oracle,
        [
            {"w": np.array([0.35, 0.65]), "lam": np.array([3.0, 12.0])},
            {"w": np.array([0.5, 0.5]), "lam": np.quantile(y, [0.25, 0.75]) + 0.5},
        ],
    )
    return Scenario(
        model,
        y,
        oracle,
        mode,
        dict(tol=TOL, random_seed=4),
        lambda idata: {name: _point(idata, name) for name in ("w", "lam")},
        lambda p: p["lam"],
        {name: ("chain", "draw", "component") for name in ("w", "lam")},
    )


def _student_t() -> Scenario:
    """Test 4b: Student-t components (nu = 4 fixed), Normal(0, 10) / HalfNormal(5) priors."""
    rng = O.make_rng(105)
    y, _ = O.student_t_mixture_data(rng, 1000, [0.4, 0.6], [-3.0, 3.0], [1.0, 1.5], nu=4)
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(y.size)}) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.StudentT("y", nu=4, mu=mu[z], sigma=sigma[z], observed=y, dims="obs")
    oracle = O.LocationScaleMixture(
        y, family="t", nu=4, loc_prior=O.NormalPrior(0.0, 10.0), sigma_prior=O.HalfNormalPrior(5.0)
    )
    mode = O.maximize_mixture(
        oracle,
        [
            {"w": np.array([0.4, 0.6]), "mu": np.array([-3.0, 3.0]), "sigma": np.array([1.0, 1.5])},
            {"w": np.array([0.5, 0.5]), "mu": np.array([-1.0, 1.0]), "sigma": np.array([2.0, 2.0])},
        ],
    )
    return Scenario(
        model,
        y,
        oracle,
        mode,
        dict(tol=TOL, random_seed=5),
        _gmm_extract,
        lambda p: p["mu"],
        _GMM_DIMS,
    )


def _regression() -> Scenario:
    """Test 4c: y = a[z] + b[z] x + sigma[z] eps; Dirichlet(2, 2), Normal(0, 10), HalfNormal(5).

    The lines cross at x = 1, so an uninformed start may land in another mode; the fit
    starts from initvals near the truth (this test is about the M-step, not init)."""
    rng = O.make_rng(106)
    x, y, _ = O.regression_mixture_data(
        rng, 1000, [0.45, 0.55], [-1.0, 2.0], [2.0, -1.0], [0.5, 0.8]
    )
    with pm.Model(coords={"component": [0, 1], "obs": np.arange(y.size)}) as model:
        w = pm.Dirichlet("w", a=np.array([2.0, 2.0]), dims="component")
        a = pm.Normal("a", 0.0, 10.0, dims="component")
        b = pm.Normal("b", 0.0, 10.0, dims="component")
        sigma = pm.HalfNormal("sigma", 5.0, dims="component")
        z = pm.Categorical("z", p=w, dims="obs")
        pm.Normal("y", mu=a[z] + b[z] * x, sigma=sigma[z], observed=y, dims="obs")
    oracle = O.LocationScaleMixture(
        y,
        X=np.column_stack([np.ones_like(x), x]),
        dirichlet_alpha=[2.0, 2.0],
        loc_prior=O.NormalPrior(0.0, 10.0),
        sigma_prior=O.HalfNormalPrior(5.0),
    )
    start = {
        "w": np.array([0.5, 0.5]),
        "a": np.array([-0.5, 1.5]),
        "b": np.array([1.5, -0.5]),
        "sigma": np.ones(2),
    }
    mode = O.maximize_mixture(
        oracle,
        [
            {
                "w": start["w"],
                "beta": np.column_stack([start["a"], start["b"]]),
                "sigma": start["sigma"],
            }
        ],
    )

    def extract(idata):
        return {
            "w": _point(idata, "w"),
            "beta": np.column_stack([_point(idata, "a"), _point(idata, "b")]),
            "sigma": _point(idata, "sigma"),
        }

    return Scenario(
        model,
        y,
        oracle,
        mode,
        dict(initvals=start, tol=TOL, random_seed=6),
        extract,
        lambda p: p["beta"][:, 1],
        {name: ("chain", "draw", "component") for name in ("w", "a", "b", "sigma")},
    )


def _mvnormal_lkj() -> Scenario:
    """Test 4d: 2-D MvNormal components, one LKJCholeskyCov(eta=1, HalfNormal(10)) each.

    n = 300 keeps the fit near 5 s: with ``chol=stack(chols)[z]`` every observation has its
    own Cholesky factor, and pm_em's default CVM backend evaluates that Blockwise solve in a
    Python loop over rows (~60 ms per M-step objective call at n = 600, measured)."""
    rng = O.make_rng(107)
    covs = [[[1.0, 0.5], [0.5, 2.0]], [[1.5, -0.6], [-0.6, 0.8]]]
    Y, _ = O.mvnormal_mixture_data(rng, 300, [0.4, 0.6], [[0.0, 0.0], [4.0, 3.0]], covs)
    coords = {"component": [0, 1], "coord": ["a", "b"], "obs": np.arange(Y.shape[0])}
    with pm.Model(coords=coords) as model:
        w = pm.Dirichlet("w", a=np.ones(2), dims="component")
        mu = pm.Normal("mu", 0.0, 10.0, dims=("component", "coord"))
        chols = [
            pm.LKJCholeskyCov(
                f"chol{k}", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(10.0), compute_corr=True
            )[0]
            for k in range(2)
        ]
        z = pm.Categorical("z", p=w, dims="obs")
        pm.MvNormal("y", mu=mu[z], chol=pt.stack(chols)[z], observed=Y, dims=("obs", "coord"))
    oracle = O.MvNormalLKJMixture(Y, loc_prior=O.NormalPrior(0.0, 10.0), sd_scale=10.0)
    truth_chol = np.linalg.cholesky(np.asarray(covs))[:, [0, 1, 1], [0, 0, 1]]
    mode = O.maximize_mixture(
        oracle,
        [
            {
                "w": np.array([0.4, 0.6]),
                "mu": np.array([[0.0, 0.0], [4.0, 3.0]]),
                "chol": truth_chol,
            },
            {
                "w": np.array([0.5, 0.5]),
                "mu": np.array([[1.0, 1.0], [3.0, 2.0]]),
                "chol": np.tile([1.0, 0.0, 1.0], (2, 1)),
            },
        ],
    )

    def extract(idata):
        return {
            "w": _point(idata, "w"),
            "mu": _point(idata, "mu"),
            "chol": np.stack([_point(idata, "chol0"), _point(idata, "chol1")]),
        }

    return Scenario(
        model,
        Y,
        oracle,
        mode,
        dict(tol=TOL, random_seed=7),
        extract,
        lambda p: p["mu"][:, 0],
        {"w": ("chain", "draw", "component"), "mu": ("chain", "draw", "component", "coord")},
    )


SCENARIOS = {
    "known_sigma": _known_sigma,
    "faithful": _faithful,
    "large_unequal": _large_unequal,
    "poisson": _poisson,
    "student_t": _student_t,
    "regression": _regression,
    "mvnormal_lkj": _mvnormal_lkj,
}


@functools.cache
def _scenario(name: str) -> Scenario:
    return SCENARIOS[name]()


@functools.cache
def _fitted(name: str):
    s = _scenario(name)
    return _fit(s.model, **s.fit_kwargs)


def _sorted_estimate(name: str):
    s = _scenario(name)
    est = s.extract(_fitted(name))
    return O.sort_components(est, s.sort_key(est)), O.sort_components(
        s.mode.params, s.sort_key(s.mode.params)
    )


def _assert_params_close(est, ref, atol, names=None):
    for name in names or ref:
        assert_allclose(est[name], ref[name], rtol=0, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- oracle tests


def test_known_sigma_equal_weights_map():
    s = _scenario("known_sigma")
    est, ref = _sorted_estimate("known_sigma")
    mle = O.maximize_mixture(
        O.LocationScaleMixture(s.data, weights=[0.5, 0.5], sigma=2.0), [s.mode.params]
    )
    prior_shift = np.abs(np.sort(s.mode.params["mu"]) - np.sort(mle.params["mu"]))
    # The Normal(0, 10) prior moves the MAP off the MLE by ~1e-4 and ~4e-4 here; 2e-5 tells
    # the two apart (guarded below), while EM's fixed point at TOL is within ~1e-7 (plain EM
    # reaches 1e-5 already at tol=1e-10 on this model).
    atol = 2e-5
    assert prior_shift.max() > 5 * atol, "data no longer tell MAP from MLE; pick another seed"
    assert_allclose(est["mu"], ref["mu"], rtol=0, atol=atol)
    # Truth (1, 9): each mean has standard error 2 / sqrt(1000) = 0.063; 0.2 is 3.2 of them.
    assert_allclose(est["mu"], [1.0, 9.0], rtol=0, atol=0.2)


def test_faithful_oracles_agree():
    """scipy's polished MLE vs scikit-learn's EM on faithful (no pm_em involved)."""
    s = _scenario("faithful")
    sk = O.sklearn_gmm_1d(s.data)
    sk_sorted = O.sort_components(sk, sk["mu"])
    ref = O.sort_components(s.mode.params, s.mode.params["mu"])
    # The scipy mode is a stationary point to round-off (|grad| <= 1e-8 on a log likelihood
    # of ~1e3, and its Newton step is below 1e-10).
    assert s.mode.max_abs_grad < 1e-8 and s.mode.newton_step < 1e-10
    # sklearn stops its EM when the per-sample lower bound changes by < 1e-12, i.e. in EM's
    # slow tail: measured 5.6e-6 off in mu and 4.8e-6 in sigma; 5e-5 leaves 10x headroom.
    _assert_params_close(sk_sorted, ref, atol=5e-5)
    # ...and the scipy mode is at least as high (the sklearn point is 7.5e-11 lower).
    assert s.mode.log_likelihood >= s.oracle.log_likelihood(sk) - 1e-12 * abs(s.mode.log_likelihood)


def test_faithful_flat_prior_mle():
    est, ref = _sorted_estimate("faithful")
    # 1e-4 absolute on w (~0.36), mu (~55, 80) and sigma (~5.9): the standard errors are
    # ~0.03, ~0.6 and ~0.5, so this is MLE-to-round-off, not a statistical statement; EM's
    # fixed point at TOL is within ~1e-5 (measured with a numpy EM).
    _assert_params_close(est, ref, atol=1e-4)


def test_default_settings_faithful():
    """Default tol and init on faithful reach the MLE: `fit` documents ``polish=True``."""
    s = _scenario("faithful")
    idata = _fit(s.model, random_seed=12)
    assert bool(idata.em_stats["converged"].values)
    est = s.extract(idata)
    # Without a finish, EM at tol=1e-8 stops 4e-9..7e-9 (relative) below the maximum and
    # 1.3e-3 off in mu (plain numpy EM from three starts). `fit` documents a final L-BFGS
    # polish on the observed-data log posterior (gtol 1e-10), so the default result must
    # be the MLE itself: the same 1e-4 as test_faithful_flat_prior_mle, and a log
    # posterior gap of at most 1e-9 relative (1e-4 errors cost < 1e-6 nats here).
    gap = s.mode.log_posterior - s.oracle.log_posterior(est)
    assert -1e-12 * abs(s.mode.log_posterior) <= gap <= 1e-9 * abs(s.mode.log_posterior)
    est_s = O.sort_components(est, est["mu"])
    ref = O.sort_components(s.mode.params, s.mode.params["mu"])
    _assert_params_close(est_s, ref, atol=1e-4)


def test_large_unequal_weights_default_init():
    """No start values: init="auto" must find the global MLE (20,000 points).

    Not marked slow: the fit takes ~3.5 s (46 EM iterations; its graph is the faithful
    model's, already compiled)."""
    s = _scenario("large_unequal")
    assert "initvals" not in s.fit_kwargs
    est, ref = _sorted_estimate("large_unequal")
    # 1e-4 absolute; standard errors are ~3e-3 (w), ~2e-2 (mu), ~1.5e-2 (sigma), and EM's
    # fixed point at TOL is within ~4e-6 (measured with a numpy EM).
    _assert_params_close(est, ref, atol=1e-4)
    # Truth (0.2/0.8, -2/3, 1/1.5): within 4 standard errors.
    assert_allclose(est["w"], [0.2, 0.8], atol=0.012)
    assert_allclose(est["mu"], [-2.0, 3.0], atol=0.08)
    assert_allclose(est["sigma"], [1.0, 1.5], atol=0.06)


@pytest.mark.parametrize(
    "name",
    [
        # Rates ~3 and ~12 (standard errors ~0.1 and ~0.15): 1e-4 is round-off level.
        "poisson",
        # nu fixed; locations and scales ~1-3 with standard errors ~0.05.
        "student_t",
        # Intercepts/slopes ~1-2 and sigmas ~0.5-0.8 with standard errors ~0.02-0.04.
        "regression",
        # Means ~0-4, packed Cholesky entries ~0.5-1.3, standard errors ~0.05; the oracle
        # includes the LKJCholeskyCov log density written out (checked against PyMC's).
        "mvnormal_lkj",
    ],
)
def test_mixture_map_matches_direct_maximization(name):
    est, ref = _sorted_estimate(name)
    # 1e-4 absolute: the oracle's mode has |grad| < 1e-8 and a Newton step < 1e-10, and
    # EM's fixed point at TOL is within ~1e-5 on the plain-EM measurements above, while
    # any error in the model's log density (a prior, a constant weight, the LKJ term)
    # moves the mode by far more than 1e-4 at these sample sizes.
    _assert_params_close(est, ref, atol=1e-4)


def test_oracle_gradients_match_finite_differences():
    """The oracles' analytic gradients (which pin down their modes) vs central differences."""
    params = {
        "known_sigma": {"mu": np.array([0.5, 7.0])},
        "poisson": {"w": np.array([0.3, 0.7]), "lam": np.array([2.0, 10.0])},
        "student_t": {
            "w": np.array([0.3, 0.7]),
            "mu": np.array([-2.0, 2.0]),
            "sigma": np.array([0.8, 1.7]),
        },
        "regression": {
            "w": np.array([0.3, 0.7]),
            "beta": np.array([[-0.5, 1.0], [1.0, -0.5]]),
            "sigma": np.array([0.8, 1.2]),
        },
        "mvnormal_lkj": {
            "w": np.array([0.3, 0.7]),
            "mu": np.array([[0.5, 0.2], [3.0, 2.0]]),
            "chol": np.array([[1.1, 0.3, 1.2], [0.8, -0.2, 0.6]]),
        },
    }
    for name, p in params.items():
        oracle = _scenario(name).oracle
        u = oracle.pack(p)
        g = oracle.value_and_grad(u)[1]
        h = 1e-6
        f = lambda v: oracle.value_and_grad(v)[0]  # noqa: E731
        fd = np.array([(f(u + e) - f(u - e)) / (2 * h) for e in h * np.eye(u.size)])
        # Central differences with h=1e-6 on values ~1e3: round-off ~1e-16*1e3/1e-6 = 1e-7,
        # truncation ~h^2 * f''' ~ 1e-9; measured relative errors are <= 3e-9.
        assert_allclose(g, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(g).max()), err_msg=name)
        assert _scenario(name).mode.max_abs_grad < 1e-7, name


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_em_invariants(name):
    s = _scenario(name)
    idata = _fitted(name)
    est = s.extract(idata)  # library order: the latent's support index k is component k

    # Output layout.
    for var, dims in s.param_dims.items():
        assert idata.posterior[var].dims == dims, var
    assert bool(idata.em_stats["converged"].values)
    n_iter = int(idata.em_stats["n_iter"].values)
    assert 1 <= n_iter <= 1000
    assert_allclose(
        np.asarray(idata.observed_data["y"].values, dtype=float), s.data, rtol=0, atol=0
    )

    # Monotone log posterior, one iteration at a time (EM's defining property).
    lp = np.asarray(idata.em_stats["log_posterior"].values, dtype=float)
    ll = np.asarray(idata.em_stats["log_likelihood"].values, dtype=float)
    assert lp.ndim == 1 and lp.size >= 1 and lp.shape == ll.shape
    assert idata.em_stats["log_posterior"].dims == ("iteration",)
    assert np.all(np.isfinite(lp)) and np.all(np.isfinite(ll))
    decrease = -np.diff(lp)
    assert np.all(decrease <= MONOTONE_RTOL * np.abs(lp[1:])), f"max decrease {decrease.max():.3g}"

    # Responsibilities: normalized, and equal to a brute-force enumeration at the estimate.
    r = idata.latent_posterior["z"]
    assert r.dims == ("obs", "z_support")
    r = np.asarray(r.values, dtype=float)
    assert np.all(r >= 0)
    # Normalization is exact up to a sum of K=2 doubles.
    assert_allclose(r.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert_allclose(r, s.oracle.responsibilities(est), rtol=0, atol=RESP_ATOL)

    # Pointwise observed-data log likelihood at the estimate, evaluated independently.
    ll_point = idata.log_likelihood["y"]
    assert ll_point.dims == ("chain", "draw", "obs")
    ll_point = np.asarray(ll_point.values[0, 0], dtype=float)
    ll_hat = s.oracle.log_likelihood(est)
    assert_allclose(ll_point, s.oracle.pointwise_log_likelihood(est), rtol=0, atol=LOGLIK_ATOL)
    assert_allclose(ll_point.sum(), ll_hat, rtol=TOTAL_RTOL)

    # The trace's last entries: evaluated at the last EM iterate, which is the returned
    # estimate or one converged step before it (pm_em polishes after the last iteration;
    # at TOL the polish gains < 1e-7 nats), plus the PyMC constant offsets above: 1e-7
    # relative either way (measured: <= 7e-10).
    lp_hat = s.oracle.log_posterior(est)
    assert_allclose(ll[-1], ll_hat, rtol=TOTAL_RTOL)
    assert_allclose(lp[-1], lp_hat, rtol=TOTAL_RTOL)
    # No estimate can beat the oracle's maximum (an oracle sanity check: the oracle's
    # Newton step is < 1e-10, so only round-off of the sum, ~1e-13 relative, is allowed),
    # and the fit reaches it: parameter errors within the 1e-4 of the oracle tests cost at
    # most ~1/2 * (n / sigma^2) * 1e-8 ~ 1e-4 nats at n = 20,000, i.e. ~2e-9 relative.
    assert lp_hat <= s.mode.log_posterior + 1e-12 * abs(s.mode.log_posterior)
    assert lp_hat >= s.mode.log_posterior - 1e-8 * abs(s.mode.log_posterior)
