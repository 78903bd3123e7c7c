"""Missing values: find PyMC's imputed variables and integrate them out exactly.

PyMC splits an observed variable with NaN into ``<name>_observed``, a free
``<name>_unobserved`` and a Deterministic ``<name>`` that puts them back together. EM treats
the unobserved entries as latent, and integrates them out in closed form:

- an entry of an elementwise likelihood (any distribution) contributes nothing to the
  observed-data likelihood once integrated: its term is dropped, and its conditional
  distribution given the data is the model's own (mixed over the latent's responsibilities
  inside a mixture);
- entries of an ``MvNormal`` row (PyMC's ``PartialObservedRV``) are integrated out of the
  Gaussian: the row's observed-data log likelihood is the marginal Gaussian density of its
  observed entries, and the missing entries' conditional distribution is Gaussian
  (`gaussian_rows`);
- a marginal mixture (`pm.Mixture`, ...) with missing data is also one ``PartialObservedRV``
  block: `pm_em.reading.mixture_missing` integrates it out with the mixture's latent.

So the observed-data log posterior, which EM increases, is exact; the conditional means and
sds are reported as imputations. Missing values that other variables depend on are refused.
This module only reads graphs and builds pytensor expressions of the value variables;
`pm_em.reading.build` decides where they go.
"""

import warnings
from dataclasses import dataclass
from functools import singledispatch

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.mixture import _BaseMixtureRV
from pymc.distributions.moments import mean as rv_mean
from pymc.exceptions import UndefinedMomentException
from pytensor.graph.basic import Constant, Variable
from pytensor.graph.replace import vectorize_graph
from pytensor.graph.traversal import ancestors
from pytensor.tensor.random.basic import (
    BernoulliRV,
    BetaRV,
    BinomialRV,
    ExponentialRV,
    GammaRV,
    LaplaceRV,
    LogNormalRV,
    MvNormalRV,
    NegBinomialRV,
    NormalRV,
    PoissonRV,
    StudentTRV,
    UniformRV,
)

from pm_em.exceptions import MissingMomentWarning
from pm_em.reading.enumerate import element_of, enumerated
from pm_em.reading.problem import Latent, MissingValues

__all__ = [
    "FILLED_SUFFIX",
    "MASK_SUFFIX",
    "Imputed",
    "find_imputed",
    "gaussian_rows",
    "missing_values",
    "mix_conditionals",
    "mvnormal_rows",
    "split_moments",
    "variance",
]


# Names of the constants that carry an MvNormal variable's missingness mask (1.0 where missing)
# and its data with 0 where missing, after the variable's name: see `mvnormal_rows`.
MASK_SUFFIX = "__missing_mask"
FILLED_SUFFIX = "__filled"


@dataclass(frozen=True)
class Imputed:
    """One observed variable with missing entries, as PyMC rewrote it.

    Attributes
    ----------
    name : str
        The Deterministic that holds the completed data (the user's variable name).
    observed, unobserved : str
        PyMC's ``<name>_observed`` (observed RV) and ``<name>_unobserved`` (free RV).
    mask : ndarray of bool, full shape
        True where the data is missing.
    data : ndarray, full shape
        The data, NaN where missing.
    partial : bool
        True for rows with missing entries that PyMC imputes as one block
        (`PartialObservedRV`): an MvNormal, or a mixture of MvNormals; the missing entries are
        integrated out of each row's Gaussian. False for an elementwise likelihood (split by
        PyMC into observed and unobserved RVs, or a univariate mixture imputed as a block).
    """

    name: str
    observed: str
    unobserved: str
    mask: np.ndarray
    data: np.ndarray
    partial: bool


def find_imputed(model: pm.Model) -> list[Imputed]:
    """Find every variable PyMC imputes, and refuse structures EM cannot integrate out."""
    found = []
    free = set(model.free_RVs)
    for det in model.deterministics:
        name = det.name
        obs_name, unobs_name = f"{name}_observed", f"{name}_unobserved"
        if obs_name not in model.named_vars or unobs_name not in model.named_vars:
            continue
        obs, unobs = model[obs_name], model[unobs_name]
        if obs not in model.observed_RVs or unobs not in free:
            continue
        mask = _missing_mask(det)
        if mask is None:
            continue
        data = np.full(mask.shape, np.nan)
        data[~mask] = np.asarray(model.rvs_to_values[obs].data, dtype="float64").ravel()
        partial = type(obs.owner.op).__name__ == "PartialObservedRV"
        if partial:
            partial = _block_rows(name, obs.owner.inputs[0])
        found.append(Imputed(name, obs_name, unobs_name, mask, data, partial))
    _refuse_dependents(model, found)
    return found


