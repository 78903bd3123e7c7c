"""SQUAREM acceleration: same fixed point as plain EM, fewer iterations, never a decrease."""

from dataclasses import dataclass

import numpy as np
import pymc as pm
import pytest

import pm_em
import pm_em.engine.mstep
from pm_em.engine.accel import EMMap, PlainStep, SquaremStep, make_step


@dataclass(frozen=True)
class _Point:
    log_posterior: float
    log_likelihood: float = 0.0


def _linear_map(rate: np.ndarray):
    """EM-like map x -> rate * x (fixed point 0) with log posterior -|x|²."""
    return EMMap(
        estep=lambda x: _Point(-float(x @ x)),
        mstep=lambda x, e: rate * x,
    )


def test_squarem_converges_faster_on_a_slow_linear_map():
    em = _linear_map(np.array([0.99, 0.9]))
    x_plain = x_sq = np.array([1.0, 1.0])
    plain, squarem = PlainStep(em), SquaremStep(em)
    e_plain = e_sq = em.estep(x_sq)
    history = [e_sq.log_posterior]
    for _ in range(30):
        x_plain, e_plain = plain(x_plain, e_plain)
        x_sq, e_sq = squarem(x_sq, e_sq)
        history.append(e_sq.log_posterior)
    assert np.all(np.diff(history) >= 0)
    # 30 plain iterations leave 0.99^30 = 0.74 of the slow coordinate.
    assert np.abs(x_sq).max() < 1e-3 * np.abs(x_plain).max()


def test_squarem_rejects_a_worse_extrapolation():
    """An objective that punishes anything beyond two plain steps forces the fallback."""
    rate = np.array([0.5])
    x0 = np.array([1.0])
    x2 = rate * rate * x0

    def estep(x):
        # Peaks at x2: plain EM increases it, the extrapolation overshoots past x2.
        return _Point(-float(np.abs(x - x2).sum()) if x[0] >= x2[0] else -1e6)

    em = EMMap(estep=estep, mstep=lambda x, e: rate * x)
    squarem = SquaremStep(em)
    # |r| / |v| = 2 for this map: let the cap allow exactly that.
    squarem.step_max = 2.0
    x, e = squarem(x0, estep(x0))
    assert squarem.n_rejected == 1
    np.testing.assert_allclose(x, x2)
    assert e.log_posterior >= estep(x0).log_posterior
    # The cap on the step length shrinks after a rejection at the cap.
    assert squarem.step_max == 1.0


def test_make_step_rejects_unknown_methods():
    em = _linear_map(np.array([0.5]))
    assert isinstance(make_step(em, False), PlainStep)
    assert isinstance(make_step(em, "squarem"), SquaremStep)
    with pytest.raises(ValueError, match="`accelerate` must be True, False or 'squarem'"):
        make_step(em, "anderson")


def _mixture(y):
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(3))
        mu = pm.Normal("mu", 0.0, 10.0, shape=3)
        sigma = pm.HalfNormal("sigma", 5.0, shape=3)
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
    return model


@pytest.mark.parametrize(
    "closed_form",
    [True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["closed_form", "numeric"],
)
def test_accelerated_fit_matches_plain_fit(closed_form, monkeypatch):
    rng = np.random.default_rng(7)
    z = rng.choice(3, size=600, p=[0.3, 0.5, 0.2])
    # Overlapping components: plain EM is slow here.
    y = rng.normal(np.array([-1.5, 0.0, 1.5])[z], 1.0)
    if not closed_form:
        monkeypatch.setattr(pm_em.engine.mstep, "match_closed_form", lambda problem: None)
    kwargs = dict(random_seed=3, progressbar=False, tol=1e-9, max_iter=5000, polish=False)
    plain = pm_em.fit(_mixture(y), **kwargs)
    fast = pm_em.fit(_mixture(y), accelerate=True, **kwargs)
    mode = pm_em.fit(_mixture(y), **{**kwargs, "polish": True})
    history = fast.em_stats.log_posterior.values
    # Monotone, like plain EM (floating-point noise aside).
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
    assert fast.em_stats.n_iter < plain.em_stats.n_iter / 2
    # Plain EM stops on its slow tail short of the mode; SQUAREM gets at least as close.
    final = {
        name: fit.em_stats.final_log_posterior.item()
        for name, fit in [("plain", plain), ("fast", fast), ("mode", mode)]
    }
    assert final["fast"] >= final["plain"] - 1e-9 * abs(final["plain"])
    assert final["mode"] >= final["fast"] - 1e-9 * abs(final["mode"])
    # Stopped by tol=1e-9 relative change per iteration: within ~1e-7 of the mode.
    assert final["mode"] - final["fast"] <= 1e-7 * abs(final["mode"])
    # Overlapping components make the mode flat: 1e-7 in log posterior allows ~1e-2 here.
    for name in ("w", "mu", "sigma"):
        np.testing.assert_allclose(
            fast.posterior[name].values, mode.posterior[name].values, atol=5e-2
        )
