"""Package an EM result as an ArviZ `xarray.DataTree`.

The layout lines up with a NUTS result group for group: ``posterior`` and ``log_likelihood``
have ``chain`` and ``draw`` of length 1 and the model's dims and coords, so ArviZ functions
and plots take both side by side.
"""

from collections.abc import Sequence

import numpy as np
import xarray as xr
from arviz_base import dict_to_dataset
from pymc.backends.arviz import coords_and_dims_for_inferencedata, find_constants, find_observations

from pm_em.reading.problem import EMProblem

__all__ = ["build_datatree", "support_coords"]


def _library_attrs() -> dict:
    from pm_em import __version__

    return {"inference_library": "pm_em", "inference_library_version": __version__}


def support_coords(latent, coords: dict) -> np.ndarray:
    """Labels of a latent's support dim: the model's coords when the dim is one of its dims.

    A mixture's latent takes its weights' component dim (e.g. ``"component"``), and then
    its labels, so that responsibilities line up with the component parameters.
    """
    labels = coords.get(latent.support_dim)
    if labels is not None and len(labels) == latent.support.size:
        return np.asarray(labels)
    return latent.support


def build_datatree(
    problem: EMProblem,
    best,
    runs: Sequence,
    *,
    best_index: int,
    optima: Sequence[tuple[float, Sequence[int]]] = (),
    point_values: dict[str, np.ndarray],
    missing_values: dict[str, tuple[np.ndarray, np.ndarray]],
    elapsed: float,
) -> xr.DataTree:
    """Build the result `DataTree` of `pm_em.fit` (groups documented there)."""
    model = problem.model
    coords, dims = coords_and_dims_for_inferencedata(model)
    e = best.estep
    attrs = {**_library_attrs(), "fit_time": elapsed}

    point_values = dict(point_values)
    for spec in problem.missing:
        # The completed data: observed entries, and conditional means where missing.
        filled = spec.data.copy()
        filled[spec.mask] = missing_values[spec.name][0]
        point_values[spec.name] = filled
    posterior = dict_to_dataset(
        {k: v[None, None] for k, v in point_values.items()},
        attrs=attrs,
        coords=coords,
        dims=dims,
    )

    lat_vars = {}
    chains = e.chains or (None,) * len(problem.latents)
    for lat, resp, chain in zip(problem.latents, e.resp, chains, strict=True):
        elem_coords = {d: coords[d] for d in lat.dims if d in coords}
        lat_vars[lat.name] = xr.DataArray(
            resp,
            dims=(*lat.dims, lat.support_dim),
            coords={lat.support_dim: support_coords(lat, coords), **elem_coords},
        )
        if chain is not None:  # a chain's most probable path (Viterbi)
            lat_vars[f"{lat.name}_viterbi"] = xr.DataArray(
                chain.viterbi, dims=lat.dims, coords=elem_coords
            )
    for spec in problem.missing:
        mean, sd = missing_values[spec.name]
        dim_coords = {
            d: coords[d] for d in spec.dims if d in coords and len(coords[d]) == mean.size
        }
        lat_vars[spec.unobserved] = xr.DataArray(mean, dims=spec.dims, coords=dim_coords)
        lat_vars[f"{spec.unobserved}_sd"] = xr.DataArray(sd, dims=spec.dims, coords=dim_coords)
    latent_posterior = xr.Dataset(lat_vars, attrs=attrs)

    log_lik = {}
    log_lik_dims = {}
    for lat, lm in zip(problem.latents, e.log_marginal, strict=True):
        name = "+".join(lat.observed) or lat.name
        log_lik[name] = lm[None, None]
        log_lik_dims[name] = list(lat.dims)
    for name, ll in zip(problem.log_lik_rest, e.log_lik_rest, strict=True):
        log_lik[name] = np.asarray(ll)[None, None]
        if problem.log_lik_dims.get(name) is not None:
            log_lik_dims[name] = list(problem.log_lik_dims[name])
    log_likelihood = dict_to_dataset(
        log_lik, attrs=attrs, coords=coords, dims={**dims, **log_lik_dims}
    )

    em_stats = _em_stats(problem, best, runs, best_index, attrs, coords, optima=optima)

    groups = {
        "posterior": posterior,
        "latent_posterior": latent_posterior,
        "em_stats": em_stats,
        "log_likelihood": log_likelihood,
    }
    kw = {"coords": coords, "dims": dims, "sample_dims": [], "attrs": attrs}
    observations = find_observations(model)
    if observations:
        groups["observed_data"] = dict_to_dataset(observations, **kw)
    constants = find_constants(model)
    groups["constant_data"] = dict_to_dataset(constants, **kw) if constants else xr.Dataset()
    return xr.DataTree.from_dict(groups)


