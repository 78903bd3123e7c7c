"""`plot_mixture`: the fitted mixture over the data, in the model's own names and coords.

With the model (``model=`` or the ``with`` context), the density is evaluated on a regular
grid from the model's own graph (`pm_em.results.density`): a smooth curve for 1-D data,
a probability mass at every integer for count data, smooth contours for 2-D data. Without
it, the density is known only at the observations (``exp`` of the ``log_likelihood``
group), and is drawn there.

Components are labelled with the coords of the dim the mixture weights live on (as
`pm_em.align_components` finds it), axes with the observed variable's name and the coords
of its trailing dim.
"""

import numpy as np
import pymc as pm
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.tri import Triangulation
from scipy.special import logsumexp

from pm_em.results.compare import _component_dims, _em_point
from pm_em.results.density import component_log_densities

__all__ = ["plot_mixture"]

_SAMPLE = ("chain", "draw")
_GRID_1D = 400
_GRID_2D = 120
# 2-D contours enclose these shares of the fitted probability (highest-density regions).
_REGIONS = (0.25, 0.5, 0.75, 0.95)


def _pick_latent(em_idata: xr.DataTree, latent: str | None) -> str:
    if "latent_posterior" not in em_idata.children:
        raise ValueError("`em_idata` has no `latent_posterior` group; pass a `pm_em.fit` result.")
    # Responsibilities, not the imputations of missing values (PyMC's `<name>_unobserved`).
    names = [
        str(v)
        for v in em_idata["latent_posterior"].dataset.data_vars
        if not str(v).removesuffix("_sd").endswith("_unobserved")
    ]
    if latent is None:
        if len(names) != 1:
            raise ValueError(f"`em_idata` has latents {names}; pick one with `latent=`.")
        return names[0]
    if latent not in names:
        raise ValueError(f"Latent '{latent}' is not in `em_idata.latent_posterior` ({names}).")
    return latent


def _observed_of(em_idata: xr.DataTree, name: str, elem_dims: tuple) -> str:
    if "log_likelihood" not in em_idata.children or "observed_data" not in em_idata.children:
        raise ValueError("`em_idata` needs `log_likelihood` and `observed_data` groups.")
    loglik = em_idata["log_likelihood"].dataset
    observed = em_idata["observed_data"].dataset
    candidates = [
        str(v)
        for v in loglik.data_vars
        if v in observed and tuple(d for d in loglik[v].dims if d not in _SAMPLE) == elem_dims
    ]
    incomplete = [str(v) for v in loglik.data_vars if f"{v}_observed" in observed]
    if not candidates and incomplete:
        raise ValueError(
            f"Observed variable(s) {incomplete} of latent '{name}' have missing values (PyMC "
            "keeps only their observed entries in `observed_data`); `plot_mixture` draws "
            "fully observed data. Plot a fit to the complete rows instead."
        )
    if len(candidates) != 1:
        raise ValueError(
            f"Latent '{name}' explains {len(candidates)} observed variables with one value per "
            f"element ({candidates}); `plot_mixture` draws a mixture of one observed variable."
        )
    ll = loglik[candidates[0]]
    if ll.sizes.get("chain", 1) * ll.sizes.get("draw", 1) != 1:
        raise ValueError("`plot_mixture` draws an EM estimate (chain=1, draw=1).")
    return candidates[0]


def _component_labels(em_idata: xr.DataTree, name: str, resp: xr.DataArray):
    """Legend title and one label per support value: the weights' coords when known."""
    support = [str(k) for k in resp[resp.dims[-1]].values]
    try:
        point = _em_point(em_idata)
        groups = _component_dims(em_idata, point, None)
    except ValueError:
        groups = []
    for dim in (d for group in groups for d in group):
        if point.sizes[dim] == len(support) and dim in point.coords:
            return str(dim), [str(c) for c in point[dim].values]
    return name, support


