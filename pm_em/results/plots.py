"""Plots of an EM fit, alone and beside a posterior sample (matplotlib, through ArviZ).

- `plot_convergence`: the observed-data log posterior per EM iteration, and its increments.
- `plot_mixture`: the fitted mixture density over a histogram of 1-D data, or over a scatter
  of 2-D data.
- `plot_em_posterior`: the EM estimate (and a Laplace interval) on the posterior density of
  every parameter, with EM's components aligned with the posterior's first.

The first two return a `matplotlib.figure.Figure`; the third returns ArviZ's
`PlotCollection` (its ``.savefig`` writes it, ``.viz["figure"]`` is the figure).
"""

from collections.abc import Sequence

import arviz as az
import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.tri import Triangulation

from pm_em.results.compare import _em_point, align_components

__all__ = ["plot_convergence", "plot_em_posterior", "plot_mixture"]

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


def plot_mixture(em_idata: xr.DataTree, *, latent: str | None = None, bins: int = 40) -> Figure:
    """Plot the fitted mixture density over the data.

    The density is read from the fit itself: at each observation ``y_i`` the mixture
    density is ``exp(log_likelihood_i)`` (the latent summed out) and component ``k``'s
    weighted density is ``p(z_i = k | y_i) * exp(log_likelihood_i)``. For 1-D data it is
    drawn over a density histogram; for 2-D data as contours over a scatter coloured by
    the most probable component. This is the density of the data only for mixtures whose
    components do not depend on covariates.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.
    latent : str, optional
        Which latent's mixture to draw; needed only when the model has several.
    bins : int, default 40
        Histogram bins (1-D).

    Returns
    -------
    matplotlib.figure.Figure
    """
    name = _pick_latent(em_idata, latent)
    resp = em_idata["latent_posterior"][name]
    support_dim = resp.dims[-1]
    elem_dims = resp.dims[:-1]
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
    obs = candidates[0]
    ll = loglik[obs]
    if ll.sizes.get("chain", 1) * ll.sizes.get("draw", 1) != 1:
        raise ValueError("`plot_mixture` draws an EM estimate (chain=1, draw=1).")
    density = np.exp(ll.squeeze(_SAMPLE, drop=True).values.ravel())  # (n,)
    r = resp.values.reshape(-1, resp.sizes[support_dim])  # (n, K)
    data = observed[obs]
    extra = [d for d in data.dims if d not in elem_dims]
    labels = [str(k) for k in resp[support_dim].values]
    if not extra:
        return _mixture_1d(data.values.ravel(), density, r, labels, obs, name, bins)
    if len(extra) == 1 and data.sizes[extra[0]] == 2:
        points = data.transpose(*elem_dims, extra[0]).values.reshape(-1, 2)
        return _mixture_2d(points, density, r, labels, obs, name)
    raise ValueError(
        f"Observed variable '{obs}' has {1 + len(extra)}-D values per element; `plot_mixture` "
        "draws 1-D and 2-D data."
    )


def _mixture_1d(y, density, r, labels, obs, name, bins) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    ax.hist(y, bins=bins, density=True, color="0.8", edgecolor="white", label="data")
    order = np.argsort(y)
    for k, label in enumerate(labels):
        weighted = (r[:, k] * density)[order]
        ax.plot(y[order], weighted, "--", color=f"C{k + 1}", label=f"{name}={label}")
    ax.plot(y[order], density[order], color="C0", linewidth=2, label="mixture")
    ax.set(xlabel=obs, ylabel="density", title=f"Fitted mixture of '{obs}' (EM estimate)")
    ax.legend()
    return fig


def _mixture_2d(points, density, r, labels, obs, name) -> Figure:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    hard = r.argmax(axis=1)
    for k, label in enumerate(labels):
        mine = hard == k
        ax.scatter(*points[mine].T, s=8, alpha=0.6, color=f"C{k + 1}", label=f"{name}={label}")
    tri = Triangulation(points[:, 0], points[:, 1])
    # Drop the long, thin triangles at the hull, where no data pins the density down.
    corners = points[tri.triangles]  # (n_tri, 3, 2)
    edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max(axis=1)
    tri.set_mask(edges > np.quantile(edges, 0.95))
    levels = np.quantile(density, [0.1, 0.3, 0.5, 0.7, 0.9])
    contour = ax.tricontour(tri, density, levels=np.unique(levels), colors="C0", linewidths=1)
    ax.clabel(contour, fontsize=7, fmt="%.2g")
    ax.set(xlabel=f"{obs}[0]", ylabel=f"{obs}[1]", title=f"Fitted mixture of '{obs}' (EM)")
    ax.legend(loc="best")
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