def _block_rows(name: str, base: Variable) -> bool:
    """Whether a block-imputed variable's missing entries sit inside rows (`Imputed.partial`).

    PyMC imputes as one block the variables it cannot split into observed and unobserved
    random variables: MvNormal rows, and every marginal mixture (`pm.Mixture` and the
    families built on it), whose missing entries `pm_em.reading.mixtures` integrates out.
    """
    op = base.owner.op
    if isinstance(op, MvNormalRV):
        return True
    if isinstance(op, _BaseMixtureRV):
        components = base.owner.inputs[2:]
        if components[0].owner.op.ndim_supp == 0:
            return False  # elementwise: each missing entry drops out
        if all(isinstance(c.owner.op, MvNormalRV) for c in components):
            return True
        dist = type(components[0].owner.op).__name__.removesuffix("RV")
        raise ValueError(
            f"Observed variable '{name}' has missing entries inside the rows of a mixture of "
            f"{dist} components. pm_em integrates missing entries out of mixtures of "
            "univariate or MvNormal components; drop the incomplete rows of "
            f"'{name}', or write the mixture with MvNormal components."
        )
    dist = type(op).__name__.removesuffix("RV")
    raise ValueError(
        f"Observed variable '{name}' has missing entries in a {dist} distribution that PyMC "
        "imputes as one block. pm_em integrates missing entries out exactly for elementwise "
        "likelihoods, MvNormal rows and marginal mixtures; drop the incomplete entries."
    )


def _missing_mask(det: Variable) -> np.ndarray | None:
    """Read the mask from ``set(set(empty, unobserved, missing), observed, ~missing)``."""
    node = det.owner
    if node is None or not node.inputs:
        return None
    outer = node.inputs[0].owner  # AdvancedSetSubtensor placing the observed entries
    if outer is None or len(outer.inputs) < 3:
        return None
    observed_mask = outer.inputs[2]
    if not isinstance(observed_mask, Constant) or observed_mask.dtype != "bool":
        return None
    return ~np.asarray(observed_mask.data)


def _refuse_dependents(model: pm.Model, found: list[Imputed]) -> None:
    for imp in found:
        targets = {model[imp.unobserved], model[imp.name]}
        own = {model[imp.observed], model[imp.unobserved], model[imp.name]}
        for var in [*model.basic_RVs, *model.potentials]:
            if var in own:
                continue
            blockers = set(model.basic_RVs) - targets - {var}
            inputs = var.owner.inputs if var in model.basic_RVs else [var]
            if targets & set(ancestors(inputs, blockers=blockers)):
                raise ValueError(
                    f"'{var.name}' depends on the missing values of '{imp.name}'. pm_em "
                    "integrates missing entries out exactly only when nothing else depends "
                    f"on them; model '{var.name}' without '{imp.name}', or drop the "
                    "incomplete entries."
                )


# ----------------------------------------------------------------- elementwise missing values
@singledispatch
def _variance(op, rv, *params):
    raise NotImplementedError


@_variance.register(NormalRV)
def _(op, rv, rng, size, mu, sigma):
    return pt.square(sigma)


@_variance.register(StudentTRV)
def _(op, rv, rng, size, nu, mu, sigma):
    return pt.switch(nu > 2, pt.square(sigma) * nu / (nu - 2), np.inf)


@_variance.register(LaplaceRV)
def _(op, rv, rng, size, mu, b):
    return 2 * pt.square(b)


@_variance.register(PoissonRV)
def _(op, rv, rng, size, mu):
    return mu


@_variance.register(NegBinomialRV)
def _(op, rv, rng, size, n, p):
    return n * (1 - p) / pt.square(p)


@_variance.register(BernoulliRV)
def _(op, rv, rng, size, p):
    return p * (1 - p)


@_variance.register(BinomialRV)
def _(op, rv, rng, size, n, p):
    return n * p * (1 - p)


@_variance.register(GammaRV)
def _(op, rv, rng, size, alpha, scale):
    return alpha * pt.square(scale)


@_variance.register(ExponentialRV)
def _(op, rv, rng, size, scale):
    return pt.square(scale)


@_variance.register(LogNormalRV)
def _(op, rv, rng, size, mu, sigma):
    s2 = pt.square(sigma)
    return (pt.exp(s2) - 1) * pt.exp(2 * mu + s2)


@_variance.register(BetaRV)
def _(op, rv, rng, size, a, b):
    return a * b / (pt.square(a + b) * (a + b + 1))


