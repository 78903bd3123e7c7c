"""Oracles built on PyMC's own log density (nothing here imports pm_em).

`pymc_mode` maximizes ``model.logp(vars=terms, jacobian=False)`` (the log density
`pm.find_MAP` maximizes, in the constrained space) directly with scipy, from start values the
test gives, then takes Newton steps (a Hessian from central differences of PyMC's exact
gradient) until the step is at round-off level. For a marginal mixture (`pm.Mixture`,
`pm.NormalMixture`, ...) that density is the observed-data log posterior EM maximizes,
written by PyMC rather than by pm_em; with missing data, the terms are the parameters' priors
and PyMC's ``<y>_observed`` (PyMC's own imputed entries ``<y>_unobserved`` would otherwise be
maximized too, which `pm.find_MAP` does).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.initial_point import make_initial_point_fn
from pymc.pytensorf import compile as compile_pymc
from pymc.pytensorf import join_nonshared_inputs
from pytensor.graph.replace import graph_replace
from scipy import optimize


@dataclass(frozen=True)
class PyMCMode:
    values: dict[str, np.ndarray]  # constrained values of the parameters, by name
    log_posterior: float
    max_abs_grad: float  # at the mode, in the unconstrained space
    newton_step: float  # size of the last Newton step


def pymc_mode(
    model, starts: Sequence[Mapping[str, np.ndarray]], *, params=None, terms=None
) -> PyMCMode:
    """Maximize PyMC's log density over ``params`` from each start; keep the best, polished.

    Parameters
    ----------
    model : pm.Model
    starts : sequence of dict
        Constrained start values by variable name (the others: the model's initial point).
    params : sequence of free variables, optional
        What to maximize over; default every free variable not named ``*_unobserved``.
    terms : sequence of variables, optional
        Whose log density to include; default ``params`` and every observed variable.
    """
    if params is None:
        params = [rv for rv in model.free_RVs if not rv.name.endswith("_unobserved")]
    if terms is None:
        terms = [*params, *model.observed_RVs]
    value_vars = [model.rvs_to_values[rv] for rv in params]
    logp = model.logp(vars=terms, jacobian=False)
    point = model.initial_point()
    # Other free variables (PyMC's imputed entries) are held at their initial values.
    others = {
        v: pt.as_tensor(point[v.name])
        for v in model.value_vars
        if v.name in point and v not in value_vars
    }
    graphs = [logp, *model.replace_rvs_by_values(list(params))]
    if others:
        graphs = graph_replace(graphs, others, strict=False)
    start_point = {v.name: point[v.name] for v in value_vars}
    [logp_x, *constrained_x], x = join_nonshared_inputs(start_point, graphs, value_vars)
    grad = pytensor.grad(logp_x, x)
    fn = compile_pymc([x], [logp_x, grad], mode="CVM")

    def neg(u):
        f, g = fn(u)
        return (np.inf, np.zeros_like(u)) if not np.isfinite(f) else (-float(f), -np.asarray(g))

    best = None
    for start in starts:
        u0 = _to_unconstrained(model, start, value_vars)
        res = optimize.minimize(
            neg,
            u0,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 20000, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-11},
        )
        if best is None or -res.fun > -best.fun:
            best = res
    u, step = np.asarray(best.x, dtype="float64"), np.inf
    for _ in range(20):
        f, g = fn(u)
        delta = -np.linalg.solve(_hessian(fn, u), np.asarray(g))
        step = float(np.max(np.abs(delta)))
        if not (
            np.isfinite(step) and np.isfinite(fn(u + delta)[0]) and fn(u + delta)[0] >= f - 1e-9
        ):
            break
        u = u + delta
        if step < 1e-12 * max(1.0, float(np.max(np.abs(u)))):
            break
    f, g = fn(u)
    constrained = compile_pymc([x], constrained_x, mode="CVM")
    return PyMCMode(
        values={rv.name: np.asarray(v) for rv, v in zip(params, constrained(u), strict=True)},
        log_posterior=float(f),
        max_abs_grad=float(np.max(np.abs(g))),
        newton_step=step,
    )


def _hessian(fn, u: np.ndarray) -> np.ndarray:
    """Central differences of the exact gradient (its error only slows Newton's convergence)."""
    cols = []
    for j in range(u.size):
        h = 1e-5 * max(1.0, abs(u[j]))
        e = np.zeros_like(u)
        e[j] = h
        cols.append((np.asarray(fn(u + e)[1]) - np.asarray(fn(u - e)[1])) / (2.0 * h))
    hess = np.stack(cols, axis=1)
    return 0.5 * (hess + hess.T)


def _to_unconstrained(model, start, value_vars) -> np.ndarray:
    fn = make_initial_point_fn(
        model=model,
        overrides={model[k]: np.asarray(v, dtype="float64") for k, v in start.items()},
        jitter_rvs=set(),
        return_transformed=True,
    )
    point = fn(0)
    return np.concatenate([np.ravel(point[v.name]) for v in value_vars]).astype("float64")


def match_components(est: dict, ref: dict, groups: Sequence[Sequence[str]]) -> dict:
    """Permute ``est``'s components (K = 2) to best match ``ref``.

    ``groups`` lists, per kind of parameter, either one name (its leading axis indexes the
    components) or one name per component (e.g. a Cholesky factor per component).
    """

    def permuted(order):
        out = dict(est)
        for group in groups:
            if len(group) == 1:
                out[group[0]] = np.asarray(est[group[0]])[list(order)]
            else:
                for name, k in zip(group, order, strict=True):
                    out[name] = est[group[k]]
        return out

    candidates = [permuted((0, 1)), permuted((1, 0))]
    names = [n for g in groups for n in g]
    cost = [sum(np.sum((np.asarray(c[n]) - ref[n]) ** 2) for n in names) for c in candidates]
    return candidates[int(np.argmin(cost))]