def plot_mixture(
    em_idata: xr.DataTree,
    *,
    model: pm.Model | None = None,
    latent: str | None = None,
    bins: int = 40,
) -> Figure:
    """Plot the fitted mixture density over the data.

    Continuous 1-D data: a density histogram with the mixture density and each component's
    weighted density ``w_k f_k``. Count data (integer-valued): the relative frequency of
    each integer as bars, and the fitted probability mass at the integers as points, so a
    good fit shows points on the bar tops. 2-D data: a scatter coloured by the most
    probable component, under contours of the mixture density that enclose 25%, 50%, 75%
    and 95% of its probability. Components are named by the coords of the weights' dim,
    axes by the observed variable's trailing coords.

    The density is evaluated on a regular grid from the model's own graph when the model
    is known (``model=``, or the model of the ``with`` context); without it, it is known
    only at the observations and is drawn there (points joined by lines in 1-D, contours
    over a triangulation of the data in 2-D). Only mixtures whose weights and components
    are the same for every element (no covariates) have one density to draw.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.
    model : pm.Model, optional
        The fitted model. Default: the model of the ``with`` context, if any.
    latent : str, optional
        Which latent's mixture to draw; needed only when the model has several.
    bins : int, default 40
        Histogram bins (continuous 1-D data).

    Returns
    -------
    matplotlib.figure.Figure
        One axes; its legend names the data, the mixture and each component.

    Raises
    ------
    ValueError
        For a result without the groups of `pm_em.fit`, a latent explaining several
        observed variables, data of more than two dimensions, or (with a model) a mixture
        whose components vary between elements.
    """
    name = _pick_latent(em_idata, latent)
    resp = em_idata["latent_posterior"][name]
    elem_dims = resp.dims[:-1]
    obs = _observed_of(em_idata, name, elem_dims)
    if model is None:
        model = pm.Model.get_context(error_if_none=False)
    ll = em_idata["log_likelihood"][obs].squeeze(_SAMPLE, drop=True)
    at_data = np.exp(ll.values.ravel())  # the mixture density at each observation
    r = resp.values.reshape(-1, resp.shape[-1])  # (n, K)
    title, labels = _component_labels(em_idata, name, resp)
    data = em_idata["observed_data"][obs]
    # The data's leading dims are the latent's elements, whatever they are named (a model
    # without dims names them "z_dim_0" for the latent and "y_dim_0" for the data).
    if data.shape[: len(elem_dims)] != resp.shape[:-1]:
        raise ValueError(
            f"'{obs}' has shape {data.shape}, which does not start with the shape "
            f"{resp.shape[:-1]} of latent '{name}'."
        )
    extra = list(data.dims[len(elem_dims) :])
    ctx = {"em": em_idata, "model": model, "name": name, "obs": obs, "labels": labels}
    ctx |= {"title": title, "at_data": at_data, "r": r}
    if not extra:
        y = data.values.ravel()
        integer = np.issubdtype(data.dtype, np.integer) or (
            model is not None and str(model[obs].dtype).startswith(("int", "uint"))
        )
        return _mixture_counts(y, ctx) if integer else _mixture_1d(y, bins, ctx)
    if len(extra) == 1 and data.sizes[extra[0]] == 2:
        points = data.values.reshape(-1, 2)
        coords = data[extra[0]].values if extra[0] in data.coords else None
        axes = [str(c) for c in coords] if coords is not None else [f"{obs}[0]", f"{obs}[1]"]
        return _mixture_2d(points, axes, ctx)
    raise ValueError(
        f"Observed variable '{obs}' has {1 + len(extra)}-D values per element; `plot_mixture` "
        "draws 1-D and 2-D data."
    )


