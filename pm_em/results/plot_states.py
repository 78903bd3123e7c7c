"""`plot_states`: a hidden Markov model's series with its smoothed states and Viterbi path."""

import numpy as np
import xarray as xr
from matplotlib.colors import to_rgba_array
from matplotlib.figure import Figure

__all__ = ["plot_states"]


def _chain_latent(lat: xr.Dataset, latent: str | None) -> str:
    chains = [str(v) for v in lat.data_vars if f"{v}_viterbi" in lat.data_vars]
    if latent is None:
        if len(chains) != 1:
            raise ValueError(
                f"`em_idata` has {len(chains)} Markov chain latents ({chains}); pick one with "
                "`latent=`."
                if chains
                else "`em_idata` has no Markov chain latent to plot "
                "(its latent_posterior has no '<z>_viterbi'); fit a model with a "
                "`pm_em.MarkovChain`."
            )
        return chains[0]
    if latent not in chains:
        raise ValueError(
            f"'{latent}' is not a Markov chain latent of `em_idata`; its chains are {chains}."
        )
    return latent


def _series(em_idata: xr.DataTree, observed: str | None, time_dims: tuple) -> xr.DataArray:
    if "observed_data" not in em_idata.children:
        raise ValueError("`em_idata` has no `observed_data` group; pass a `pm_em.fit` result.")
    data = em_idata["observed_data"].dataset
    if observed is None:
        names = [str(v) for v in data.data_vars if data[v].dims[: len(time_dims)] == time_dims]
        if len(names) != 1:
            raise ValueError(
                f"{len(names)} observed variables have the chain's dims {time_dims} "
                f"({names}); pick one with `observed=`."
            )
        observed = names[0]
    if observed not in data:
        raise ValueError(f"'{observed}' is not in `em_idata.observed_data`: {list(data)}.")
    values = data[observed]
    if values.dims[: len(time_dims)] != time_dims or values.ndim > len(time_dims) + 1:
        raise ValueError(
            f"Observed variable '{observed}' has dims {values.dims}; `plot_states` draws a "
            f"series with the chain's dims {time_dims} (and at most one more)."
        )
    return values


def plot_states(
    em_idata: xr.DataTree,
    *,
    latent: str | None = None,
    observed: str | None = None,
    sequence: int = 0,
) -> Figure:
    """Plot a series coloured by its smoothed state probabilities, with the Viterbi path.

    Top: the observed series, each point coloured by the mixture of the state colours with
    weights p(z_t = k | y). Bottom: those probabilities stacked over time, and the most
    probable path (Viterbi) as a step line.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit` on a model with a `pm_em.MarkovChain`.
    latent : str, optional
        The chain to draw; needed only when the model has several.
    observed : str, optional
        The observed variable to draw; default: the one with the chain's dims.
    sequence : int, default 0
        Which sequence of a batch (flat index over the chain's leading dims).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np, pymc as pm, pm_em
    >>> rng = np.random.default_rng(0)
    >>> y = np.r_[rng.normal(-1, 0.5, 40), rng.normal(2, 0.5, 40), rng.normal(-1, 0.5, 40)]
    >>> with pm.Model(coords={"time": range(len(y))}) as model:
    ...     P = pm.Dirichlet("P", a=np.ones((2, 2)))
    ...     mu = pm.Normal("mu", 0, 5, shape=2)
    ...     z = pm_em.MarkovChain("z", P=P, init_dist="stationary", dims="time")
    ...     obs = pm.Normal("y", mu=mu[z], sigma=0.5, observed=y, dims="time")
    ...     idata = pm_em.fit(random_seed=1, progressbar=False)
    >>> fig = pm_em.plot_states(idata)
    >>> len(fig.axes)
    3
    """
    import matplotlib.pyplot as plt

    if "latent_posterior" not in em_idata.children:
        raise ValueError("`em_idata` has no `latent_posterior` group; pass a `pm_em.fit` result.")
    lat = em_idata["latent_posterior"].dataset
    name = _chain_latent(lat, latent)
    resp, path = lat[name], lat[f"{name}_viterbi"]
    time_dims = tuple(path.dims)
    values = _series(em_idata, observed, time_dims)
    n_lead = int(np.prod(path.shape[:-1]))
    if not 0 <= sequence < n_lead:
        raise ValueError(f"`sequence` must lie in [0, {n_lead}); got {sequence}.")
    n_steps, n_states = path.shape[-1], resp.shape[-1]
    gamma = resp.values.reshape(n_lead, n_steps, n_states)[sequence]
    best = path.values.reshape(n_lead, n_steps)[sequence]
    y = values.values.reshape(n_lead, n_steps, -1)[sequence]
    time_dim = time_dims[-1]
    t = np.asarray(resp[time_dim].values) if time_dim in resp.coords else np.arange(n_steps)
    if not np.issubdtype(np.asarray(t).dtype, np.number):
        t = np.arange(n_steps)
    colours = to_rgba_array([f"C{k}" for k in range(n_states)])
    mixed = np.clip(gamma @ colours, 0.0, 1.0)
    labels = [str(k) for k in resp[resp.dims[-1]].values]

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 5), sharex=True, layout="constrained", height_ratios=(3, 2)
    )
    for j in range(y.shape[1]):
        top.plot(t, y[:, j], color="0.7", linewidth=0.8, zorder=1)
        top.scatter(t, y[:, j], c=mixed, s=12, zorder=2)
    top.set(ylabel=values.name, title=f"'{values.name}' coloured by p({name}_t = k | data)")
    bottom.stackplot(t, gamma.T, colors=colours, alpha=0.6, labels=[f"{name}={k}" for k in labels])
    bottom.set(ylim=(0, 1), xlabel=time_dim, ylabel="smoothed probability")
    states = bottom.twinx()
    states.step(t, best, where="mid", color="k", linewidth=1.2, label="Viterbi path")
    states.set(ylabel="Viterbi state", yticks=range(n_states), yticklabels=labels)
    states.set_ylim(-0.5, n_states - 0.5)
    handles = bottom.get_legend_handles_labels()[0] + states.get_legend_handles_labels()[0]
    bottom.legend(handles=handles, loc="upper left", ncols=n_states + 1, fontsize="small")
    return fig
