"""The numeric check that an explicit latent's elements are conditionally independent.

Enumeration sets every element of a latent to the same value at once; that is exact only when
each element's term depends on its own value alone. The shape check in
`pm_em.reading.enumerate.align` catches most violations; this one catches the rest (e.g.
``mu[z] + mu[z[::-1]]``, whose shapes agree) by evaluating the model's own joint density.
"""

import numpy as np
import pytensor.tensor as pt
from pymc.pytensorf import join_nonshared_inputs

from pm_em.compiling import CHECK_MODE, compile_with_data
from pm_em.reading.problem import EMProblem, Latent

__all__ = ["check_separable"]


def check_separable(problem: EMProblem, spec: Latent, terms: list) -> None:
    """Refuse a latent whose joint density does not split into one term per element.

    Enumeration computes each element's term with every element set to the same value.
    That equals the true joint density only if element i's term depends on z_i alone, so
    compare the two on random assignments at a random parameter point: they agree exactly
    for a separable density and (almost surely) differ otherwise.
    """
    model = problem.model
    z = model[spec.name]
    zv = model.rvs_to_values[z]
    joint = pt.add(*[t.graph.sum().astype("float64") for t in terms])
    value_vars = [model.rvs_to_values[model[p.name]] for p in problem.params]
    [joint_x], x = (
        join_nonshared_inputs(
            {p.value_name: np.zeros(p.shape) for p in problem.params}, [joint], value_vars
        )
        if value_vars
        else ([joint], problem.x)
    )
    # pymc's compile turns parameter checks (e.g. a non-PD covariance at the random test
    # point) into -inf instead of raising. With the data as inputs, a model of the same
    # structure reuses both functions (`pm_em.compile_cache`).
    joint_call = compile_with_data(
        model, [x, zv], [joint_x], name="separability check", mode=CHECK_MODE
    )
    log_joint_call = compile_with_data(
        model, [problem.x], [spec.log_joint], name="separability check", mode=CHECK_MODE
    )

    def joint_fn(x_value, z_value):
        return joint_call(x_value, z_value)[0]

    def log_joint_fn(x_value):
        return log_joint_call(x_value)[0]

    rng = np.random.default_rng(20261122)
    start = np.where(np.isfinite(problem.start), problem.start, 0.0)
    # Several assignments: a structured one (a palindrome for z[::-1]) can agree by chance.
    for attempt in range(8):
        if attempt % 4 == 0:
            x_test = start + rng.normal(0.0, 0.5, size=start.shape)
            table = np.asarray(log_joint_fn(x_test))  # (*shape, K)
        # Mixed assignments, uniform over each element's possible values: an assignment
        # with every element equal is exactly what enumeration computes, and proves nothing.
        feasible = np.isfinite(table)
        weights = np.where(feasible.any(axis=-1, keepdims=True), feasible, 1.0)
        cdf = np.cumsum(weights / weights.sum(axis=-1, keepdims=True), axis=-1)
        u = rng.uniform(size=(*spec.shape, 1))
        idx = np.minimum((cdf < u).sum(axis=-1), table.shape[-1] - 1)
        enumerated = np.take_along_axis(table, idx[..., None], axis=-1).sum()
        if not np.isfinite(enumerated):
            continue
        direct = float(joint_fn(x_test, spec.support[idx].astype(zv.dtype)))
        # float32 logp terms (DiscreteUniform's) carry ~1e-7 relative error; an interaction
        # between elements changes the sum by far more at a random point.
        if not np.isclose(enumerated, direct, rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"The joint density of latent '{spec.name}' and {list(spec.dependents)} does "
                f"not split into one term per element of '{spec.name}': some element's "
                "density depends on other elements of the latent (e.g. through a sum or a "
                "chain). Enumerating each element on its own would be wrong, so pm_em refuses "
                "this model. Only latents whose elements are conditionally independent are "
                "supported."
            )
