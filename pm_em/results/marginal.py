"""The model with its discrete latents summed out, and NUTS on it.

`marginalize` rewrites a PyMC model so that each discrete latent and the observed variables
it explains are replaced by one `pm.Potential` holding the latent's observed-data log
likelihood, `pm_em.reading.problem.Latent.log_likelihood_graph`: ``sum_i logsumexp_k
log_joint[i, k]`` over the very graph the E-step enumerates, or for a Markov chain
forward–backward over the same emissions (whose gradient is the smoothed expectations).
EM and NUTS therefore target one density: the marginal model's ``logp(jacobian=False)`` is
the observed-data log posterior that EM maximizes.

`sample_marginal` runs `pm.sample` on that model and adds what makes its result line up with
`pm_em.fit`'s group for group: ``latent_posterior`` (posterior-mean responsibilities),
``observed_data`` for the summed-out variables, and optionally ``log_likelihood``.
"""

from collections.abc import Callable, Sequence

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from arviz_base import dict_to_dataset
from pymc.backends.arviz import coords_and_dims_for_inferencedata, find_observations
from pymc.model.fgraph import ModelNamed, fgraph_from_model, model_from_fgraph, model_potential
from pymc.pytensorf import compile as compile_pymc
from pytensor.compile import SharedVariable
from pytensor.graph.replace import graph_replace
from pytensor.graph.traversal import ancestors

from pm_em.compiling import pytensor_compile_kwargs
from pm_em.engine.compiled import compile_model
from pm_em.engine.estep import EStepResult
from pm_em.engine.values import compile_missing
from pm_em.reading.build import build_problem
from pm_em.reading.problem import EMProblem
from pm_em.results.datatree import support_coords

__all__ = [
    "compile_to_x",
    "log_likelihood_dataset",
    "marginalize",
    "sample_marginal",
    "store_log_likelihood",
]


def _potential_name(model: pm.Model, name: str) -> str:
    while name in model.named_vars:
        name += "_"
    return name


def _marginal_model(problem: EMProblem) -> pm.Model:
    """Model surgery: keep the parameters' part of the model, add the summed-out terms."""
    model = problem.model
    # fgraph_from_model refuses models with initvals set on variables; lift them for the
    # conversion and put them back on both models afterwards.
    initvals = {rv: v for rv, v in model.rvs_to_initial_values.items() if v is not None}
    for rv in initvals:
        model.rvs_to_initial_values[rv] = None
    try:
        fgraph, memo = fgraph_from_model(model)
    finally:
        for rv, value in initvals.items():
            model.rvs_to_initial_values[rv] = value

    # The flat parameter vector x, rebuilt from the copies of the parameters in the fgraph:
    # x holds the transformed (unconstrained) values, so apply each forward transform.
    parts = []
    for param in problem.params:
        fg_var = memo[model[param.name]]  # ModelFreeRV output
        rv = fg_var.owner.inputs[0]
        transform = model.rvs_to_transforms.get(model[param.name])
        value = fg_var if transform is None else transform.forward(fg_var, *rv.owner.inputs)
        parts.append(pt.as_tensor(value).astype("float64").ravel())
    x_new = pt.concatenate(parts) if parts else pt.zeros((0,), dtype="float64")

    def potential(graph, name):
        shared = {
            v: memo[v] for v in ancestors([graph]) if isinstance(v, SharedVariable) and v in memo
        }
        graph = graph_replace(graph, {problem.x: x_new, **shared}, strict=False)
        return model_potential(graph, _potential_name(model, name))

    # Each explicit latent summed out as the E-step does: its support enumerated (the forward
    # algorithm for a chain). A marginal mixture is summed out already: it stays as the user
    # wrote it.
    potentials = [
        potential(lat.log_likelihood_graph(), f"{lat.name}_marginal")
        for lat in problem.latents
        if lat.mixture_of is None
    ]
    # Keep what the observed-data log posterior takes from the model as it is: the parameters
    # (with their priors), the observed variables no latent touches, potentials on the
    # parameters, Deterministics of the parameters. Any other likelihood term of the problem
    # (e.g. data with missing values integrated out) becomes a Potential of its graph.
    observed_names = {rv.name for rv in model.observed_RVs}
    keep = {p.name for p in problem.params} | set(problem.deterministics)
    keep |= set(problem.prior_terms) | (set(problem.log_lik_rest) & observed_names)
    keep |= _mixture_variables(problem)
    potentials += [
        potential(term.sum(), f"{name}_marginal")
        for name, term in problem.log_lik_rest.items()
        if name not in observed_names
    ]
    for i in reversed(range(len(fgraph.outputs))):
        out = fgraph.outputs[i]
        if out.name not in keep and not isinstance(out.owner.op, ModelNamed):  # keep pm.Data
            fgraph.remove_output(i)
    for pot in potentials:
        fgraph.add_output(pot, import_missing=True)
    marginal = model_from_fgraph(fgraph, mutate_fgraph=True)
    # The rebuilt model lists its variables in graph order; keep the user's order instead.
    order = [rv.name for rv in model.free_RVs]
    marginal.free_RVs.sort(key=lambda rv: order.index(rv.name))
    for rv, value in initvals.items():
        if rv.name in marginal.named_vars:
            marginal.set_initval(marginal[rv.name], value)
    return marginal


