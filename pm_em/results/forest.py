"""`plot_em_forest`: EM estimates with Laplace intervals beside posterior intervals.

``az.plot_forest({"EM": em, "NUTS": nuts})`` draws a one-draw EM result under the NUTS
interval, where it cannot be seen. This forest draws each scalar parameter on its own row,
EM's estimate (a diamond) and its Laplace HDI (a thick bar) just above the row, the
posterior's mean (a circle) and HDI (a thin bar) just below, EM on top. EM's components are
aligned with the posterior's first (`pm_em.align_components`), so both rows of a label are
the same component. One panel per variable, each with its own scale.
"""

from collections.abc import Sequence

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pm_em.results.compare import _em_point, _label, align_components

__all__ = ["plot_em_forest"]

_SAMPLE = ("chain", "draw")
_OFFSET = 0.17  # vertical distance of EM's and the posterior's marks from the row's centre
EM_STYLE = {"color": "C3", "marker": "D", "zorder": 4}
POSTERIOR_STYLE = {"color": "C0", "marker": "o", "zorder": 2}


def _aligned(ds: xr.Dataset, alignment: dict) -> xr.Dataset:
    for dim, perm in alignment.items():
        if dim in ds.dims:
            ds = ds.isel({dim: perm}).assign_coords({dim: ds[dim].values})
    return ds


def _rows(point: xr.Dataset, var: str):
    """Return the row labels, the dims and the flat EM values of ``var``."""
    da = point[var]
    dims = [str(d) for d in da.dims]
    coords = {d: da[d].values for d in dims if d in da.coords}
    labels = [_label(var, dims, coords, idx) for idx in np.ndindex(da.shape)]
    return labels, dims, da.values.ravel()


def _hdi(ds: xr.Dataset, var: str, dims: list[str], prob: float) -> np.ndarray:
    """(n_rows, 2) HDI of ``var``, rows in the order of ``dims``."""
    hdi = az.hdi(ds[var].transpose(*_SAMPLE, *dims), prob=prob)
    return hdi.transpose(*dims, "ci_bound").values.reshape(-1, 2)


def plot_em_forest(
    em_idata: xr.DataTree,
    posterior_idata: xr.DataTree | None = None,
    *,
    laplace_idata: xr.DataTree | None = None,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    component_dim: str | Sequence[str] | None = None,
    labels: tuple[str, str] = ("EM", "NUTS"),
) -> Figure:
    """Forest plot of the EM estimate (with a Laplace HDI) beside a posterior's HDI.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.
    posterior_idata : xarray.DataTree, optional
        A posterior sample of the same model (e.g. `pm_em.sample_marginal`); without it,
        only EM and its Laplace interval are drawn.
    laplace_idata : xarray.DataTree, optional
        `pm_em.laplace` of ``em_idata``: its ``hdi_prob`` HDI is drawn around the estimate.
    var_names : sequence of str, optional
        Default: every variable of the EM estimate (that the posterior also has).
    hdi_prob : float, default 0.94
    component_dim : str or sequence of str, optional
        See `pm_em.align_components`.
    labels : tuple of str, default ("EM", "NUTS")
        Legend names of the estimate and of the posterior.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per variable, one row per scalar element, labelled as `pm_em.compare`
        labels them (``"mu[short]"``).

    Examples
    --------
    >>> import numpy as np, arviz as az, pm_em
    >>> em = az.from_dict({"posterior": {"mu": np.array([[[-1.0, 3.0]]])}},
    ...                   dims={"mu": ["component"]})
    >>> rng = np.random.default_rng(0)
    >>> nuts = az.from_dict({"posterior": {"mu": rng.normal([-1.0, 3.0], 0.1, (2, 100, 2))}},
    ...                     dims={"mu": ["component"]})
    >>> fig = pm_em.plot_em_forest(em, nuts, component_dim="component")
    >>> [t.get_text() for t in fig.axes[0].get_yticklabels()]
    ['mu[0]', 'mu[1]']
    """
    if not 0 < hdi_prob < 1:
        raise ValueError(f"`hdi_prob` must lie in (0, 1), got {hdi_prob!r}.")
    point = _em_point(em_idata)
    post = posterior_idata["posterior"].dataset if posterior_idata is not None else None
    names = list(var_names) if var_names is not None else list(point.data_vars)
    if post is not None and var_names is None:
        names = [v for v in names if v in post]
    missing = [v for v in names if v not in point or (post is not None and v not in post)]
    if missing or not names:
        raise ValueError(f"No variable to draw, or not in both results: {missing or names}.")
    alignment = {}
    if posterior_idata is not None:
        alignment = align_components(
            em_idata, posterior_idata, component_dim=component_dim, var_names=names
        )
    point = _aligned(point, alignment)
    lap = None
    if laplace_idata is not None:
        lap = _aligned(laplace_idata["posterior"].dataset, alignment)
    return _draw(point, post, lap, names, hdi_prob, labels)


def _draw(point, post, lap, names, hdi_prob, labels) -> Figure:
    import matplotlib.pyplot as plt

    sizes = [max(int(point[v].size), 1) for v in names]
    fig, axes = plt.subplots(
        len(names),
        1,
        figsize=(6.5, 0.9 + 0.45 * sum(sizes) + 0.35 * len(names)),
        height_ratios=sizes,
        layout="constrained",
        squeeze=False,
    )
    for ax, var in zip(axes[:, 0], names, strict=True):
        row_labels, dims, em_values = _rows(point, var)
        y = np.arange(len(row_labels))[::-1].astype(float)  # first element on top
        if post is not None:
            hdi = _hdi(post, var, dims, hdi_prob)
            mean = post[var].mean(_SAMPLE).transpose(*dims).values.ravel()
            ax.hlines(y - _OFFSET, hdi[:, 0], hdi[:, 1], color="C0", linewidth=1.5, zorder=2)
            ax.plot(mean, y - _OFFSET, linestyle="none", markersize=5, **POSTERIOR_STYLE)
        if lap is not None:
            hdi = _hdi(lap, var, dims, hdi_prob)
            ax.hlines(y + _OFFSET, hdi[:, 0], hdi[:, 1], color="C3", linewidth=4, zorder=3)
        ax.plot(em_values, y + _OFFSET, linestyle="none", markersize=6, mec="white", **EM_STYLE)
        ax.set_yticks(y, row_labels)
        ax.set_ylim(y.min() - 0.6, y.max() + 0.6)
        ax.grid(axis="x", color="0.9")
        ax.set_axisbelow(True)
    em_label = f"{labels[0]} estimate"
    handles = [Line2D([], [], linestyle="none", markersize=6, label=em_label, **EM_STYLE)]
    if lap is not None:
        band = f"Laplace {hdi_prob:.0%} HDI"
        handles.append(Line2D([], [], color="C3", linewidth=4, label=band))
    if post is not None:
        handles += [
            Line2D([], [], linestyle="none", label=f"{labels[1]} mean", **POSTERIOR_STYLE),
            Line2D([], [], color="C0", linewidth=1.5, label=f"{labels[1]} {hdi_prob:.0%} HDI"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)))
    return fig
