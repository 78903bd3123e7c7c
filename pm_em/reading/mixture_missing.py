"""Missing values in a marginal mixture's data: integrated out exactly, imputed by their moments.

PyMC cannot split a mixture (a symbolic random variable) into an observed and an unobserved
part, so NaN in a mixture's ``observed`` always gives one block,
``y_observed, y_unobserved = PartialObservedRV(mixture, mask)``, with the Deterministic ``y``
putting them back together (`pm_em.reading.missing.find_imputed`). EM integrates the missing
entries out of the mixture's latent, element by element:

- univariate components: given its component, a missing entry's density integrates to 1, so
  its element keeps only its weights, ``L[i, k] = log w_ik`` (it adds ``logsumexp_k log w_ik
  = 0`` to the log likelihood, and its responsibilities are the weights); the imputation is
  the mixture of the components' means and variances at that entry;
- MvNormal components: under component k the observed entries of a row have the marginal
  Gaussian density ``N(x_o | mu_k,o, S_k,oo)`` (`pm_em.reading.missing.gaussian_rows`; a fully
  missing row keeps its weights), and the missing entries the conditional Gaussian given them.

Missing entries inside rows of other multivariate components are refused by `find_imputed`.
"""

import warnings

import numpy as np
import pymc as pm
import pytensor.tensor as pt
from pymc.distributions.distribution import DiracDeltaRV
from pymc.distributions.moments import mean as rv_mean
from pymc.distributions.truncated import TruncatedRV
from pymc.exceptions import UndefinedMomentException
from pytensor.graph.basic import Constant, Variable

from pm_em.exceptions import MissingMomentWarning
from pm_em.reading.missing import Imputed, gaussian_rows, variance
from pm_em.reading.mixture_graph import MarginalMixture, log_weights, mixture_terms
from pm_em.reading.problem import Latent, MissingValues

__all__ = ["component_moments", "missing_log_joint", "mixture_missing_values"]


def missing_log_joint(mixture: MarginalMixture) -> tuple[Variable, Variable]:
    """Log joint (*shape, K) of a mixture with missing data, missing entries integrated out.

    Returns the log joint and a graph of the same shape free of parameter checks (for
    evaluating the shape), both in model-RV terms.
    """
    imp = mixture.imputed
    if mixture.ndim_supp == 0:
        log_w, log_f = mixture_terms(mixture, pt.as_tensor(_placeholder_data(mixture)))
        missing = pt.as_tensor(imp.mask)[..., None]  # (*shape, 1) against the K axis
        return pt.switch(missing, log_w, log_w + log_f), log_f
    mu, cov = _mvnormal_params(mixture)
    # (*rows, 1, d) against the component axis of mu (..., K, d) and cov (..., K, d, d).
    log_lik, _, _ = gaussian_rows(mu, cov, imp.mask[..., None, :], imp.data[..., None, :])
    return log_weights(mixture, log_lik.shape) + log_lik, log_lik


def _placeholder_data(mixture: MarginalMixture) -> np.ndarray:
    """Return the data in full shape, with the first observed value at missing entries.

    The missing entries' densities are evaluated and discarded (their element keeps only its
    weights); a value every component supports keeps their gradients finite.
    """
    imp = mixture.imputed
    observed = imp.data[~imp.mask]
    fill = observed[0] if observed.size else 0.0
    return np.where(imp.mask, fill, imp.data).astype(mixture.mixture.dtype)


def _mvnormal_params(mixture: MarginalMixture) -> tuple[Variable, Variable]:
    """Means (..., K, d) and covariances (..., K, d, d) of MvNormal components."""
    params = [c.owner.op.dist_params(c.owner) for c in mixture.components]
    if mixture.batched:
        return params[0]
    mus, covs = zip(*params, strict=True)
    mu = pt.stack(pt.broadcast_arrays(*mus), axis=-2)
    cov = pt.stack(pt.broadcast_arrays(*covs), axis=-3)
    return mu, cov


