"""Health checks of a fit: a usable start, degenerate components, empty ones, odd priors.

A **degenerate** component is one whose likelihood is unbounded: under flat (or HalfNormal)
priors on scales a component can sit on a single distinct value (one point, or tied points)
and shrink its scale without end, and the log posterior grows with it. Each component is
judged by its own scale against the spread of the data, and by the distinct values it holds
(`Health.degenerate`), from the `Latent`/`EStepResult` contract alone: the responsibilities,
the per-element log joint density (``log_resp + log_marginal``) and the latent's data rows
(`pm_em.engine.profile`). The rules, with s_k the component's own scale and S the data's
spread (both per observed value):

- s_k is the scale of the Gaussian whose log density equals the component's average log
  density at the data it explains, ``log s_k = -(mean_i r_ik log f_k(y_i)) - ½ log(2πe)``
  (for a Gaussian component, its sd; for any family, a scale in the same units);
- a component holding at most d distinct rows (d values per row: no spread in some
  direction) with ``s_k < 1e-3 S`` is collapsing onto them, if the log posterior is still
  rising there (its gradient reaches a tenth of the component's expected count, as it does
  when the scale can shrink further: each halving of a scale on N_k tied values adds about
  N_k log 2); at a stationary point the prior has stopped the shrinking (e.g. an
  InverseGamma scale prior) and the mode is a genuine one;
- any component with ``s_k < 1e-10 S`` is degenerate, whatever it holds (a scale below the
  data's numerical resolution: an exact fit through a few points).

Every iteration, a cheaper check (`Health.spike`) looks only at the pointwise log marginal,
which every E-step returns: an element whose density implies a component scale below
``1e-10 S`` abandons the run early. Only continuous likelihoods are judged: a probability
mass is at most 1, so no component of a discrete likelihood can collapse.

An **empty** component has (almost) no responsibility left: its parameters are not
informed by the data.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from pymc.pytensorf import constant_fold
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.basic import BetaRV, DirichletRV
from pytensor.tensor.sharedvar import TensorSharedVariable
from pytensor.tensor.variable import TensorConstant

from pm_em.engine.estep import EStepResult
from pm_em.engine.profile import LatentData, latent_data
from pm_em.reading.problem import EMProblem

__all__ = [
    "COMPONENT_KINDS",
    "EMPTY_COUNT",
    "Degeneracy",
    "Health",
    "boundary_priors",
    "check_components",
    "check_start",
    "empty_components",
]

# Below this expected count a categorical component is reported as empty.
EMPTY_COUNT = 1e-3
# Latent kinds whose support values are exchangeable mixture components (the count of
# components against the count of distinct values applies to these alone: a Binomial's
# support values are counts, a DiscreteUniform is often a change point).
COMPONENT_KINDS = ("Categorical", "Bernoulli", "Mixture")
# Latents with a point-mass component by construction (a hurdle's zeros): not judged at the
# end of a run. A chain's log_resp is computed on request, and its log marginal is
# p(y_t | y_<t), so only the per-iteration check applies to it.
_POINT_MASS_KINDS = ("Hurdle", "ZeroInflated")
# The chunked engine's collapse check (one element against the median of a sample,
# pm_em.engine.chunked_steps) still uses this threshold, in nats per value.
_COLLAPSE_NATS = 25.0
# log(2πe) / 2: a Gaussian's average log density at its own data is -log(sd) - this.
_HALF_LOG_2PIE = 0.5 * np.log(2 * np.pi * np.e)
# A component this much narrower than the data's spread, on at most d distinct rows, is
# collapsing onto them.
_TIED_SCALE = 1e-3
# A component this much narrower than the data's spread is degenerate whatever it holds.
_RESOLUTION_SCALE = 1e-10
# Share of a component's responsibility mass that its distinct rows must cover.
_HELD_SHARE = 1.0 - 1e-3
# A gradient at least this many times a tied component's expected count: still rising.
_RISING = 0.1


@dataclass(frozen=True)
class Degeneracy:
    """A degenerate component: which one, and why (``message`` completes a sentence)."""

    latent: str
    component: object
    message: str


class Health:
    """Degeneracy checks of one fit, with the data profiles they need computed once.

    Parameters
    ----------
    problem : EMProblem
    gradient : callable, optional
        ``gradient(x, e) -> ndarray``: the gradient of the observed-data log posterior at
        ``x`` given its E-step result ``e``. Without it a component on tied values with a
        small scale counts as degenerate even at a stationary point.
    """

    def __init__(self, problem: EMProblem, gradient: Callable | None = None):
        self.problem = problem
        self.data = latent_data(problem)
        self.gradient = gradient

    def _judged(self, end_of_run: bool = False) -> Iterator[tuple[int, LatentData]]:
        for j, data in enumerate(self.data):
            if data is None or not data.continuous or not np.isfinite(data.log_spread):
                continue
            lat = data.latent
            if end_of_run and (lat.coupling == "chain" or lat.kind in _POINT_MASS_KINDS):
                continue
            yield j, data

    def spike(self, e) -> str | None:
        """Describe a degenerate point from the pointwise log marginal of any E-step, or None."""
        if not np.isfinite(e.log_posterior):
            return f"the log posterior became {e.log_posterior}"
        for j, data in self._judged():
            lat = data.latent
            flat = np.asarray(e.log_marginal[j]).reshape(-1)
            top = int(np.argmax(flat))
            per_value = flat[top] / lat.values_per_element
            # A Gaussian of sd s peaks at -log(s) - log(2π)/2: the scale this density needs.
            log_scale = -per_value - 0.5 * np.log(2 * np.pi)
            if log_scale - data.log_spread < np.log(_RESOLUTION_SCALE):
                return (
                    f"element {top} of {list(lat.observed)} (latent '{lat.name}') has a "
                    f"density that only a component {np.exp(log_scale - data.log_spread):.2g} "
                    "times as wide as the data's spread can give: a component collapsed onto it"
                )
        return None

    def degenerate(self, e: EStepResult, x: np.ndarray | None = None) -> Degeneracy | None:
        """Return the first degenerate component at a full E-step result ``e`` at ``x``."""
        if not np.isfinite(e.log_posterior):
            return Degeneracy("", None, f"the log posterior became {e.log_posterior}")
        slope = None
        if self.gradient is not None and x is not None:

            def slope():
                return float(np.max(np.abs(self.gradient(x, e)), initial=0.0))

        for j, data in self._judged(end_of_run=True):
            found = _degenerate_component(data, e.log_resp[j], e.log_marginal[j], e.resp[j], slope)
            if found is not None:
                return found
        return None


def _component_log_scales(log_resp, log_marginal, resp) -> tuple[np.ndarray, np.ndarray]:
    """Each component's expected count and log own scale (Gaussian-equivalent, per row)."""
    n_support = log_resp.shape[-1]
    r = resp.reshape(-1, n_support)
    n = r.shape[0]
    counts = r.sum(axis=0)
    log_joint = log_resp.reshape(-1, n_support) + log_marginal.reshape(-1, 1)
    with np.errstate(invalid="ignore"):
        weighted = np.where(r > 0, r * log_joint, 0.0).sum(axis=0)
    safe = np.maximum(counts, np.finfo(float).tiny)
    # The average log density of the component alone: its log weight, about log(N_k / n)
    # at an EM fixed point, taken out of the joint.
    mean_log_density = weighted / safe - np.log(safe / n)
    return counts, mean_log_density