def _mixture_variables(problem: EMProblem) -> set[str]:
    """Return the variables of the marginal mixtures, with PyMC's imputation of their NaN."""
    mixtures = {lat.name: lat.mixture_of for lat in problem.latents if lat.mixture_of}
    names = set(mixtures.values())
    for spec in problem.missing:
        if spec.latent in mixtures:
            names |= {spec.unobserved, spec.name}
    return names


def marginalize(model: pm.Model | None = None, *, latent: Sequence[str] | None = None) -> pm.Model:
    """Return ``model`` with its discrete latent variables summed out.

    The new model has the same continuous free variables (names, priors, transforms, dims,
    coords), the observed variables that no latent touches, the potentials on the
    parameters and the Deterministics that do not involve a latent. Each explicit latent
    ``z``, the observed variables it explains and the potentials on it become one
    `pm.Potential` ``"<z>_marginal"``: ``sum_i logsumexp_k log p(z_i = k, y_i | θ)``, built
    from the graph the E-step enumerates (for a `pm_em.MarkovChain`, log p(y | θ) by the
    forward algorithm), so EM and NUTS on this model target the same density. Marginal
    mixtures (`pm.Mixture`, `pm.NormalMixture`, ...) are summed out already and stay as they
    are, with PyMC's own density.

    Parameters
    ----------
    model : pm.Model, optional
        Default: the model of the ``with`` context.
    latent : sequence of str, optional
        The latents to sum out; default: every discrete free variable (as in `pm_em.fit`).

    Returns
    -------
    pm.Model
        Its ``logp(jacobian=False)`` equals the observed-data log posterior of `pm_em.fit`.

    Raises
    ------
    ValueError
        For a model that EM cannot handle (see `pm_em.build_problem`).

    Examples
    --------
    >>> import numpy as np, pymc as pm, pm_em
    >>> x = np.r_[np.linspace(-3, -1, 20), np.linspace(1, 3, 30)]
    >>> with pm.Model() as model:
    ...     w = pm.Dirichlet("w", a=np.ones(2))
    ...     mu = pm.Normal("mu", 0, 10, shape=2)
    ...     z = pm.Categorical("z", p=w, shape=len(x))
    ...     y = pm.Normal("y", mu=mu[z], sigma=1.0, observed=x)
    >>> marginal = pm_em.marginalize(model)
    >>> [v.name for v in marginal.free_RVs], [p.name for p in marginal.potentials]
    (['w', 'mu'], ['z_marginal'])
    """
    model = pm.modelcontext(model)
    return _marginal_model(build_problem(model, latent))


def compile_to_x(problem: EMProblem, **compile_kwargs) -> Callable[..., np.ndarray]:
    """Compile ``(constrained parameter values...) -> x``, the flat unconstrained vector.

    The arguments are the parameters' constrained values in the order of ``problem.params``
    (the layout of a ``posterior`` group); each is mapped through its forward transform,
    with the transforms' own arguments (e.g. bounds given by other parameters) evaluated at
    the values passed.
    """
    model = problem.model
    rvs = [model[p.name] for p in problem.params]
    inputs = [rv.type(name=rv.name) for rv in rvs]
    parts = []
    for rv, value in zip(rvs, inputs, strict=True):
        transform = model.rvs_to_transforms.get(rv)
        out = value if transform is None else transform.forward(value, *rv.owner.inputs)
        parts.append(pt.as_tensor(out).astype("float64").ravel())
    if not parts:
        return lambda *values: np.zeros(0)
    x = pt.concatenate(parts)
    # A transform's arguments may involve other parameters: evaluate them at the inputs.
    [x] = graph_replace([x], dict(zip(rvs, inputs, strict=True)), strict=False)
    fn = compile_pymc(inputs, x, on_unused_input="ignore", **compile_kwargs)
    return lambda *values: np.asarray(fn(*values), dtype="float64")


