"""`pm_em.reading.component_logp`: a dependent's density per support value, as PyMC's Mixture."""

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
from pytensor.graph.replace import vectorize_graph

from pm_em.reading.component_logp import component_logps
from pm_em.reading.enumerate import enumerated
from tests.oracles import make_rng

N, K = 50, 3


def _models(rng):
    x2 = rng.normal(size=(N, 2))
    x1 = rng.normal(size=N)
    with pm.Model() as mv:
        mu = pm.Normal("mu", 0.0, 5.0, shape=(K, 2))
        chols = [
            pm.LKJCholeskyCov(f"c{k}", n=2, eta=1.0, sd_dist=pm.HalfNormal.dist(2.0))[0]
            for k in range(K)
        ]
        z = pm.Categorical("z", p=np.ones(K) / K, shape=N)
        pm.MvNormal("y", mu=mu[z], chol=pt.stack(chols)[z], observed=x2)
    with pm.Model() as uni:
        mu = pm.Normal("mu", 0.0, 5.0, shape=K)
        sigma = pm.HalfNormal("sigma", 2.0, shape=K)
        z = pm.Categorical("z", p=np.ones(K) / K, shape=N)
        pm.Normal("y", mu=mu[z] * 2.0 + 1.0, sigma=sigma[z], observed=x1)
    return {"mvnormal_lkj": mv, "normal_affine": uni}


def test_component_densities_equal_the_vectorized_enumeration():
    rng = make_rng(41)
    for name, model in _models(rng).items():
        zv = model.rvs_to_values[model["z"]]
        dep = model["y"]
        support = np.arange(K)
        logps = component_logps(model, zv, dep, support)
        assert logps is not None, name
        (term,) = model.logp(vars=[dep], jacobian=False, sum=False)
        vectorized = vectorize_graph(term, replace={zv: enumerated(zv, support, (N,))})  # (K, N)
        inputs = [v for v in model.value_vars if v is not zv]
        fn = pytensor.function(
            inputs, [pt.stack([pt.broadcast_to(lp, (N,)) for lp in logps]), vectorized]
        )
        point = model.initial_point()
        args = [point[v.name] + rng.normal(0.0, 0.2, size=np.shape(point[v.name])) for v in inputs]
        got, want = fn(*args)
        np.testing.assert_allclose(got, want, rtol=1e-10, err_msg=name)


def test_other_structures_keep_the_vectorized_enumeration():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0.0, 5.0, shape=K)
        z = pm.Categorical("z", p=np.ones(K) / K, shape=N)
        # The latent reaches the mean through a reduction: not a broadcast of mu[k].
        pm.Normal("y", mu=mu[z].cumsum(), sigma=1.0, observed=np.zeros(N))
    zv = model.rvs_to_values[model["z"]]
    assert component_logps(model, zv, model["y"], np.arange(K)) is None