def _degenerate_component(data: LatentData, log_resp, log_marginal, resp, slope):
    lat = data.latent
    counts, mean_log_density = _component_log_scales(log_resp, log_marginal, resp)
    r = resp.reshape(-1, lat.support.size)
    n_features = data.rows.shape[1]
    for k in np.flatnonzero(counts >= EMPTY_COUNT):
        log_scale = -mean_log_density[k] / lat.values_per_element - _HALF_LOG_2PIE
        ratio = float(np.exp(log_scale - data.log_spread))
        value = lat.support[k].item()
        where = f"component {value} of latent '{lat.name}'"
        if ratio < _TIED_SCALE:
            held, top_row = data.distinct_held(r[:, k], _HELD_SHARE)
            rising = slope is None or slope() >= _RISING * counts[k]
            if held <= n_features and rising:
                at = (
                    f"{float(top_row[0]):.6g}"
                    if top_row.size == 1
                    else np.array2string(top_row, precision=6)
                )
                return Degeneracy(
                    lat.name,
                    value,
                    f"{where} collapsed onto {held} distinct value(s) of "
                    f"{list(lat.observed)} ({counts[k]:.4g} expected elements, the most at "
                    f"{at}): its scale shrank to {ratio:.2g} times the data's spread",
                )
        if ratio < _RESOLUTION_SCALE:
            return Degeneracy(
                lat.name,
                value,
                f"{where} has a scale {ratio:.2g} times the spread of {list(lat.observed)}, "
                "below the data's numerical resolution: it fits a few points exactly",
            )
    return None


def check_components(problem: EMProblem, health: Health) -> None:
    """Refuse a mixture with at least as many components as its data have distinct values.

    With D distinct rows, more than D components cannot all be told apart (some must be
    empty or duplicates); with a density, D components each sit on one value and collapse.
    """
    for data in health.data:
        if data is None or data.latent.kind not in COMPONENT_KINDS:
            continue
        lat = data.latent
        n_support = lat.support.size
        n_distinct = data.n_distinct(at_least=n_support)
        if n_distinct < n_support or (n_distinct == n_support and data.continuous):
            if data.continuous:
                advice = (
                    "Each component of a continuous likelihood needs at least two distinct "
                    "values (on one value its scale shrinks to zero): "
                    + (
                        f"use at most {n_distinct - 1} components."
                        if n_distinct > 1
                        else "a continuous likelihood cannot be fitted to a single value."
                    )
                )
            else:
                advice = (
                    "Components beyond the distinct values cannot be told apart: use at most "
                    f"{n_distinct} components."
                )
            raise ValueError(
                f"Latent '{lat.name}' has {n_support} components, but the data it explains "
                f"({list(lat.observed)}) take only {n_distinct} distinct value(s). {advice}"
            )