def _em_stats(
    problem, best, runs, best_index, attrs, model_coords, counts=None, optima=()
) -> xr.Dataset:
    # ``counts``: each latent's expected counts per support value, when the caller has them
    # without the responsibilities (a chunked fit, pm_em.results.chunked); else from them.
    # ``optima``: (log posterior, run indices) of the distinct optima the runs reached.
    optimum_of = np.full(len(runs), -1)
    for j, (_, members) in enumerate(optima):
        optimum_of[list(members)] = j
    mode = best.mode
    data = {
        "log_posterior": ("iteration", np.asarray(best.log_posterior)),
        "log_likelihood": ("iteration", np.asarray(best.log_likelihood)),
        "converged": ((), bool(best.converged)),
        "n_iter": ((), int(best.n_iter)),
        "n_params": ((), int(problem.n_params)),
        "final_log_posterior": ((), float(best.estep.log_posterior)),
        "final_log_likelihood": ((), float(best.estep.log_likelihood)),
        "polish_gain": ((), float(best.polish_gain)),
        "mode_reached": ((), bool(getattr(best, "mode_reached", False))),
        "mode_check": ((), str(mode.method if mode is not None else "none")),
        "max_curvature": ((), float(mode.max_curvature if mode is not None else np.nan)),
        "gradient_norm": ((), float(mode.gradient_norm if mode is not None else np.nan)),
        "newton_step_se": ((), float(mode.newton_se if mode is not None else np.nan)),
        "saddle_log_posterior": ("saddle", np.asarray(best.saddles, dtype="float64")),
        "best_restart": ((), int(best_index)),
        "restart_log_posterior": ("restart", [r.final_log_posterior for r in runs]),
        "restart_n_iter": ("restart", [r.n_iter for r in runs]),
        "restart_converged": ("restart", [bool(r.converged) for r in runs]),
        "restart_status": ("restart", np.array([r.status for r in runs], dtype=str)),
        "restart_message": ("restart", np.array([r.message for r in runs], dtype=str)),
        "restart_optimum": ("restart", optimum_of),
        "optimum_log_posterior": ("optimum", np.array([lp for lp, _ in optima], dtype="float64")),
        "optimum_n_runs": ("optimum", np.array([len(m) for _, m in optima], dtype=int)),
    }
    coords = {
        "iteration": np.arange(len(best.log_posterior)),
        "restart": np.arange(len(runs)),
        "optimum": np.arange(len(optima)),
        "saddle": np.arange(len(best.saddles)),
    }
    if counts is None:
        counts = [
            resp.reshape(-1, lat.support.size).sum(axis=0)
            for lat, resp in zip(problem.latents, best.estep.resp, strict=True)
        ]
    chains = best.estep.chains or (None,) * len(problem.latents)
    for lat, count, chain in zip(problem.latents, counts, chains, strict=True):
        # Expected number of latent elements taking each support value.
        data[f"{lat.name}_count"] = (lat.support_dim, count)
        coords[lat.support_dim] = support_coords(lat, model_coords)
        if chain is not None:
            # A chain's expected transition counts (summed over sequences), and the entropy
            # of its posterior over whole paths (for ICL).
            from_dim = f"{lat.support_dim}_from"
            k = lat.support.size
            transitions = chain.expectations.transitions.reshape(-1, k, k).sum(axis=0)
            data[f"{lat.name}_transitions"] = ((from_dim, lat.support_dim), transitions)
            data[f"{lat.name}_path_entropy"] = ((), chain.entropy)
            coords[from_dim] = support_coords(lat, model_coords)
    return xr.Dataset(
        {k: xr.Variable(d, np.asarray(v)) for k, (d, v) in data.items()}, coords=coords, attrs=attrs
    )
