"""Uncertainty at the EM mode: the Laplace (Gaussian) approximation.

The observed information is minus the Hessian of the observed-data log posterior (latents
summed out by the E-step's enumeration) with respect to the flat unconstrained parameter
vector, taken exactly by pytensor at the EM estimate. Its inverse is the covariance of a
Gaussian in the unconstrained space; draws from it, mapped back through the transforms, make
a ``posterior`` group that sits beside NUTS's in ArviZ, and the delta method gives standard
errors of the constrained parameters and Deterministics.

The log posterior is the one EM maximizes (constrained-space densities, no Jacobian of the
transforms). At its mode the gradient vanishes, so the Hessian in the unconstrained space is
``Jᵀ H_θ J``, the constrained-space information seen through the transforms: the
approximation is that of the mode EM found, in coordinates where a Gaussian fits better.

Every draw also gets the pointwise observed-data log likelihood (latents summed out, as in
`pm_em.fit`'s ``log_likelihood`` group), so ArviZ's ``az.loo`` and ``az.compare`` take the
result as they take a NUTS one, and the two log densities PSIS-LOO needs to correct for the
draws coming from a Gaussian rather than from the posterior (``sample_stats``: ``log_p``,
the posterior density of the unconstrained parameters, and ``log_q``, the Gaussian's; see
`pm_em.loo`).
"""

import warnings
from collections.abc import Sequence

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from arviz_base import dict_to_dataset
from pymc.backends.arviz import coords_and_dims_for_inferencedata
from pymc.pytensorf import compile as compile_pymc
from pymc.pytensorf import join_nonshared_inputs

from pm_em.compiling import pytensor_compile_kwargs
from pm_em.engine.compiled import compile_model
from pm_em.exceptions import LaplaceWarning
from pm_em.reading.problem import EMProblem
from pm_em.results.marginal import compile_to_x, log_likelihood_dataset, store_log_likelihood

__all__ = ["compile_log_posterior_hessian", "laplace"]

# A Newton step from the estimate longer than this many standard errors means the estimate
# is not the mode (EM stopped early), so the curvature there describes some other point.
_MAX_NEWTON_SE = 0.1
_LOG_2PI = float(np.log(2.0 * np.pi))


def log_posterior_graph(problem: EMProblem) -> pt.TensorVariable:
    """Build the observed-data log posterior as a graph of ``problem.x``, as the E-step does."""
    # Each latent summed out as the E-step does (the forward algorithm for a chain).
    terms = [lat.log_marginal_graph().sum() for lat in problem.latents]
    terms += [t.sum() for t in problem.log_lik_rest.values()]
    return problem.log_prior + pt.add(pt.constant(0.0, dtype="float64"), *terms)


def compile_log_posterior_hessian(problem: EMProblem, **compile_kwargs):
    """Compile ``x -> (log posterior, gradient, Hessian)`` of the observed-data log posterior."""
    log_post = log_posterior_graph(problem)
    grad = pytensor.grad(log_post, problem.x)
    # The scan form: the vectorized Jacobian sends CVM's graph rewriter into minutes of work.
    hess = pytensor.gradient.jacobian(grad, problem.x)
    return compile_pymc(
        [problem.x], [log_post, grad, hess], on_unused_input="ignore", **compile_kwargs
    )


def _compile_values(problem: EMProblem, **compile_kwargs):
    """``x -> [value of each parameter and Deterministic]`` and ``x -> d(flat values)/dx``."""
    graphs = [*problem.constrained.values(), *problem.deterministics.values()]
    values_fn = compile_pymc([problem.x], graphs, on_unused_input="ignore", **compile_kwargs)
    flat = pt.concatenate([pt.as_tensor(g).astype("float64").ravel() for g in graphs])
    jac = pytensor.gradient.jacobian(flat, problem.x)
    jac_fn = compile_pymc([problem.x], jac, on_unused_input="ignore", **compile_kwargs)
    return values_fn, jac_fn


