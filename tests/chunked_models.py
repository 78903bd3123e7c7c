"""Seeded models and data for the chunked and distributed tests (tests/engine, tests/distributed).

Each builder returns ``(model, data)``: a 1-D Gaussian mixture (closed-form M-step), a 2-D
MvNormal mixture with missing entries (numeric M-step, missing values integrated out per
row), a Student-t mixture (numeric M-step for locations and scales), and a mixture declared
on a slice of its data through ``pm.Data`` (the out-of-core pattern: ``data=`` gives the rows).
Builders are cached, so that every test of a session shares one model object and therefore
its compiled kernels.
"""

from functools import cache

import numpy as np
import pymc as pm


def normal_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.35
    return np.where(labels, rng.normal(-2.0, 1.0, n), rng.normal(2.0, 0.7, n))


@cache
def normal_mixture(n: int = 300, seed: int = 1301):
    x = normal_rows(n, seed)
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.Normal("y", mu[z], sigma[z], observed=x)
    return model, x


@cache
def mvnormal_missing_mixture(n: int = 200, seed: int = 1302):
    rng = np.random.default_rng(seed)
    half = n // 2
    y = np.concatenate([rng.normal(-2.0, 1.0, (half, 2)), rng.normal(2.0, 1.0, (n - half, 2))])
    y[rng.random((n, 2)) < 0.1] = np.nan  # ~10% of entries, some whole rows
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=(2, 2))
        sd = pm.HalfNormal("sd", 2.0, shape=(2, 2))
        cov = (sd[:, :, None] * sd[:, None, :]) * np.eye(2)[None]  # (K, 2, 2), diagonal
        z = pm.Categorical("z", p=w, shape=n)
        pm.MvNormal("Y", mu[z], cov=cov[z], observed=y)
    return model, y


@cache
def student_t_mixture(n: int = 300, seed: int = 1303):
    rng = np.random.default_rng(seed)
    half = n // 2
    x = np.concatenate([rng.standard_t(4, half) - 3.0, rng.standard_t(4, n - half) + 3.0])
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=len(x))
        pm.StudentT("y", nu=4, mu=mu[z], sigma=sigma[z], observed=x)
    return model, x


@cache
def sliced_mixture(n_template: int = 400, seed: int = 1304):
    """A mixture declared on ``n_template`` rows of pm.Data; fits pass the rows in ``data=``."""
    with pm.Model() as model:
        y_data = pm.Data("y_data", normal_rows(n_template, seed))
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=y_data.shape[0])
        pm.Normal("y", mu[z], sigma[z], observed=y_data)
    return model


MODELS = {
    "normal": normal_mixture,
    "mvnormal_missing": mvnormal_missing_mixture,
    "student_t": student_t_mixture,
}

# EM converged this tightly leaves the final polish (L-BFGS, whose stopping rule looks at
# round-off-sized changes of the objective) nothing to move: the estimates of runs whose
# arithmetic differs only in rounding then agree to ~1e-13 (see tests/engine/test_chunked.py).
TIGHT = {"tol": 1e-13, "random_seed": 7, "progressbar": False}


def max_abs_diff(a, b, group: str = "posterior") -> float:
    """Largest absolute difference between the variables of one group of two DataTrees."""
    da, db = a[group].dataset, b[group].dataset
    assert set(da.data_vars) == set(db.data_vars)
    return max(float(np.abs(np.asarray(da[v]) - np.asarray(db[v])).max()) for v in da.data_vars)