def _weighted(ctx, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixture density and weighted component densities (n, K) on ``grid``, from the model."""
    log_wf = component_log_densities(ctx["em"], ctx["model"], ctx["name"], ctx["obs"], grid)
    return np.exp(logsumexp(log_wf, axis=1)), np.exp(log_wf)


def _legend(ax, ctx, extra_handles=()):
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, *extra_handles], title=ctx["title"], loc="best")


def _mixture_1d(y: np.ndarray, bins: int, ctx) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.hist(y, bins=bins, density=True, color="0.8", edgecolor="white", label="data")
    if ctx["model"] is not None:
        pad = 0.05 * (y.max() - y.min() or 1.0)
        grid = np.linspace(y.min() - pad, y.max() + pad, _GRID_1D)
        density, parts = _weighted(ctx, grid)
    else:
        order = np.argsort(y)
        grid, density = y[order], ctx["at_data"][order]
        parts = (ctx["r"] * ctx["at_data"][:, None])[order]
    for k, label in enumerate(ctx["labels"]):
        ax.plot(grid, parts[:, k], "--", color=f"C{k + 1}", label=label)
    ax.plot(grid, density, color="C0", linewidth=2, label="mixture")
    ax.set(xlabel=ctx["obs"], ylabel="density")
    ax.set_title(f"Fitted mixture of '{ctx['obs']}' (EM estimate)")
    _legend(ax, ctx)
    return fig


def _mixture_counts(y: np.ndarray, ctx) -> Figure:
    import matplotlib.pyplot as plt

    y = y.astype("int64")
    values, counts = np.unique(y, return_counts=True)
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.bar(values, counts / y.size, width=0.8, color="0.8", label="data (relative frequency)")
    if ctx["model"] is not None:
        grid = np.arange(values.min(), values.max() + 1)
        pmf, parts = _weighted(ctx, grid)
    else:  # the mass is known only at the values observed
        first = np.searchsorted(np.sort(y), values)
        order = np.argsort(y, kind="stable")[first]
        grid, pmf = values, ctx["at_data"][order]
        parts = ctx["r"][order] * pmf[:, None]
    for k, label in enumerate(ctx["labels"]):
        ax.plot(grid, parts[:, k], "_", markersize=10, mew=2, color=f"C{k + 1}", label=label)
    ax.plot(grid, pmf, "o", color="C0", markersize=5, label="mixture")
    ax.vlines(grid, 0, pmf, color="C0", linewidth=1)
    ax.set(xlabel=ctx["obs"], ylabel="probability")
    ax.set_title(f"Fitted mixture of '{ctx['obs']}' (EM estimate): mass at the integers")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(ax, ctx)
    return fig


def _hdr_levels(density: np.ndarray) -> np.ndarray:
    """Density levels whose upper sets hold the `_REGIONS` shares of the grid's mass."""
    flat = np.sort(density.ravel())[::-1]
    mass = np.cumsum(flat) / flat.sum()
    levels = [flat[min(np.searchsorted(mass, share), flat.size - 1)] for share in _REGIONS]
    return np.unique(levels)  # increasing, as contour wants


def _mixture_2d(points: np.ndarray, axes: list[str], ctx) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5), layout="constrained")
    hard = ctx["r"].argmax(axis=1)
    for k, label in enumerate(ctx["labels"]):
        mine = hard == k
        ax.scatter(*points[mine].T, s=10, alpha=0.6, color=f"C{k + 1}", label=label)
    if ctx["model"] is not None:
        lo, hi = points.min(axis=0), points.max(axis=0)
        pad = 0.08 * np.where(hi > lo, hi - lo, 1.0)
        gx = np.linspace(lo[0] - pad[0], hi[0] + pad[0], _GRID_2D)
        gy = np.linspace(lo[1] - pad[1], hi[1] + pad[1], _GRID_2D)
        mesh = np.stack(np.meshgrid(gx, gy), axis=-1)  # (ny, nx, 2)
        density = _weighted(ctx, mesh.reshape(-1, 2))[0].reshape(mesh.shape[:2])
        ax.contour(gx, gy, density, levels=_hdr_levels(density), colors="C0", linewidths=1)
        what = "fitted density: " + ", ".join(f"{s:.0%}" for s in _REGIONS) + " regions"
    else:
        tri = Triangulation(points[:, 0], points[:, 1])
        # Drop the long, thin triangles at the hull, where no data pins the density down.
        corners = points[tri.triangles]  # (n_tri, 3, 2)
        edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max(axis=1)
        tri.set_mask(edges > np.quantile(edges, 0.95))
        levels = np.unique(np.quantile(ctx["at_data"], [0.1, 0.3, 0.5, 0.7, 0.9]))
        ax.tricontour(tri, ctx["at_data"], levels=levels, colors="C0", linewidths=1)
        what = "fitted density at the data (pass `model=` for a grid)"
    ax.set(xlabel=axes[0], ylabel=axes[1])
    ax.set_title(f"Fitted mixture of '{ctx['obs']}' (EM estimate)")
    _legend(ax, ctx, [Line2D([], [], color="C0", linewidth=1, label=what)])
    return fig