def _draws_x(problem: EMProblem, posterior: xr.Dataset, to_x) -> np.ndarray:
    """(n_chain, n_draw, n_params) unconstrained parameter vectors of every draw."""
    missing = [p.name for p in problem.params if p.name not in posterior]
    if missing:
        raise ValueError(
            f"The posterior has no draws of parameter(s) {missing}. Sample every continuous "
            "free variable (do not restrict `var_names`)."
        )
    arrays = [posterior[p.name].transpose("chain", "draw", ...).values for p in problem.params]
    n_chain, n_draw = posterior.sizes["chain"], posterior.sizes["draw"]
    out = np.empty((n_chain, n_draw, problem.n_params))
    for c in range(n_chain):
        for d in range(n_draw):
            out[c, d] = to_x(*(a[c, d] for a in arrays))
    return out


def _latent_groups(
    problem: EMProblem, xs: np.ndarray, estep: Callable[[np.ndarray], EStepResult], with_loglik
) -> tuple[xr.Dataset, xr.Dataset | None]:
    """Posterior means of the E-step's expectations, and the pointwise log likelihood per draw.

    Per latent: the average of p(z | y, θ_s) over draws. Per variable with missing values:
    the posterior mean and sd of the missing entries, by the laws of total expectation and
    variance over the draws' conditional means and sds.
    """
    model = problem.model
    coords, _ = coords_and_dims_for_inferencedata(model)
    n_chain, n_draw = xs.shape[:2]
    missing = tuple(getattr(problem, "missing", ()))
    impute = compile_missing(problem, **pytensor_compile_kwargs()) if missing else None
    resp_sum = [np.zeros((*lat.shape, lat.support.size)) for lat in problem.latents]
    moments: dict[str, list[np.ndarray]] = {}  # name: [sum of means, sum of second moments]
    loglik: dict[str, np.ndarray] = {}
    for c in range(n_chain):
        for d in range(n_draw):
            e = estep(xs[c, d])
            resp = e.resp
            for total, r in zip(resp_sum, resp, strict=True):
                total += r
            if impute is not None:
                for name, (mean, sd) in impute(xs[c, d], resp).items():
                    acc = moments.setdefault(name, [0.0, 0.0])
                    acc[0] = acc[0] + mean
                    acc[1] = acc[1] + sd**2 + mean**2
            if with_loglik:
                store_log_likelihood(loglik, problem, e, (c, d), (n_chain, n_draw))
    n_total = max(n_chain * n_draw, 1)
    lat_vars = {
        lat.name: xr.DataArray(
            total / n_total,
            dims=(*lat.dims, lat.support_dim),
            coords={
                lat.support_dim: support_coords(lat, coords),
                **{dim: coords[dim] for dim in lat.dims if dim in coords},
            },
        )
        for lat, total in zip(problem.latents, resp_sum, strict=True)
    }
    for spec in missing:  # the layout of `pm_em.fit`'s latent_posterior
        first, second = (np.asarray(a) / n_total for a in moments[spec.name])
        sd = np.sqrt(np.maximum(second - first**2, 0.0))
        dim_coords = {
            dim: coords[dim]
            for dim in spec.dims
            if dim in coords and len(coords[dim]) == first.size
        }
        lat_vars[spec.unobserved] = xr.DataArray(first, dims=spec.dims, coords=dim_coords)
        lat_vars[f"{spec.unobserved}_sd"] = xr.DataArray(sd, dims=spec.dims, coords=dim_coords)
    latent_posterior = xr.Dataset(lat_vars, attrs={"n_draws_averaged": n_total})
    if not with_loglik:
        return latent_posterior, None
    return latent_posterior, log_likelihood_dataset(problem, loglik)


def _loglik_names(problem: EMProblem) -> list[str]:
    # The same names as `pm_em.fit`'s log_likelihood group.
    return [*("+".join(lat.observed) or lat.name for lat in problem.latents), *problem.log_lik_rest]


def store_log_likelihood(
    store: dict[str, np.ndarray],
    problem: EMProblem,
    e: EStepResult,
    index: tuple[int, int],
    sizes: tuple[int, int],
) -> None:
    """Write the pointwise log likelihood of E-step result ``e`` at ``store[name][index]``.

    ``store`` maps each name of `pm_em.fit`'s ``log_likelihood`` group to an array of shape
    ``(*sizes, *pointwise shape)`` (chain, draw first), created on first use.
    """
    for name, values in zip(_loglik_names(problem), [*e.log_marginal, *e.log_lik_rest]):
        values = np.asarray(values)
        if name not in store:
            store[name] = np.empty((*sizes, *values.shape))
        store[name][index] = values


