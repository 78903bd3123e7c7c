"""The structural compile cache: a new model of the same structure reuses compiled functions.

`pm_em.compile_cache.cached_function` keys each compile on the graph's structure, with the
data lifted into inputs (`pm_em.compiling.compile_with_data`), so a second model that differs
only in its data must compile nothing and still compute with its own data.
"""

import numpy as np
import pymc as pm
import pytest

import pm_em
from pm_em import compile_cache
from tests.oracles import make_rng

N = 200


def _model(y, mu_sd=10.0):
    with pm.Model() as model:
        w = pm.Dirichlet("w", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, mu_sd, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=len(y))
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=y)
    return model


def _data(rng, means):
    return np.concatenate([rng.normal(means[0], 1.0, N // 2), rng.normal(means[1], 0.7, N // 2)])


def _fit(model):
    return pm_em.fit(model, random_seed=1, progressbar=False)


@pytest.fixture
def fresh_cache():
    compile_cache.clear()
    yield
    compile_cache.clear()


@pytest.mark.usefixtures("fresh_cache")
def test_a_new_model_of_the_same_structure_compiles_nothing(monkeypatch):
    rng = make_rng(12)
    y1, y2 = _data(rng, (-2.0, 2.0)), _data(rng, (-1.0, 3.0))
    _fit(_model(y1))
    first = compile_cache.cache_info()
    assert first["misses"] > 0 and first["uncacheable"] == 0
    cached = _fit(_model(y2))
    second = compile_cache.cache_info()
    # Every function of the second fit came from the cache, none compiled.
    assert second["misses"] == first["misses"]
    assert second["hits"] >= first["misses"]
    # ... and computed with the second model's data: the same answer as compiled anew.
    monkeypatch.setenv("PM_EM_COMPILE_CACHE", "0")
    anew = _fit(_model(y2))
    assert compile_cache.cache_info()["misses"] == first["misses"]
    for name in ("w", "mu", "sigma"):
        # Same functions, same data, same start: the same bits up to round-off.
        np.testing.assert_allclose(
            cached.posterior[name].values, anew.posterior[name].values, rtol=1e-12
        )
    assert not np.allclose(cached.posterior["mu"].values, _fit(_model(y1)).posterior["mu"].values)


@pytest.mark.usefixtures("fresh_cache")
def test_a_different_prior_constant_is_a_different_function():
    y = _data(make_rng(13), (-2.0, 2.0))
    _fit(_model(y))
    misses = compile_cache.cache_info()["misses"]
    # A hyperparameter is a constant of the graph: a different value cannot share a function.
    strong = _fit(_model(y, mu_sd=0.1))
    assert compile_cache.cache_info()["misses"] > misses
    assert np.all(np.abs(strong.posterior["mu"].values) < 1.0)  # the strong prior is honoured


@pytest.mark.usefixtures("fresh_cache")
def test_pm_set_data_is_seen_by_cached_functions():
    rng = make_rng(14)
    x1, x2 = _data(rng, (-2.0, 2.0)), _data(rng, (-1.0, 3.0))
    with pm.Model() as model:
        data = pm.Data("data", x1)
        w = pm.Dirichlet("w", a=np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=N)
        pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=data)
    before = _fit(model)
    with model:
        pm.set_data({"data": x2})
    after = _fit(model)
    expected = _fit(_model(x2))
    np.testing.assert_allclose(after.posterior["mu"].values, expected.posterior["mu"].values, 1e-8)
    assert not np.allclose(after.posterior["mu"].values, before.posterior["mu"].values)


def test_compiled_functions_are_shared_between_threads_safely():
    from concurrent.futures import ThreadPoolExecutor

    rng = make_rng(15)
    ys = [_data(rng, (-2.0, 2.0 + 0.5 * i)) for i in range(3)]
    alone = [_fit(_model(y)).posterior["mu"].values for y in ys]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda y: _fit(_model(y)).posterior["mu"].values, ys))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
