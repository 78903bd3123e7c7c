"""`pm_em.reading.initial_point`: PyMC's initial point, evaluated without compiling it."""

import numpy as np
import pymc as pm
import pytest
from pymc.distributions.transforms import ordered
from pymc.initial_point import make_initial_point_fn

from pm_em.reading.initial_point import initial_point


def _model():
    with pm.Model() as model:
        pm.Dirichlet("w", a=np.ones(3))
        pm.Normal("mu", 0.0, 10.0, shape=3, transform=ordered, initval=np.array([-1.0, 0.0, 1.0]))
        pm.HalfNormal("sigma", 5.0, shape=3)
        pm.Uniform("u", -2.0, 3.0)
        pm.Normal("drawn", 0.0, 1.0, shape=2, initval="prior")  # a prior draw: seeded
        pm.Categorical("z", p=np.ones(3) / 3, shape=4)
    return model


@pytest.mark.parametrize("seed", [0, 7])
def test_initial_point_is_pymcs(seed):
    model = _model()
    overrides = {model["sigma"]: np.array([1.0, 2.0, 3.0])}
    want = make_initial_point_fn(
        model=model, overrides=overrides, jitter_rvs=set(), return_transformed=True
    )(seed)
    got = initial_point(model, overrides, seed=seed)
    assert set(got) == set(want)
    for name, value in want.items():
        # The same graph, evaluated node by node: equal to round-off.
        np.testing.assert_allclose(got[name], value, rtol=1e-14, err_msg=name)
