"""Plots of an EM fit, alone and beside a posterior sample (matplotlib, through ArviZ).

- `plot_convergence`: the observed-data log posterior per EM iteration, and its increments.
- `plot_em_posterior`: the EM estimate (and a Laplace interval) on the posterior density of
  every parameter, with EM's components aligned with the posterior's first.

`plot_convergence` returns a `matplotlib.figure.Figure`; `plot_em_posterior` returns ArviZ's
`PlotCollection` (its ``.savefig`` writes it, ``.viz["figure"]`` is the figure). The fitted
mixture is drawn by `pm_em.results.mixture_plot`, EM beside NUTS as a forest plot by
`pm_em.results.forest`.
"""

from collections.abc import Sequence

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pm_em.results.compare import _em_point, align_components

__all__ = ["plot_convergence", "plot_em_posterior"]

_SAMPLE = ("chain", "draw")


def plot_convergence(em_idata: xr.DataTree) -> Figure:
    """Plot the observed-data log posterior per EM iteration (left) and its increments (right).

    EM never decreases the log posterior, so the left curve rises monotonically; on the
    right, the increments on a log scale show EM's linear convergence, and any decrease
    would be marked in red. The dashed line is the final value (after the polish).

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if "em_stats" not in em_idata.children:
        raise ValueError("`em_idata` has no `em_stats` group; pass the result of `pm_em.fit`.")
    stats = em_idata["em_stats"].dataset
    trace = np.asarray(stats["log_posterior"].values, dtype="float64")
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
    left.plot(np.arange(trace.size), trace, marker="o", markersize=3, color="C0")
    if "final_log_posterior" in stats:
        final = float(stats["final_log_posterior"])
        left.axhline(final, color="C3", linestyle="--", linewidth=1, label=f"final {final:.6g}")
        left.legend(loc="lower right")
    left.set(xlabel="EM iteration", ylabel="log posterior", title="Observed-data log posterior")
    steps = np.diff(trace)
    it = np.arange(1, trace.size)
    up = steps > 0
    right.semilogy(it[up], steps[up], marker="o", markersize=3, color="C0", label="increase")
    if (~up).any():
        right.semilogy(
            it[~up],
            np.maximum(np.abs(steps[~up]), np.finfo(float).tiny),
            "x",
            color="C3",
            label="decrease (|Δ|)",
        )
    right.set(xlabel="EM iteration", ylabel="Δ log posterior", title="Increments")
    right.legend(loc="upper right")
    converged = bool(stats["converged"]) if "converged" in stats else None
    fig.suptitle(f"EM: {trace.size - 1} iterations, converged: {converged}")
    return fig


def plot_em_posterior(
    em_idata: xr.DataTree,
    posterior_idata: xr.DataTree,
    *,
    laplace_idata: xr.DataTree | None = None,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    component_dim: str | None = None,
):
    """Draw the EM estimate, and a Laplace interval, on the posterior density of each parameter.

    EM's components are first aligned with the posterior's (`pm_em.align_components`).
    The posterior's own density, mean and HDI come from `arviz.plot_dist`; the EM estimate
    is a dashed red line (`arviz.add_lines`) and the Laplace HDI an orange band
    (`arviz.add_bands`).

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.
    posterior_idata : xarray.DataTree
        A posterior sample of the same model, e.g. `pm_em.sample_marginal`.
    laplace_idata : xarray.DataTree, optional
        `pm_em.laplace` of ``em_idata``; its ``hdi_prob`` HDI is drawn as a band.
    var_names : sequence of str, optional
        Default: every variable in both posteriors.
    hdi_prob : float, default 0.94
    component_dim : str, optional
        See `pm_em.align_components`.

    Returns
    -------
    arviz_plots.PlotCollection
    """
    import matplotlib.pyplot as plt

    point = _em_point(em_idata)
    post = posterior_idata["posterior"].dataset
    names = list(var_names) if var_names is not None else [v for v in point.data_vars if v in post]
    alignment = align_components(
        em_idata, posterior_idata, component_dim=component_dim, var_names=names
    )

    def aligned(ds: xr.Dataset) -> xr.Dataset:
        for dim, perm in alignment.items():
            if dim in ds.dims:
                ds = ds.isel({dim: perm}).assign_coords({dim: ds[dim].values})
        return ds

    n_panels = sum(int(np.prod([post.sizes[d] for d in post[v].dims[2:]])) for v in names)
    n_cols = min(4, n_panels)
    n_rows = -(-n_panels // n_cols)
    pc = az.plot_dist(
        posterior_idata,
        var_names=names,
        backend="matplotlib",
        ci_kind="hdi",
        ci_prob=hdi_prob,
        figure_kwargs={"layout": "constrained", "figsize": (3.2 * n_cols, 2.4 * n_rows + 0.6)},
    )
    if laplace_idata is not None:
        lap = aligned(laplace_idata["posterior"].dataset[names])
        band = az.hdi(lap, prob=hdi_prob).rename(ci_bound="band_dim").expand_dims("ref_dim")
        az.add_bands(pc, values=band, visuals={"ref_band": {"color": "C1", "alpha": 0.25}})
    az.add_lines(
        pc, values=aligned(point[names]), visuals={"ref_line": {"color": "C3", "linestyle": "--"}}
    )
    fig = pc.viz["figure"].item()
    handles = [
        plt.Line2D([], [], color="C0", label="posterior (NUTS)"),
        plt.Line2D([], [], color="C3", linestyle="--", label="EM estimate"),
    ]
    if laplace_idata is not None:
        handles.append(
            plt.Rectangle((0, 0), 1, 1, color="C1", alpha=0.25, label=f"Laplace {hdi_prob:.0%} HDI")
        )
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return pc