@_variance.register(UniformRV)
def _(op, rv, rng, size, lower, upper):
    return pt.square(upper - lower) / 12


def variance(rv: Variable) -> Variable:
    """Return the variance of univariate ``rv`` (its parameters' shape, in model-RV terms).

    Raises NotImplementedError for a distribution not in pm_em's table.
    """
    return _variance(rv.owner.op, rv, *rv.owner.inputs)


def split_moments(model: pm.Model, imp: Imputed) -> tuple[Variable, Variable]:
    """Mean and variance graphs of the unobserved entries (value-variable terms).

    They broadcast to the entries' shape, which the caller applies.
    """
    rv = model[imp.unobserved]
    dist = type(rv.owner.op).__name__.removesuffix("RV")
    unknown = []
    # The estimate does not need the moments (the missing terms integrate to 1); only the
    # reported imputation does, so an unknown moment becomes NaN with a warning.
    try:
        mean = rv_mean(rv)
    except (NotImplementedError, UndefinedMomentException):
        mean, unknown = pt.constant(np.nan), ["mean"]
    try:
        var = variance(rv)
    except NotImplementedError:
        var, unknown = pt.constant(np.nan), [*unknown, "variance"]
    if unknown:
        warnings.warn(
            f"pm_em has no {' or '.join(unknown)} for the {dist} distribution of '{imp.name}': "
            f"its imputations in `latent_posterior` are NaN (the estimate is unaffected).",
            MissingMomentWarning,
            stacklevel=2,
        )
    # Not broadcast to the RV's shape here: that would pull the RV into the graph, and the
    # caller may still add a leading support axis.
    mean, var = model.replace_rvs_by_values([mean, var])
    return mean.astype("float64"), var.astype("float64")


# ------------------------------------------------------------------------ MvNormal rows
def mvnormal_rows(model: pm.Model, imp: Imputed) -> tuple[Variable, Variable, Variable]:
    """Observed-data log likelihood per row, and the missing entries' conditional moments.

    The rows of ``imp``'s MvNormal, through `gaussian_rows`.

    Returns
    -------
    log_lik : graph of shape (*batch,)
        One term per row (the row's observed-data log likelihood).
    cond_mean, cond_var : graphs of shape (*batch, d)
        Conditional mean and variance; at observed entries, the data and 0.
    """
    obs = model[imp.observed]
    base = obs.owner.inputs[0]
    mu, cov = base.owner.op.dist_params(base.owner)
    mu, cov = model.replace_rvs_by_values([mu, cov])
    # Named, so that a chunked fit (pm_em.engine.rows) can feed each block of rows its own
    # mask and data: the graph is the same for every missingness pattern.
    return gaussian_rows(mu, cov, imp.mask, imp.data, name=imp.name)