def _row_labels(problem: EMProblem) -> list[str]:
    labels = []
    for p in problem.params:
        labels += [f"{p.value_name}[{i}]" if p.shape else p.value_name for i in range(p.size)]
    return labels


def _mode_x(problem: EMProblem, em_idata: xr.DataTree) -> np.ndarray:
    if "posterior" not in em_idata.children:
        raise ValueError("`em_idata` has no `posterior` group; pass the result of `pm_em.fit`.")
    post = em_idata["posterior"].dataset
    missing = [p.name for p in problem.params if p.name not in post]
    if missing:
        raise ValueError(
            f"`em_idata.posterior` lacks parameter(s) {missing} of the model: pass the model "
            "that `em_idata` was fitted to (`model=`)."
        )
    if post.sizes.get("chain", 1) != 1 or post.sizes.get("draw", 1) != 1:
        raise ValueError(
            "`em_idata.posterior` has more than one chain or draw; pass the result of "
            "`pm_em.fit` (one estimate)."
        )
    values = [
        post[p.name].values.reshape(np.shape(post[p.name].values)[2:]) for p in problem.params
    ]
    return compile_to_x(problem, **pytensor_compile_kwargs())(*values)


def _precision_eigen(problem: EMProblem, hess: np.ndarray, stacklevel: int):
    """Eigen-decomposition of -H, with non-positive eigenvalues flipped and warned about."""
    labels = _row_labels(problem)
    if not np.all(np.isfinite(hess)):
        raise ValueError(
            "The Hessian of the log posterior is not finite at the EM estimate (e.g. a "
            "component with no data or a boundary value): the Laplace approximation does not "
            "exist there. Refit with a proper prior on the parameters involved."
        )
    precision = -0.5 * (hess + hess.T)
    eigval, eigvec = np.linalg.eigh(precision)
    scale = max(float(np.max(np.abs(eigval))), np.finfo(float).tiny)
    bad = eigval <= scale * np.finfo(float).eps * eigval.size
    negative_definite = not bool(bad.any())
    if not negative_definite:
        worst = int(np.argmin(eigval))
        direction = np.abs(eigvec[:, worst])
        involved = [labels[i] for i in np.argsort(-direction)[:3] if direction[i] > 0.1]
        warnings.warn(
            "The Hessian of the observed-data log posterior is not negative definite at the "
            f"EM estimate: {int(bad.sum())} of {eigval.size} curvature eigenvalues are not "
            f"negative (smallest precision eigenvalue {eigval[worst]:.3g}, along {involved}). "
            "The estimate is a saddle point or a flat ridge, not a strict mode, so the "
            "Gaussian approximation is not valid there: these standard errors and draws use "
            "the absolute values of those eigenvalues and only indicate scale. Refit from "
            "other starts (`n_init`), or use fewer components.",
            LaplaceWarning,
            stacklevel=stacklevel,
        )
        floor = scale * np.finfo(float).eps * eigval.size
        eigval = np.maximum(np.abs(eigval), floor)
    return eigval, eigvec, negative_definite


def _compile_log_jacobian(problem: EMProblem, **compile_kwargs):
    """Compile ``x -> log |det d(constrained)/dx|`` of the parameters' transforms.

    Read from PyMC itself: the parameters' log density with the Jacobian term less the one
    without it.
    """
    model = problem.model
    rvs = [model[p.name] for p in problem.params]
    if not rvs:
        return lambda x: 0.0
    with_jac = model.logp(vars=rvs, jacobian=True, sum=False)
    without = model.logp(vars=rvs, jacobian=False, sum=False)
    graph = pt.add(
        pt.constant(0.0, dtype="float64"),
        *((a - b).sum() for a, b in zip(with_jac, without, strict=True)),
    )
    value_vars = [model.rvs_to_values[rv] for rv in rvs]
    [graph], x = join_nonshared_inputs(problem.from_x(problem.start), [graph], value_vars)
    fn = compile_pymc([x], graph, on_unused_input="ignore", **compile_kwargs)
    return lambda x_value: float(fn(x_value))


