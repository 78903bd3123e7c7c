"""Information criteria at the EM estimate: AIC, BIC and ICL.

With ``LL`` the observed-data log likelihood at the estimate (latents summed out), ``k`` the
number of free parameters counted in the unconstrained space (a K-simplex counts K - 1) and
``n`` the number of pointwise log-likelihood terms (one per latent element, e.g. one per row
of a multivariate mixture, plus one per value of observed variables no latent touches):

- ``aic = -2 LL + 2 k``
- ``bic = -2 LL + k log(n)``
- ``icl = bic + 2 EN``, where ``EN = -sum_i sum_k r_ik log r_ik`` is the entropy of the
  responsibilities (Biernacki, Celeux & Govaert 2000, IEEE TPAMI 22(7)): BIC penalized by
  how unclear the assignment of observations to components is. For a Markov chain, whose
  steps are not independent, EN is the entropy of the posterior over whole paths
  (``em_stats["<z>_path_entropy"]``), not the sum of the steps' entropies.

Lower is better for all three. They are defined at the maximum-likelihood estimate; at a MAP
estimate under weakly informative priors the log likelihood is almost the same.
"""

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pymc as pm
import xarray as xr

from pm_em.engine.compiled import compile_model

__all__ = ["information_criteria"]


def _entropy(latent_posterior: xr.Dataset, names: Sequence[str], em_stats: xr.Dataset) -> float:
    """Entropy of the responsibilities of latents ``names`` (not of imputed missing values).

    A chain's is the entropy of its posterior over whole paths (``<z>_path_entropy``).
    """
    total = 0.0
    for name in names:
        if f"{name}_path_entropy" in em_stats:
            total += float(em_stats[f"{name}_path_entropy"])
            continue
        r = np.asarray(latent_posterior[name].values, dtype="float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(r > 0, r * np.log(r), 0.0)  # 0 log 0 = 0
        total -= float(terms.sum())
    return total


def _fitted(idata: xr.DataTree, model: pm.Model | None, latent) -> tuple[int, list[str]]:
    """Count the fitted model's parameters and name its latents.

    From the model given or in context; outside any model context, from what `pm_em.fit`
    recorded: ``em_stats.n_params``, and a ``<z>_count`` in ``em_stats`` per latent ``z``.
    """
    if model is None:
        try:
            model = pm.modelcontext(None)
        except TypeError:  # no model on the context stack
            stats = idata["em_stats"].dataset if "em_stats" in idata.children else xr.Dataset()
            if "n_params" not in stats:
                raise ValueError(
                    "Outside a model context `information_criteria` needs `model=` or the "
                    "`em_stats.n_params` that `pm_em.fit` records; `idata` has neither."
                ) from None
            post = (
                idata["latent_posterior"].dataset
                if "latent_posterior" in idata.children
                else xr.Dataset()
            )
            names = [str(v).removesuffix("_count") for v in stats.data_vars]
            return int(stats["n_params"]), [n for n in names if n in post and n + "_count" in stats]
    problem = compile_model(model, latent).problem
    post = idata["posterior"].dataset if "posterior" in idata.children else xr.Dataset()
    missing = [p.name for p in problem.params if p.name not in post]
    if missing:
        raise ValueError(
            f"`idata.posterior` lacks parameter(s) {missing} of the model: pass the model "
            "that `idata` was fitted to (`model=`)."
        )
    return problem.n_params, [lat.name for lat in problem.latents]


def information_criteria(
    idata: xr.DataTree,
    *,
    model: pm.Model | None = None,
    latent: Sequence[str] | None = None,
) -> pd.Series:
    """AIC, BIC and ICL of an EM fit.

    Parameters
    ----------
    idata : xarray.DataTree
        The result of `pm_em.fit` for ``model``.
    model : pm.Model, optional
        The fitted model, which tells how many free parameters it has; default: the model
        of the ``with`` context, or, outside any, the count `pm_em.fit` recorded in
        ``em_stats.n_params``.
    latent : sequence of str, optional
        The latents EM summed out (as passed to `pm_em.fit`).

    Returns
    -------
    pandas.Series
        ``log_likelihood``, ``n_params`` (unconstrained), ``n_obs``, ``entropy``, ``aic``,
        ``bic`` and ``icl``.

    Raises
    ------
    ValueError
        If ``idata`` lacks the ``log_likelihood`` group or was not fitted to ``model``.

    Examples
    --------
    >>> import numpy as np, pymc as pm, pm_em
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(-2, 1, 200), rng.normal(3, 1, 300)])
    >>> with pm.Model() as model:
    ...     w = pm.Dirichlet("w", a=np.ones(2))
    ...     mu = pm.Normal("mu", 0, 10, shape=2)
    ...     sigma = pm.HalfNormal("sigma", 5, shape=2)
    ...     z = pm.Categorical("z", p=w, shape=len(x))
    ...     y = pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x)
    ...     ic = pm_em.information_criteria(pm_em.fit(random_seed=1, progressbar=False))
    >>> int(ic["n_params"]), int(ic["n_obs"])
    (5, 500)
    """
    if "log_likelihood" not in idata.children:
        raise ValueError("`idata` has no `log_likelihood` group; pass the result of `pm_em.fit`.")
    n_params, latents = _fitted(idata, model, latent)
    loglik = idata["log_likelihood"].dataset
    if loglik.sizes.get("chain", 1) * loglik.sizes.get("draw", 1) != 1:
        raise ValueError(
            "`idata.log_likelihood` has several draws; information criteria are computed at "
            "one estimate. Pass the result of `pm_em.fit`."
        )
    log_lik = float(sum(loglik[v].values.sum() for v in loglik.data_vars))
    n_obs = int(sum(loglik[v].size for v in loglik.data_vars))
    stats = idata["em_stats"].dataset if "em_stats" in idata.children else xr.Dataset()
    entropy = (
        _entropy(idata["latent_posterior"].dataset, latents, stats)
        if "latent_posterior" in idata.children
        else 0.0
    )
    bic = -2.0 * log_lik + n_params * np.log(n_obs)
    return pd.Series(
        {
            "log_likelihood": log_lik,
            "n_params": n_params,
            "n_obs": n_obs,
            "entropy": entropy,
            "aic": -2.0 * log_lik + 2.0 * n_params,
            "bic": bic,
            "icl": bic + 2.0 * entropy,
        },
        name="information_criteria",
    )