def gaussian_rows(
    mu: Variable,
    cov: Variable,
    mask: np.ndarray | Variable,
    data: np.ndarray | Variable,
    name: str | None = None,
) -> tuple[Variable, Variable, Variable]:
    """Gaussian rows with missing entries: observed-data log density and conditional moments.

    For row i with missing mask m_i and observed mask o_i = 1 - m_i, and δ_i = (x_i − μ)·o_i:
    the observed entries' marginal is N(x_o | μ_o, Σ_oo), computed as the density of
    S̃_i = diag(o)Σdiag(o) + diag(m) (block-diagonal with Σ_oo and an identity); with
    P = Σ⁻¹ and P̃_i = diag(m)Pdiag(m) + diag(o), the missing entries' conditional mean is
    μ − P̃_i⁻¹(Pδ_i)·m and their conditional covariance P̃_i⁻¹ restricted to the missing
    block (= P_mm⁻¹). Batched over rows (and any other leading axes, e.g. the components of
    a mixture), so no loop over missingness patterns. A fully missing row has density 1.

    Parameters
    ----------
    mu : graph of shape (..., d)
    cov : graph of shape (..., d, d)
    mask : bool array of shape (..., d)
        True where missing; broadcasts against ``mu``.
    data : array of shape (..., d)
        The data (any value where missing).
    name : str, optional
        The variable's name: the mask and data constants are then named
        ``<name>__missing_mask`` and ``<name>__filled`` (`MASK_SUFFIX`, `FILLED_SUFFIX`), which
        a chunked fit rebinds block by block.

    Returns
    -------
    log_lik : graph of shape (...,)
    cond_mean, cond_var : graphs of shape (..., d)
        Conditional mean and variance; at observed entries, the data and 0.
    """
    mask = np.asarray(mask)
    mask_name, filled_name = (
        (None, None) if name is None else (name + MASK_SUFFIX, name + FILLED_SUFFIX)
    )
    m = pt.as_tensor(mask.astype("float64"), name=mask_name)
    o = 1.0 - m
    x0 = pt.as_tensor(np.where(mask, 0.0, np.asarray(data, dtype="float64")), name=filled_name)
    d = mask.shape[-1]
    eye = pt.eye(d)
    delta = (x0 - mu) * o
    s_tilde = o[..., :, None] * cov * o[..., None, :] + m[..., :, None] * eye
    chol = pt.linalg.cholesky(s_tilde)
    logdet = 2.0 * pt.log(pt.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
    white = pt.linalg.solve_triangular(chol, delta[..., None], lower=True)[..., 0]
    n_obs = o.sum(-1)
    log_lik = -0.5 * (n_obs * np.log(2 * np.pi) + logdet + pt.square(white).sum(-1))
    prec = pt.linalg.inv(cov)
    p_tilde = m[..., :, None] * prec * m[..., None, :] + o[..., :, None] * eye
    p_delta = (prec @ delta[..., None])[..., 0]
    shift = pt.linalg.solve(p_tilde, (-p_delta * m)[..., None])[..., 0]
    cond_mean = pt.switch(m > 0, mu + shift, x0)
    cond_var = pt.diagonal(pt.linalg.inv(p_tilde), axis1=-2, axis2=-1) * m
    return log_lik, cond_mean, cond_var


def missing_values(model: pm.Model, imp: Imputed, latent: Latent | None) -> MissingValues:
    """Graphs of the conditional mean and variance of ``imp``'s missing entries.

    With the ``latent`` their distribution depends on, one per support value on a leading axis.
    """
    if imp.partial:
        _, mean, var = mvnormal_rows(model, imp)
    else:
        mean, var = split_moments(model, imp)
    element = None
    if latent is not None:
        spec = latent
        zv = model.rvs_to_values[model[latent.name]]
        values = enumerated(zv, spec.support, spec.shape)
        mean, var = (vectorize_graph(g, replace={zv: values}) for g in (mean, var))
        lead = (spec.support.size,)
        if imp.partial:
            rows = imp.mask.shape[:-1]
            element = element_of(np.arange(int(np.prod(rows))), rows, spec.shape)
        else:
            element = element_of(np.flatnonzero(imp.mask.ravel()), imp.mask.shape, spec.shape)
    else:
        lead = ()
    entries = imp.mask.shape if imp.partial else (int(imp.mask.sum()),)
    mean, var = (pt.broadcast_to(g, (*lead, *entries)) for g in (mean, var))
    dims = model.named_vars_to_dims.get(imp.unobserved) or (f"{imp.unobserved}_dim_0",)
    return MissingValues(
        name=imp.name,
        unobserved=imp.unobserved,
        dims=tuple(dims),
        mask=imp.mask,
        data=imp.data,
        partial=imp.partial,
        latent=latent.name if latent is not None else None,
        element=element,
        mean=mean,
        var=var,
    )


def mix_conditionals(
    spec, mean: np.ndarray, var: np.ndarray, resp: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Conditional mean and sd of the missing entries, as the flat vector PyMC imputes.

    Parameters
    ----------
    spec : pm_em.reading.problem.MissingValues
    mean, var : ndarray
        The evaluated ``spec.mean`` and ``spec.var``; with a latent, one per support value
        on the leading axis.
    resp : ndarray of shape (*latent.shape, K) or None
        Responsibilities of the latent the entries depend on.

    Returns
    -------
    mean, sd : ndarray of shape (n_missing,)
        Inside a mixture, the mixture of the per-component conditionals (law of total
        variance for the sd).
    """
    if resp is not None:
        weights = resp.reshape(-1, resp.shape[-1])[spec.element]  # (n_entries_or_rows, K)
        k_last = np.moveaxis(mean, 0, -1)  # (..., K)
        v_last = np.moveaxis(var, 0, -1)
        if spec.partial:  # (rows..., d, K): one weight per row
            w = weights.reshape(*spec.mask.shape[:-1], 1, -1)
        else:
            w = weights
        mixed = (w * k_last).sum(-1)
        second = (w * (v_last + k_last**2)).sum(-1)
        mean, var = mixed, np.maximum(second - mixed**2, 0.0)
    if spec.partial:
        mean, var = mean[spec.mask], var[spec.mask]
    return np.asarray(mean, dtype="float64").ravel(), np.sqrt(np.asarray(var)).ravel()