def boundary_priors(problem: EMProblem) -> list[str]:
    """Describe each Dirichlet or Beta parameter whose prior has a concentration below 1.

    Such a density is unbounded as a probability goes to 0, so the posterior has no global
    mode: it is infinite on the boundary, and EM finds at best a local mode inside.
    """
    found = []
    for p in problem.params:
        rv = problem.model[p.name]
        if not isinstance(rv.owner.op, DirichletRV | BetaRV):
            continue
        params = rv.owner.op.dist_params(rv.owner)
        if all(isinstance(v, TensorConstant) for v in params):
            values = [np.asarray(v.data) for v in params]  # the common case, no rewriting
        else:
            values = constant_fold(params, raise_not_constant=False)
        below = [np.asarray(v) for v in values if isinstance(v, np.ndarray | np.number)]
        if len(below) == len(params) and any(np.any(v < 1) for v in below):
            shown = ", ".join(np.array2string(v.ravel(), precision=3) for v in below)
            found.append(f"'{p.name}' ({type(rv.owner.op).__name__.removesuffix('RV')}({shown}))")
    return found


def check_start(problem: EMProblem, e: EStepResult, x: np.ndarray, run: int) -> None:
    """Refuse a starting point of zero density, naming the parameter or data that cause it."""
    if np.isfinite(e.log_posterior):
        return
    values = problem.from_x(x)
    for p in problem.params:
        if not np.all(np.isfinite(values[p.value_name])):
            raise ValueError(f"The starting value of '{p.name}' is not finite (run {run}).")
    if not np.isfinite(e.log_prior):
        raise ValueError(
            "The log prior is not finite at the starting point (run "
            f"{run}): check the priors and `initvals` of the model's parameters "
            f"{[p.name for p in problem.params]}; every starting value must lie in its "
            "prior's support."
        )
    for lat, lm in zip(problem.latents, e.log_marginal, strict=True):
        _check_latent_start(lat, np.asarray(lm).ravel(), run)
    names = list(problem.log_lik_rest)
    for name, ll, graph in zip(names, e.log_lik_rest, problem.log_lik_rest.values(), strict=True):
        if np.isnan(ll).any():
            _refuse_nan(graph, f"observed variable '{name}'", np.flatnonzero(np.isnan(ll)), run)
        if not np.all(np.isfinite(ll)):
            raise ValueError(
                f"Observed variable '{name}' has zero density at the starting point (run "
                f"{run}); check its data against the model's support, or pass `initvals`."
            )
    raise ValueError(f"The log posterior is {e.log_posterior} at the starting point (run {run}).")


def _check_latent_start(lat, lm: np.ndarray, run: int) -> None:
    nan = np.flatnonzero(np.isnan(lm))
    if nan.size:
        _refuse_nan(lat.log_joint, f"latent '{lat.name}' with {list(lat.observed)}", nan, run)
    bad = np.flatnonzero(~np.isfinite(lm))
    if bad.size:
        raise zero_density_error(lat, bad, run)


def zero_density_error(lat, bad: np.ndarray, run: int) -> ValueError:
    """Return the error for elements ``bad`` of latent ``lat`` that no support value explains."""
    return ValueError(
        f"At the starting point (run {run}) no value of latent '{lat.name}' can "
        f"explain element(s) {bad[:5].tolist()} of {list(lat.observed)}: every "
        "assignment has zero density. Check the data against the model's support, "
        "or start elsewhere with `initvals`."
    )


def _refuse_nan(graph, what: str, elements: np.ndarray, run: int) -> None:
    """Raise for a NaN density, naming the covariate (a data input with NaN) behind it."""
    sources = []
    for var in ancestors([graph]):
        if isinstance(var, TensorSharedVariable):
            value, label = var.get_value(borrow=True), f"data variable '{var.name}'"
        elif isinstance(var, TensorConstant) and var.type.ndim > 0:
            value = var.data
            label = f"a constant array of shape {value.shape} (a covariate passed as an array)"
        else:
            continue
        if np.issubdtype(value.dtype, np.floating) and np.isnan(value).any():
            sources.append(f"{label} with NaN at {np.flatnonzero(np.isnan(value))[:5].tolist()}")
    cause = (
        f"The model's graph holds {'; '.join(sources)}. PyMC imputes missing values only in "
        "observed data: fill or drop those entries of the covariate."
        if sources
        else "Check the model's inputs for NaN."
    )
    raise ValueError(
        f"At the starting point (run {run}) the density of {what} is NaN at element(s) "
        f"{elements[:5].tolist()}. {cause}"
    )


def empty_components(problem: EMProblem, e: EStepResult) -> dict[str, list]:
    """Return ``{latent: support values}`` whose expected count is below `EMPTY_COUNT`."""
    empty = {}
    for lat, resp in zip(problem.latents, e.resp, strict=True):
        if lat.kind not in ("Categorical", "Mixture"):  # not a Bernoulli's or a hurdle's zeros
            continue
        counts = resp.reshape(-1, lat.support.size).sum(axis=0)
        ks = lat.support[counts < EMPTY_COUNT].tolist()
        if ks:
            empty[lat.name] = ks
    return empty