def mixture_missing_values(
    ctx, imp: Imputed, latent: Latent, *, mixture: MarginalMixture
) -> MissingValues:
    """Conditional mean and variance of the missing entries, one per component (leading axis).

    Parameters
    ----------
    ctx : pm_em.reading.build.ReadContext
    imp : Imputed
        The mixture's imputed entries.
    latent : Latent
        The mixture's component latent.
    mixture : MarginalMixture

    Returns
    -------
    MissingValues
        ``mean`` and ``var`` of shape (K, n_missing) for univariate components, whose
        mixture over the weights is the imputation; (K, *rows, d) for MvNormal components,
        mixed over each row's responsibilities.
    """
    model = ctx.model
    n_support = latent.support.size
    if mixture.ndim_supp == 0:
        mean, var = _univariate_moments(mixture, imp.mask.shape, n_support)
        element = np.flatnonzero(imp.mask.ravel())
        mean, var = (g.reshape((-1, n_support))[element].T for g in (mean, var))
    else:
        mu, cov = _mvnormal_params(mixture)
        _, cmean, cvar = gaussian_rows(mu, cov, imp.mask[..., None, :], imp.data[..., None, :])
        shape = (*imp.mask.shape[:-1], n_support, imp.mask.shape[-1])  # (*rows, K, d)
        mean, var = (pt.moveaxis(pt.broadcast_to(g, shape), -2, 0) for g in (cmean, cvar))
        element = np.arange(int(np.prod(imp.mask.shape[:-1])))
    mean, var = model.replace_rvs_by_values([mean, var])
    dims = model.named_vars_to_dims.get(imp.unobserved) or (f"{imp.unobserved}_dim_0",)
    return MissingValues(
        name=imp.name,
        unobserved=imp.unobserved,
        dims=tuple(dims),
        mask=imp.mask,
        data=imp.data,
        partial=imp.partial,
        latent=latent.name,
        element=element,
        mean=mean.astype("float64"),
        var=var.astype("float64"),
    )


def _univariate_moments(mixture: MarginalMixture, shape, n_support: int):
    """Components' means and variances over the full data shape: (*shape, K) each."""
    unknown = []
    moments = []
    for comp in mixture.components:
        try:
            moments.append(component_moments(comp))
        except NotImplementedError:
            unknown.append(type(comp.owner.op).__name__.removesuffix("RV"))
            nan = pt.constant(np.nan, dtype="float64")
            moments.append((nan, nan))
    if unknown:
        # The estimate does not need the moments (missing entries integrate to 1): only the
        # reported imputation does.
        warnings.warn(
            f"pm_em has no mean or variance for the {', '.join(unknown)} component(s) of "
            f"mixture '{mixture.name}': its imputations in `latent_posterior` are NaN (the "
            "estimate is unaffected).",
            MissingMomentWarning,
            stacklevel=2,
        )
    full = (*shape, n_support)
    if mixture.batched:
        ((mean, var),) = moments
        return pt.broadcast_to(mean, full), pt.broadcast_to(var, full)
    means = [pt.broadcast_to(m.astype("float64"), shape) for m, _ in moments]
    variances = [pt.broadcast_to(v.astype("float64"), shape) for _, v in moments]
    return pt.stack(means, axis=-1), pt.stack(variances, axis=-1)


def component_moments(component: Variable) -> tuple[Variable, Variable]:
    """Mean and variance graphs of one univariate component distribution (model-RV terms).

    Covers PyMC's point mass (the zero of zero-inflated families), the zero-truncated count
    distributions of hurdle families, and every distribution with a mean in PyMC and a
    variance in `pm_em.reading.missing.variance`.

    Raises
    ------
    NotImplementedError
        For a distribution whose mean or variance is not known.
    """
    op = component.owner.op
    if isinstance(op, DiracDeltaRV):
        _size, point = component.owner.inputs
        point = pt.as_tensor(point).astype("float64")
        return point, pt.zeros_like(point)
    if isinstance(op, TruncatedRV):
        return _zero_truncated_moments(component)
    try:
        return rv_mean(component).astype("float64"), variance(component).astype("float64")
    except UndefinedMomentException as err:
        raise NotImplementedError(str(err)) from err


def _zero_truncated_moments(component: Variable) -> tuple[Variable, Variable]:
    """Moments of ``Truncated(X, lower=1)`` for a count X, as PyMC's hurdle families build it.

    With p = P(X >= 1) = 1 - P(X = 0): E = E[X] / p and Var = (Var X + E[X]²) / p - E².
    """
    rng, size, *params, lower, upper = component.owner.inputs
    is_one = isinstance(lower, Constant) and np.all(np.asarray(lower.data) == 1)
    is_inf = isinstance(upper, Constant) and np.all(np.isposinf(np.asarray(upper.data)))
    if not (is_one and is_inf) or not component.dtype.startswith("int"):
        raise NotImplementedError("a truncation other than at 1 from below")
    base = component.owner.op.base_rv_op.make_node(rng, size, *params).default_output()
    m = rv_mean(base).astype("float64")
    v = variance(base).astype("float64")
    log_p0 = pm.logp(base, pt.zeros((), dtype=base.dtype), warn_rvs=False)
    p_pos = -pt.expm1(log_p0)
    m1 = m / p_pos
    return m1, (v + pt.square(m)) / p_pos - pt.square(m1)
