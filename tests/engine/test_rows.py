"""Rebinding a problem to blocks of rows (pm_em.engine.rows) and the checks on `data=`.

What is found as rows, which names `data=` accepts, and the models a chunked fit refuses
(each with its message); the numeric check of every kernel is in test_chunked.py.
"""

import numpy as np
import pymc as pm
import pytest

import pm_em
from pm_em.engine.compiled import compile_model
from pm_em.engine.rows import FILLED, MISSING_MASK, VALUES, bind_rows, resolve_sources
from tests.chunked_models import mvnormal_missing_mixture, normal_mixture, sliced_mixture


def _binding(model):
    return bind_rows(compile_model(model).problem)


def test_rows_of_an_observed_constant():
    model, x = normal_mixture()
    binding = _binding(model)
    assert binding.n_template == len(x)
    assert [(i.source, i.role) for i in binding.inputs] == [("y", VALUES)]
    assert binding.observed_sources == {"y": "y"}
    np.testing.assert_array_equal(binding.template["y"], x)


def test_rows_of_a_data_container_and_its_alias():
    binding = _binding(sliced_mixture())
    assert binding.sources == ("y_data",)
    assert binding.aliases == {"y": "y_data"}  # data={"y": ...} names the same rows
    sources, n = resolve_sources(binding, {"y": np.zeros(1000)})
    assert n == 1000 and sources["y_data"].shape == (1000,)


def test_rows_of_an_mvnormal_with_missing_entries():
    model, y = mvnormal_missing_mixture()
    binding = _binding(model)
    assert {(i.source, i.role) for i in binding.inputs} == {("Y", MISSING_MASK), ("Y", FILLED)}
    assert binding.imputed == {"Y"}
    np.testing.assert_array_equal(np.isnan(binding.template["Y"]), np.isnan(y))


@pytest.fixture(scope="module")
def regression():
    """A mixture of regressions with two per-row containers."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=50)
    with pm.Model() as model:
        x_data = pm.Data("x_data", x)
        y_data = pm.Data("y_data", 2 * x + rng.normal(size=50))
        w = pm.Dirichlet("w", np.ones(2))
        b = pm.Normal("b", 0, 5, shape=2)
        z = pm.Categorical("z", p=w, shape=x_data.shape[0])
        pm.Normal("y", b[z] * x_data, 1.0, observed=y_data)
    return model


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {"q": np.zeros(3)},
            r"data= names 'q', which is not a per-row data container of the "
            r"model. The model's per-row containers and observed variables: \['x_data', 'y_data'\]",
        ),
        (
            {"x_data": np.zeros((60, 2)), "y_data": np.zeros(60)},
            r"data\['x_data'\] has shape \(60, 2\), but 'x_data' has rows of shape \(\)",
        ),
        (
            {"x_data": np.zeros(60), "y_data": np.zeros(61)},
            r"different numbers of rows \{'x_data': 60, 'y_data': 61\}",
        ),
        (
            {"x_data": np.zeros(60)},
            r"data= gives 60 rows, but not for 'y_data', which has 50 "
            r"rows in the model. Pass every per-row container",
        ),
        ({"y": np.zeros(50), "y_data": np.zeros(50)}, r"data= gives 'y_data' twice"),
    ],
)
def test_bad_data_names_and_shapes(regression, data, match):
    with pytest.raises(ValueError, match=match):
        resolve_sources(bind_rows(compile_model(regression).problem), data)


def test_float_rows_for_an_integer_container():
    with pm.Model() as model:
        counts = pm.Data("counts", np.arange(30) % 4)
        w = pm.Dirichlet("w", np.ones(2))
        rate = pm.Gamma("rate", 2, 1, shape=2)
        z = pm.Categorical("z", p=w, shape=counts.shape[0])
        pm.Poisson("k", rate[z], observed=counts)
    with pytest.raises(
        ValueError,
        match=r"data\['counts'\] has dtype float64, but 'counts' "
        r"holds integers in the model",
    ):
        resolve_sources(_binding(model), {"counts": np.zeros(40)})


def test_nan_and_inf_in_rows_without_missing_values():
    model = sliced_mixture()
    rows = np.linspace(-3, 3, 1000)
    rows[700] = np.nan
    with pytest.raises(ValueError, match=r"The rows 500-1000 of 'y_data' contain 1 NaN value"):
        pm_em.fit(model, data={"y_data": rows}, chunk_size=500, progressbar=False)
    rows[700] = np.inf
    with pytest.raises(ValueError, match=r"The rows 500-1000 of 'y_data' contain 1 infinite"):
        pm_em.fit(model, data={"y_data": rows}, chunk_size=500, progressbar=False)


def test_elementwise_missing_values_are_refused():
    x = np.linspace(-2, 2, 40)
    x[[3, 17]] = np.nan
    with pm.Model() as model:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0, 5, shape=2)
        z = pm.Categorical("z", p=w, shape=40)
        pm.Normal("y", mu[z], 1.0, observed=x)
    with pytest.raises(
        ValueError,
        match=r"'y' has missing entries in an elementwise likelihood"
        r".*drop the incomplete entries",
    ):
        pm_em.fit(model, chunk_size=10, progressbar=False)


def test_a_scalar_latent_is_refused():
    with pm.Model() as model:
        mu = pm.Normal("mu", 0, 5, shape=2)
        z = pm.Bernoulli("z", 0.5)
        pm.Normal("y", mu[z], 1.0, observed=np.linspace(-1, 1, 20))
    with pytest.raises(ValueError, match=r"Latent 'z' is a scalar: a chunked fit splits"):
        pm_em.fit(model, chunk_size=5, progressbar=False)


def test_a_term_that_is_no_sum_over_rows_is_refused():
    # A potential on the mean of the data: adding it up per chunk would count it once per
    # chunk, with a different mean each time. The one-off check of the kernels sees it.
    x = np.linspace(-2, 2, 30)
    with pm.Model() as model:
        y_data = pm.Data("y_data", x)
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0, 5, shape=2)
        z = pm.Categorical("z", p=w, shape=y_data.shape[0])
        pm.Normal("y", mu[z], 1.0, observed=y_data)
        pm.Potential("centre", -((y_data.mean() - mu.mean()) ** 2))
    with pytest.raises(
        ValueError,
        match=r"cannot split this model's E-step into blocks of rows:"
        r" the per-row potentials: differs",
    ):
        pm_em.fit(model, chunk_size=10, progressbar=False)
