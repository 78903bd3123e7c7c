"""PSIS-LOO cross-validation of an EM fit, on the draws of its Laplace approximation.

An EM estimate is one point (chain=1, draw=1), and PSIS-LOO needs draws from a posterior:
``az.loo`` on a `pm_em.fit` result ends inside ArviZ with an ``IndexError`` (nothing to
smooth). `loo` draws from the Laplace approximation at the mode (`pm_em.laplace`) and runs
PSIS-LOO there, correcting for the draws coming from a Gaussian rather than from the
posterior (``arviz_stats.loo_approximate_posterior``, Magnusson et al. 2019): the importance
ratios carry ``p(θ | y) / q(θ)`` as well as the leave-one-out factor, so the Pareto k values
report both how influential each observation is and how far the Gaussian is from the
posterior. Where many k exceed ArviZ's threshold, neither is to be trusted: sample the
posterior with `pm_em.sample_marginal` (``idata_kwargs={"log_likelihood": True}``) and run
``az.loo`` on it.
"""

from collections.abc import Sequence

import arviz as az
import numpy as np
import pymc as pm
import xarray as xr

from pm_em.results.laplace import laplace

__all__ = ["loo"]


def _n_draws(idata: xr.DataTree) -> int:
    post = idata["posterior"].dataset
    return int(post.sizes.get("chain", 1) * post.sizes.get("draw", 1))


def _is_laplace(idata: xr.DataTree) -> bool:
    if "sample_stats" not in idata.children:
        return False
    stats = idata["sample_stats"].dataset
    return "log_p" in stats and "log_q" in stats


def loo(
    idata: xr.DataTree,
    *,
    model: pm.Model | None = None,
    latent: Sequence[str] | None = None,
    draws: int = 1000,
    random_seed: int | np.random.Generator | None = None,
    var_name: str | None = None,
    pointwise: bool = True,
):
    """PSIS-LOO of an EM fit, computed on draws of its Laplace approximation.

    Parameters
    ----------
    idata : xarray.DataTree
        A `pm_em.fit` result (then `pm_em.laplace` draws ``draws`` points around it), a
        `pm_em.laplace` result (its draws are used as they are), or any posterior sample
        with a ``log_likelihood`` group (plain ``az.loo``).
    model : pm.Model, optional
        The fitted model, needed for a `pm_em.fit` result; default: the ``with`` context.
    latent : sequence of str, optional
        The latents EM summed out (as passed to `pm_em.fit`).
    draws : int, default 1000
        Laplace draws for a `pm_em.fit` result.
    random_seed : int or Generator, optional
        Makes the Laplace draws repeatable.
    var_name : str, optional
        The observed variable, when the ``log_likelihood`` group has several.
    pointwise : bool, default True
        Keep the pointwise values and Pareto k (``az.compare`` needs them).

    Returns
    -------
    arviz_stats.ELPDData
        As ``az.loo`` returns it: ``elpd``, ``se``, ``p``, ``pareto_k``, ``warning``,
        ``good_k``; ``approx_posterior`` is True when the Laplace correction was applied.
        Several of them go straight into ``az.compare``.

    Raises
    ------
    ValueError
        If ``idata`` has no ``log_likelihood`` group, or is a single draw that is not a
        `pm_em.fit` result.

    Warns
    -----
    UserWarning
        ArviZ's own, when Pareto k values exceed its threshold.

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
    ...     em = pm_em.fit(random_seed=1, progressbar=False)
    ...     result = pm_em.loo(em, random_seed=2)
    >>> result.approx_posterior, bool((result.pareto_k < result.good_k).all())
    (True, True)
    """
    if "posterior" not in idata.children:
        raise ValueError("`idata` has no `posterior` group; pass a pm_em or PyMC result.")
    if _n_draws(idata) == 1:
        if "em_stats" not in idata.children:
            raise ValueError(
                "`idata` holds a single draw, and PSIS-LOO needs draws from a posterior. Pass "
                "a `pm_em.fit` result (`loo` then draws from its Laplace approximation), a "
                "`pm_em.laplace` result, or a posterior sample."
            )
        idata = laplace(idata, model=model, latent=latent, draws=draws, random_seed=random_seed)
    if "log_likelihood" not in idata.children:
        raise ValueError(
            "`idata` has no `log_likelihood` group. Pass a `pm_em.fit` or `pm_em.laplace` "
            "result, or sample with `pm_em.sample_marginal(..., idata_kwargs={"
            '"log_likelihood": True})`.'
        )
    if not _is_laplace(idata):
        return az.loo(idata, pointwise=pointwise, var_name=var_name)
    stats = idata["sample_stats"].dataset
    return az.loo_approximate_posterior(
        idata,
        log_p=stats["log_p"],
        log_q=stats["log_q"],
        pointwise=pointwise,
        var_name=var_name,
    )