def log_likelihood_dataset(problem: EMProblem, loglik: dict[str, np.ndarray]) -> xr.Dataset:
    """Package per-draw pointwise log likelihoods as `pm_em.fit`'s ``log_likelihood`` group.

    ``loglik`` is what `store_log_likelihood` filled: arrays with (chain, draw) first.
    """
    coords, dims = coords_and_dims_for_inferencedata(problem.model)
    lat_dims = {"+".join(lat.observed) or lat.name: list(lat.dims) for lat in problem.latents}
    rest_dims = {
        name: list(d)
        for name, d in getattr(problem, "log_lik_dims", {}).items()
        if d is not None and name in problem.log_lik_rest
    }
    return dict_to_dataset(loglik, coords=coords, dims={**dims, **rest_dims, **lat_dims})


def sample_marginal(
    model: pm.Model | None = None, *, latent: Sequence[str] | None = None, **pm_sample_kwargs
) -> xr.DataTree:
    """Sample the model with its discrete latents summed out, with `pm.sample` (NUTS).

    The sampled model is `marginalize(model, latent=latent)`, whose log density is the one
    EM maximizes; a model whose only latents are marginal mixtures (`pm.Mixture`,
    `pm.NormalMixture`, zero-inflated and hurdle likelihoods) is already marginal and is
    sampled as it is. The result is PyMC's DataTree plus the groups that line it up with
    `pm_em.fit`'s result.

    Parameters
    ----------
    model : pm.Model, optional
        Default: the model of the ``with`` context.
    latent : sequence of str, optional
        The latents to sum out; default: every discrete free variable.
    **pm_sample_kwargs
        Passed on to `pm.sample` unchanged, with two additions: ``compile_kwargs`` defaults
        to pm_em's (``{"mode": "CVM"}``, see `pm_em.fit`) for PyMC's own NUTS sampler, and
        ``idata_kwargs={"log_likelihood": True}`` is honoured by computing the pointwise log
        likelihood of every observed variable with the latents summed out (named and laid
        out as in `pm_em.fit`).

    Returns
    -------
    xarray.DataTree
        `pm.sample`'s groups, plus ``latent_posterior``: per latent ``z`` the posterior mean
        of p(z = k | y, θ) over all draws, dims ``(*z dims, "z_support")`` as in
        `pm_em.fit`. ``observed_data`` also holds the summed-out observed variables.

    Raises
    ------
    ValueError
        For ``return_inferencedata=False``, or a model EM cannot handle.
    """
    model = pm.modelcontext(model)
    if pm_sample_kwargs.get("return_inferencedata", True) is False:
        raise ValueError("`sample_marginal` returns a DataTree; drop `return_inferencedata=False`.")
    kwargs = dict(pm_sample_kwargs)
    idata_kwargs = dict(kwargs.pop("idata_kwargs", None) or {})
    with_loglik = bool(idata_kwargs.pop("log_likelihood", False))
    if kwargs.get("nuts_sampler") in (None, "pymc"):
        kwargs.setdefault("compile_kwargs", pytensor_compile_kwargs())

    # fit's own key, so that a model already fitted is not compiled again.
    compiled = compile_model(model, latent)
    problem = compiled.problem
    # A model whose only latents are marginal mixtures is sampled as the user wrote it (PyMC's
    # own mixture density); explicit latents are summed out into a new model.
    explicit = any(lat.mixture_of is None for lat in problem.latents)
    marginal = _marginal_model(problem) if explicit else model
    with marginal:
        idata = pm.sample(idata_kwargs=idata_kwargs, **kwargs)

    to_x = compile_to_x(problem, **pytensor_compile_kwargs())
    xs = _draws_x(problem, idata["posterior"].dataset, to_x)
    latent_posterior, log_likelihood = _latent_groups(problem, xs, compiled.estep, with_loglik)
    idata["latent_posterior"] = xr.DataTree(latent_posterior)
    if log_likelihood is not None:
        idata["log_likelihood"] = xr.DataTree(log_likelihood)
    observations = find_observations(model)
    if observations:
        coords, dims = coords_and_dims_for_inferencedata(model)
        idata["observed_data"] = xr.DataTree(
            dict_to_dataset(observations, coords=coords, dims=dims, sample_dims=[])
        )
    return idata
