"""The fitted mixture density at any points: the model's own graph, with the data replaced.

A latent's joint log density ``log p(z_i = k, y_i | θ)`` (`pm_em.reading.problem.Latent`,
the E-step's input, whatever reader found the latent) is a graph of the parameters and of
the observed data. Put other values in the place of the data and it gives, at the estimate,
``log(w_k f_k(y))`` at those values: the weighted component densities, whose sum over ``k``
is the mixture density. The points are fed in batches shaped like the data, so no graph
shape changes. This is the density of new data only for mixtures whose weights and
components are the same for every element (no covariates); `component_log_densities`
checks that numerically and refuses otherwise.
"""

import numpy as np
import pymc as pm
import pytensor.tensor as pt
import xarray as xr
from pymc.pytensorf import compile as compile_pymc
from pytensor.compile import SharedVariable
from pytensor.graph.basic import Constant
from pytensor.graph.replace import clone_replace
from pytensor.graph.traversal import ancestors

from pm_em.compiling import pytensor_compile_kwargs
from pm_em.engine.compiled import compile_model
from pm_em.reading.problem import Latent
from pm_em.results.laplace import _mode_x

__all__ = ["component_log_densities"]


def _data_variable(model: pm.Model, observed: str):
    """Return the graph variable holding the data of ``observed``, and its values."""
    if observed not in model.named_vars or model[observed] not in model.observed_RVs:
        raise ValueError(
            f"'{observed}' is not an observed variable of the model (with missing values, "
            "PyMC splits it into '<name>_observed' and '<name>_unobserved', and the fitted "
            "density is not drawn for it)."
        )
    var = model.rvs_to_values[model[observed]]
    if isinstance(var, Constant):
        return var, np.asarray(var.data)
    if isinstance(var, SharedVariable):
        return var, np.asarray(var.get_value())
    raise ValueError(f"The data of '{observed}' is neither a constant nor `pm.Data`.")


def component_log_densities(
    em_idata: xr.DataTree,
    model: pm.Model,
    latent: str,
    observed: str,
    points: np.ndarray,
    *,
    latents: list[str] | None = None,
) -> np.ndarray:
    """Return ``log(w_k f_k(point))`` at the EM estimate for every point and support value.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit` for ``model``.
    model : pm.Model
    latent : str
        The latent whose mixture is evaluated.
    observed : str
        Its one observed variable; ``points`` take the place of its data.
    points : ndarray of shape (n_points, *event_shape)
        Values of one element of ``observed`` (a number for a univariate mixture, a row for
        a multivariate one), in its dtype.
    latents : list of str, optional
        The latents EM summed out (as passed to `pm_em.fit`).

    Returns
    -------
    ndarray of shape (n_points, n_support)

    Raises
    ------
    ValueError
        If the latent's weights or components differ between elements (covariates), or the
        observed variable's data cannot be replaced.
    """
    problem = compile_model(model, latents).problem
    lat = next((la for la in problem.latents if la.name == latent), None)
    if lat is None:
        raise ValueError(f"'{latent}' is not a latent of the model EM summed out.")
    var, data = _data_variable(model, observed)
    if var not in set(ancestors([lat.log_joint])):
        raise ValueError(f"The joint density of latent '{latent}' does not read '{observed}'.")
    n_elem = int(np.prod(lat.shape))
    if data.shape[: len(lat.shape)] != lat.shape:
        raise ValueError(
            f"'{observed}' has shape {data.shape}, which does not start with the shape "
            f"{lat.shape} of latent '{latent}': its elements cannot be lined up."
        )
    event = data.shape[len(lat.shape) :]
    stand_in = pt.tensor(dtype=var.type.dtype, shape=data.shape, name=f"{observed}_points")
    graph = clone_replace(lat.log_joint, replace={var: stand_in}, rebuild_strict=False)
    fn = compile_pymc(
        [problem.x, stand_in], graph, on_unused_input="ignore", **pytensor_compile_kwargs()
    )
    x_hat = _mode_x(problem, em_idata)
    _check_same_for_every_element(fn, x_hat, data, lat, n_elem, event)
    points = np.asarray(points, dtype=data.dtype).reshape(-1, *event)
    out = np.empty((len(points), lat.support.size))
    for start in range(0, len(points), n_elem):
        batch = points[start : start + n_elem]
        padded = np.concatenate([batch, np.repeat(batch[:1], n_elem - len(batch), axis=0)])
        values = np.asarray(fn(x_hat, padded.reshape(data.shape)))  # (*lat.shape, K)
        out[start : start + len(batch)] = values.reshape(n_elem, -1)[: len(batch)]
    return out


def _check_same_for_every_element(fn, x_hat, data, lat: Latent, n_elem: int, event) -> None:
    """Refuse a mixture whose weights or components vary between elements."""
    flat = data.reshape(n_elem, *event)
    first = flat[np.all(np.isfinite(flat.reshape(n_elem, -1)), axis=1)][:1]
    if not len(first):
        return
    same = np.repeat(first, n_elem, axis=0).reshape(data.shape)
    values = np.asarray(fn(x_hat, same)).reshape(n_elem, -1)
    if not np.allclose(values, values[:1], rtol=1e-9, atol=1e-12, equal_nan=True):
        raise ValueError(
            f"The weights or components of latent '{lat.name}' differ between its elements "
            "(covariates, or per-element weights): the mixture has no single density to draw. "
            "Call `plot_mixture` without `model=` to draw the density at the observations."
        )