def _gaussian_at_mode(problem: EMProblem, em_idata: xr.DataTree, kwargs: dict, stacklevel: int):
    """Return the mode, the log posterior there, its gradient and Hessian, and -H's eigen."""
    x_mode = _mode_x(problem, em_idata)
    evaluate = compile_log_posterior_hessian(problem, **kwargs)
    log_post, grad, hess = (np.asarray(a, dtype="float64") for a in evaluate(x_mode))
    if not np.isfinite(log_post):
        raise ValueError(
            f"The log posterior is {float(log_post)} at the estimate in `em_idata`: it does not "
            "belong to this model or lies outside the support."
        )
    eigval, eigvec, negative_definite = _precision_eigen(problem, hess, stacklevel + 1)
    cov = (eigvec / eigval) @ eigvec.T
    se_x = np.sqrt(np.diag(cov))
    newton = np.max(np.abs(cov @ grad) / se_x) if x_mode.size else 0.0
    if negative_definite and newton > _MAX_NEWTON_SE:
        warnings.warn(
            "The EM estimate is not at a mode of the log posterior: a Newton step would move "
            f"it by {newton:.2g} standard errors. The curvature "
            "describes the wrong point; refit with a smaller `tol` (and `polish=True`).",
            LaplaceWarning,
            stacklevel=stacklevel + 1,
        )
    return x_mode, float(log_post), grad, hess, eigval, eigvec, negative_definite


def _per_draw(problem: EMProblem, estep, log_jacobian, xs: np.ndarray):
    """Pointwise log likelihood and ``log_p`` (posterior density of x, up to a constant)."""
    loglik: dict[str, np.ndarray] = {}
    log_p = np.empty(len(xs))
    for d, x in enumerate(xs):
        e = estep(x)
        store_log_likelihood(loglik, problem, e, (0, d), (1, len(xs)))
        # EM's log posterior has no Jacobian (MAP convention); the density of x has.
        log_p[d] = e.log_posterior + log_jacobian(x)
    return log_likelihood_dataset(problem, loglik), log_p


def laplace(
    em_idata: xr.DataTree,
    *,
    model: pm.Model | None = None,
    latent: Sequence[str] | None = None,
    draws: int = 1000,
    random_seed: int | np.random.Generator | None = None,
) -> xr.DataTree:
    """Laplace approximation of the posterior at the EM estimate.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit` for ``model``.
    model : pm.Model, optional
        Default: the model of the ``with`` context.
    latent : sequence of str, optional
        The latents EM summed out (as passed to `pm_em.fit`).
    draws : int, default 1000
        Draws from the Gaussian approximation.
    random_seed : int or Generator, optional
        Makes the draws repeatable.

    Returns
    -------
    xarray.DataTree
        - ``posterior``: ``draws`` draws (chain=1) of every parameter and Deterministic,
          mapped back through the transforms, with the model's dims and coords.
        - ``log_likelihood``: at every draw, the pointwise observed-data log likelihood
          (latents summed out), named and laid out as in `pm_em.fit`; ``az.loo`` and
          ``az.compare`` read it (`pm_em.loo` corrects for the draws being Gaussian).
        - ``sample_stats``: per draw, ``log_p``, the log posterior density of the
          unconstrained parameters up to a constant (EM's log posterior plus the log
          Jacobian of the transforms), and ``log_q``, the log density of the Gaussian.
        - ``standard_error``: delta-method standard errors of the same variables (no
          chain/draw).
        - ``fit``: ``mean_vector`` (the mode, unconstrained; dim ``rows``),
          ``covariance_matrix``, ``hessian`` (``rows``, ``columns``), ``gradient`` and
          ``precision_eigenvalues``; attrs ``negative_definite`` and ``log_posterior``.
        - ``observed_data`` and ``constant_data`` from ``em_idata``.

    Warns
    -----
    LaplaceWarning
        When the Hessian is not negative definite (a saddle point or a ridge), or when the
        estimate is not a mode (a Newton step would move it by more than 0.1 standard
        errors).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pm_em
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(-2, 1, 200), rng.normal(3, 1, 300)])
    >>> with pm.Model(coords={"component": [0, 1]}) as model:
    ...     w = pm.Dirichlet("w", a=np.ones(2), dims="component")
    ...     mu = pm.Normal("mu", 0, 10, dims="component")
    ...     sigma = pm.HalfNormal("sigma", 5, dims="component")
    ...     z = pm.Categorical("z", p=w, shape=len(x))
    ...     y = pm.Normal("y", mu=mu[z], sigma=sigma[z], observed=x)
    ...     em = pm_em.fit(random_seed=1, progressbar=False)
    ...     approx = pm_em.laplace(em, random_seed=2)
    >>> approx["standard_error"]["mu"].values.round(2)  # about sigma / sqrt(n_k)
    array([0.07, 0.06])
    >>> approx["log_likelihood"]["y"].shape  # (chain, draw, observation)
    (1, 1000, 500)
    """
    if not (isinstance(draws, int | np.integer) and draws >= 1):
        raise ValueError(f"`draws` must be a positive integer, got {draws!r}.")
    model = pm.modelcontext(model)
    compiled = compile_model(model, latent)
    problem = compiled.problem
    kwargs = pytensor_compile_kwargs()
    x_mode, log_post, grad, hess, eigval, eigvec, negative_definite = _gaussian_at_mode(
        problem, em_idata, kwargs, stacklevel=2
    )
    cov = (eigvec / eigval) @ eigvec.T

    values_fn, jac_fn = _compile_values(problem, **kwargs)
    names = [*problem.constrained, *problem.deterministics]
    at_mode = [np.asarray(v) for v in values_fn(x_mode)]
    jac = np.asarray(jac_fn(x_mode))  # (n_values, n_params)
    se_flat = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", jac, cov, jac), 0.0))
    splits = np.cumsum([v.size for v in at_mode])[:-1]
    rng = np.random.default_rng(random_seed)
    eps = rng.standard_normal((draws, x_mode.size))
    xs = x_mode + (eps / np.sqrt(eigval)) @ eigvec.T  # (draws, n_params)
    # log N(x | mode, cov), with cov = V diag(1/eigval) Vᵀ.
    log_q = -0.5 * (eps**2).sum(axis=1) + 0.5 * (np.log(eigval).sum() - x_mode.size * _LOG_2PI)
    log_likelihood, log_p = _per_draw(
        problem, compiled.estep, _compile_log_jacobian(problem, **kwargs), xs
    )
    per_draw = [values_fn(x) for x in xs]
    coords, dims = coords_and_dims_for_inferencedata(model)
    attrs = {"inference_library": "pm_em.laplace"}
    posterior = dict_to_dataset(
        {n: np.stack([d[i] for d in per_draw])[None] for i, n in enumerate(names)},
        coords=coords,
        dims=dims,
        attrs=attrs,
    )
    standard_error = dict_to_dataset(
        {
            n: se.reshape(v.shape)
            for n, se, v in zip(names, np.split(se_flat, splits), at_mode, strict=True)
        },
        coords=coords,
        dims=dims,
        sample_dims=[],
    )
    sample_stats = dict_to_dataset({"log_p": log_p[None], "log_q": log_q[None]}, attrs=attrs)
    labels = _row_labels(problem)
    fit = xr.Dataset(
        {
            "mean_vector": ("rows", x_mode),
            "gradient": ("rows", grad),
            "hessian": (("rows", "columns"), hess),
            "covariance_matrix": (("rows", "columns"), cov),
            "precision_eigenvalues": ("eigen", eigval),
        },
        coords={"rows": labels, "columns": labels, "eigen": np.arange(eigval.size)},
        attrs={"negative_definite": int(negative_definite), "log_posterior": log_post},
    )
    groups = {
        "posterior": posterior,
        "log_likelihood": log_likelihood.assign_attrs(attrs),
        "sample_stats": sample_stats,
        "standard_error": standard_error,
        "fit": fit,
    }
    for group in ("observed_data", "constant_data"):
        if group in em_idata.children:
            groups[group] = em_idata[group].dataset
    return xr.DataTree.from_dict(groups)
