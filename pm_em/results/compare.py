"""Compare an EM estimate with a posterior sample, parameter by parameter.

Mixture components are exchangeable: the EM run and the sampler may call the same component
by different labels. `align_components` finds the permutation of EM's component axis that
best matches the posterior (Hungarian matching on standardized differences, TECH-NOTES §6),
and `compare` applies it before building its table.

The table is a `pandas.DataFrame`: one row per scalar parameter with mixed column types
(numbers, a boolean, the matched EM label), which is what a tidy table is, and the same
type ArviZ's own `az.summary` returns, so the two print, join and export alike.
"""

import warnings
from collections.abc import Sequence

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr
from scipy.optimize import linear_sum_assignment

from pm_em.exceptions import LabelSwitchingWarning

__all__ = ["align_components", "compare"]

_SAMPLE_DIMS = ("chain", "draw")


def _posterior(idata: xr.DataTree, what: str) -> xr.Dataset:
    if "posterior" not in idata.children:
        raise ValueError(f"`{what}` has no `posterior` group; pass a DataTree from pm_em or PyMC.")
    return idata["posterior"].dataset


def _em_point(idata: xr.DataTree) -> xr.Dataset:
    post = _posterior(idata, "em_idata")
    sizes = {d: post.sizes.get(d, 1) for d in _SAMPLE_DIMS}
    if any(s != 1 for s in sizes.values()):
        raise ValueError(
            f"`em_idata.posterior` has chain={sizes['chain']}, draw={sizes['draw']}; an EM "
            "estimate has one of each. Pass the result of `pm_em.fit` as `em_idata`."
        )
    return post.squeeze([d for d in _SAMPLE_DIMS if d in post.dims], drop=True)


def _component_dims(em: xr.DataTree, point: xr.Dataset, component_dim) -> list[list[str]]:
    """Find the dims of the posterior that index mixture components, in groups.

    The dims of one group share one permutation: a Markov chain's states index the rows and
    the columns of its transition matrix, its initial probabilities and its emissions.
    """
    if component_dim is not None:
        entries = [component_dim] if isinstance(component_dim, str) else list(component_dim)
        groups = [[e] if isinstance(e, str) else list(e) for e in entries]
        for dim in (d for group in groups for d in group):
            if dim not in point.dims:
                raise ValueError(
                    f"`component_dim='{dim}'` is not a dim of the EM posterior; its dims are "
                    f"{sorted(map(str, point.dims))}."
                )
        return groups
    if "latent_posterior" not in em.children:
        return []
    lat = em["latent_posterior"].dataset
    # Responsibilities (not imputed values, nor a chain's Viterbi path).
    names = [
        v
        for v in lat.data_vars
        if lat[v].ndim
        and not str(v).removesuffix("_sd").endswith("_unobserved")
        and not str(v).endswith("_viterbi")
    ]
    chain_sizes = {lat[v].shape[-1] for v in names if f"{v}_viterbi" in lat.data_vars}
    sizes = {lat[v].shape[-1] for v in names}
    found = {str(d) for d in point.dims if point.sizes[d] in sizes and point.sizes[d] > 1}
    # A mixture's latent takes its weights' component dim as its support dim: that dim of
    # the posterior indexes components by construction.
    support_dims = {
        str(lat[v].dims[-1])
        for v in names
        if lat[v].dims[-1] in point.dims and point.sizes[lat[v].dims[-1]] > 1
    }
    found = sorted(found | support_dims)
    # A Markov chain: every dim of its number of states, aligned together (P's rows and
    # columns, p0, the emissions' state dims).
    groups = [[d for d in found if point.sizes[d] == k] for k in sorted(chain_sizes)]
    groups = [g for g in groups if g]
    rest = [d for d in found if point.sizes[d] not in chain_sizes]
    return groups + [[d] for d in _mixture_dims(point, rest, support_dims)]


def _mixture_dims(point: xr.Dataset, found: list[str], support_dims: set[str]) -> list[str]:
    """Pick the component dims among ``found``, the dims with a mixture latent's length."""
    if len(found) <= 1:
        return found
    if support_dims & set(found):
        return sorted(support_dims & set(found))
    # Several dims have a support's length (a 2-D mixture: components and coordinates):
    # the components are the dims the mixture weights live on, or else the dims so named.
    weights = [d for d in found if _carries_weights(point, d)]
    if weights:
        return weights
    named = [d for d in found if "component" in d.lower()]
    if named:
        return named
    raise ValueError(
        f"Several dims of the EM posterior, {found}, have the length of a latent's support, "
        "and none carries mixture weights (a variable that sums to 1 along it) or is named "
        "like 'component', so the component axis is ambiguous. Pass `component_dim=` (a dim "
        "name, a list of them, a list of lists for dims aligned together, or [] to compare "
        "without aligning)."
    )


def _carries_weights(point: xr.Dataset, dim: str) -> bool:
    """Tell whether some variable of the estimate is a probability vector along ``dim``."""
    for v in point.data_vars:
        da = point[v]
        if dim not in da.dims or not np.issubdtype(da.dtype, np.floating):
            continue
        values = da.values
        if np.all(values >= 0) and np.allclose(da.sum(dim).values, 1.0, rtol=0, atol=1e-6):
            return True
    return False


def _chain_stats(post: xr.Dataset, names: list[str], dim: str, by_chain: bool):
    reduce = ["draw"] if by_chain else list(_SAMPLE_DIMS)
    means = {v: post[v].mean(reduce) for v in names}
    sds = {v: post[v].std(reduce) for v in names}
    return means, sds


def _cost(point: xr.Dataset, means, sds, names: list[str], dim: str) -> np.ndarray:
    """cost[j, k]: squared standardized distance of EM component j to posterior component k."""
    size = point.sizes[dim]
    cost = np.zeros((size, size))
    for v in names:
        em = point[v].transpose(dim, ...).values.reshape(size, -1)  # (K, rest)
        mean = means[v].transpose(dim, ...).values.reshape(size, -1)
        sd = sds[v].transpose(dim, ...).values.reshape(size, -1)
        # A component whose draws do not vary (sd 0) still gets a finite, large cost.
        scale = np.where(sd > 0, sd, np.finfo(float).eps ** 0.5 * (1.0 + np.abs(mean)))
        diff = (em[:, None, :] - mean[None, :, :]) / scale[None, :, :]  # (K_em, K_post, rest)
        cost += np.nansum(diff**2, axis=-1)
    return cost


def _assign(cost: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty_like(cols)
    perm[cols] = rows  # posterior component k is matched with EM component perm[k]
    return perm


def align_components(
    em_idata: xr.DataTree,
    posterior_idata: xr.DataTree,
    *,
    component_dim: str | None = None,
    var_names: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Find the permutation of EM's components that best matches a posterior sample.

    For every variable with the component dim, the cost of pairing EM component ``j`` with
    posterior component ``k`` is the sum of squared standardized differences
    ``((em_j - mean_k) / sd_k) ** 2``; the Hungarian algorithm
    (`scipy.optimize.linear_sum_assignment`) picks the pairing of least total cost.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.
    posterior_idata : xarray.DataTree
        A posterior sample with the same variables (e.g. `pm_em.sample_marginal`).
    component_dim : str or list, optional
        The dim indexing components, or a list of them (each aligned on its own; a nested
        list aligns its dims with one permutation). Default: the dim of the EM posterior
        whose length is the support size of a latent in ``em_idata.latent_posterior``; when
        several dims have that length (a 2-D mixture with two components), the one the
        mixture weights live on (a variable summing to 1 along it), else the one named like
        "component"; for a Markov chain, every dim of its number of states, together (the
        rows and columns of P, p0 and the emissions' state dims).
    var_names : sequence of str, optional
        Variables used for matching; default: every shared variable with the dim.

    Returns
    -------
    dict of str to ndarray of int
        Per component dim, ``perm`` with ``em.isel({dim: perm})`` lined up with the
        posterior: posterior component ``k`` is EM component ``perm[k]``.

    Warns
    -----
    LabelSwitchingWarning
        When chains of the posterior match EM with different permutations (the chains
        label the components differently, so pooled summaries mix components).

    Examples
    --------
    >>> import numpy as np, arviz as az, pm_em
    >>> em = az.from_dict({"posterior": {"mu": np.array([[[3.0, -1.0]]])}},
    ...                   dims={"mu": ["component"]})
    >>> rng = np.random.default_rng(0)
    >>> post = az.from_dict({"posterior": {"mu": rng.normal([-1.0, 3.0], 0.1, (2, 50, 2))}},
    ...                     dims={"mu": ["component"]})
    >>> pm_em.align_components(em, post, component_dim="component")
    {'component': array([1, 0])}
    """
    point = _em_point(em_idata)
    post = _posterior(posterior_idata, "posterior_idata")
    out = {}
    for group in _component_dims(em_idata, point, component_dim):
        names = {
            dim: [
                v
                for v in (var_names or list(point.data_vars))
                if v in point and v in post and dim in point[v].dims and dim in post[v].dims
            ]
            for dim in group
        }
        group = [dim for dim in group if names[dim]]
        if not group:
            continue
        for dim in group:
            if post.sizes[dim] != point.sizes[dim]:
                raise ValueError(
                    f"Dim '{dim}' has {point.sizes[dim]} entries in the EM estimate and "
                    f"{post.sizes[dim]} in the posterior: they come from different models."
                )
        perm = _assign(_group_cost(point, post, names, group, chain=None))
        if "chain" in post.dims and post.sizes["chain"] > 1:
            per_chain = [
                _assign(_group_cost(point, post, names, group, chain=c))
                for c in range(post.sizes["chain"])
            ]
            if any(not np.array_equal(p, per_chain[0]) for p in per_chain):
                label = "', '".join(group)
                warnings.warn(
                    f"The chains of the posterior label the '{label}' components differently "
                    f"(EM components matched per chain: {[p.tolist() for p in per_chain]}), "
                    "so pooled means and intervals mix components. Sample with an ordered "
                    "transform on a component parameter (and initvals), or compare chain by "
                    "chain with `posterior_idata.isel(chain=...)`.",
                    LabelSwitchingWarning,
                    stacklevel=2,
                )
        out.update(dict.fromkeys(group, perm))
    return out


def _diagonal(da: xr.DataArray, dims: list[str]) -> xr.DataArray:
    """Return the diagonal of ``da`` over two dims, named after the first (P[k, k])."""
    a1, a2 = (da.get_axis_num(d) for d in dims)
    rest = [d for d in da.dims if d not in dims]
    return xr.DataArray(np.diagonal(da.values, axis1=a1, axis2=a2), dims=[*rest, dims[0]])


def _group_cost(point, post, names: dict, group: list[str], chain: int | None) -> np.ndarray:
    """Return the matching cost of one group of dims (summed), pooled or for one chain.

    A variable with two dims of the group (a transition matrix, whose rows and columns are
    permuted together) is matched on its diagonal, which one permutation of the states
    permutes like a vector.
    """
    total = 0.0
    point_vars, post_vars, by_dim = dict(point.data_vars), dict(post.data_vars), {}
    for dim in group:
        for v in names[dim]:
            shared = [d for d in point[v].dims if d in group]
            if len(shared) == 1:
                by_dim.setdefault(dim, []).append(v)
            elif len(shared) == 2 and shared[0] == dim:
                name = f"{v}[diagonal]"
                point_vars[name] = _diagonal(point[v], shared)
                post_vars[name] = _diagonal(post[v], shared)
                by_dim.setdefault(dim, []).append(name)
    point, post = xr.Dataset(point_vars), xr.Dataset(post_vars)
    for dim, dim_names in by_dim.items():
        means, sds = _chain_stats(post, dim_names, dim, by_chain=chain is not None)
        if chain is not None:
            means = {v: m.isel(chain=chain) for v, m in means.items()}
            sds = {v: s.isel(chain=chain) for v, s in sds.items()}
        total = total + _cost(point, means, sds, dim_names, dim)
    return total


def _label(var: str, dims: Sequence[str], coords: dict, index: tuple[int, ...]) -> str:
    if not dims:
        return var
    parts = [str(coords[d][i]) if d in coords else str(i) for d, i in zip(dims, index, strict=True)]
    return f"{var}[{', '.join(parts)}]"


def compare(
    em_idata: xr.DataTree,
    posterior_idata: xr.DataTree,
    *,
    var_names: Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    component_dim: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Tabulate the EM estimate against a posterior sample, one row per scalar parameter.

    EM's components are first aligned with the posterior's (`align_components`); the
    column ``em_label`` names the EM element each row's estimate came from, so a row
    ``mu[0]`` with ``em_label`` ``mu[1]`` says that EM's component 1 was matched with the
    posterior's component 0. The permutation is also in ``table.attrs["alignment"]``.

    Parameters
    ----------
    em_idata : xarray.DataTree
        The result of `pm_em.fit`.
    posterior_idata : xarray.DataTree
        A posterior sample of the same model: `pm_em.sample_marginal`, `pm.sample` on
        `pm_em.marginalize`, or `pm_em.laplace`.
    var_names : sequence of str, optional
        Variables to tabulate; default: every variable in both posteriors.
    hdi_prob : float, default 0.94
        Probability mass of the highest-density interval.
    component_dim : str or sequence of str, optional
        The dim(s) indexing mixture components; default: found from ``em_idata`` (see
        `align_components`); ``[]`` compares without aligning.

    Returns
    -------
    pandas.DataFrame
        Indexed by parameter label (``"mu[0]"``), with columns ``em`` (estimate), ``mean``,
        ``sd``, ``hdi_<lo>%``, ``hdi_<hi>%``, ``std_diff`` (``(em - mean) / sd``), ``in_hdi``
        and ``em_label``. ``attrs``: ``alignment`` ({dim: permutation}) and ``hdi_prob``.

    Raises
    ------
    ValueError
        For a name in ``var_names`` missing from either result, or shapes that differ.
    """
    if not 0 < hdi_prob < 1:
        raise ValueError(f"`hdi_prob` must lie in (0, 1), got {hdi_prob!r}.")
    point = _em_point(em_idata)
    post = _posterior(posterior_idata, "posterior_idata")
    if var_names is None:
        names = [v for v in point.data_vars if v in post.data_vars]
    else:
        names = list(var_names)
        for v in names:
            for ds, what in ((point, "em_idata"), (post, "posterior_idata")):
                if v not in ds:
                    raise ValueError(
                        f"Variable '{v}' is not in the posterior of `{what}`; it has "
                        f"{sorted(map(str, ds.data_vars))}."
                    )
    alignment = align_components(
        em_idata, posterior_idata, component_dim=component_dim, var_names=names
    )
    lo, hi = 50 * (1 - hdi_prob), 50 * (1 + hdi_prob)
    lo_col, hi_col = f"hdi_{lo:g}%", f"hdi_{hi:g}%"
    rows, index = [], []
    for v in names:
        sample = post[v].transpose(*_SAMPLE_DIMS, ...)
        dims = [str(d) for d in sample.dims[2:]]
        em = point[v].transpose(*dims)
        if em.shape != sample.shape[2:]:
            raise ValueError(
                f"Variable '{v}' has shape {em.shape} in the EM estimate and {sample.shape[2:]} "
                "in the posterior: they come from different models."
            )
        em_index = np.indices(em.shape)  # (ndim, *shape): which EM element feeds each row
        for axis, dim in enumerate(dims):
            if dim in alignment:
                em_index = np.take(em_index, alignment[dim], axis=axis + 1)
        em_values = em.values[tuple(em_index)] if dims else em.values
        mean = sample.mean(_SAMPLE_DIMS).values
        sd = sample.std(_SAMPLE_DIMS).values
        hdi = az.hdi(sample, prob=hdi_prob).transpose(*dims, "ci_bound").values
        coords = {d: sample[d].values for d in dims if d in sample.coords}
        for idx in np.ndindex(em.shape):
            est = float(em_values[idx])
            lower, upper = (float(b) for b in hdi[idx])
            s = float(sd[idx])
            src = tuple(int(em_index[(a, *idx)]) for a in range(len(dims)))
            index.append(_label(v, dims, coords, idx))
            rows.append(
                {
                    "em": est,
                    "mean": float(mean[idx]),
                    "sd": s,
                    lo_col: lower,
                    hi_col: upper,
                    "std_diff": (est - float(mean[idx])) / s if s > 0 else np.nan,
                    "in_hdi": bool(lower <= est <= upper),
                    "em_label": _label(v, dims, coords, src),
                }
            )
    table = pd.DataFrame(rows, index=pd.Index(index, name="parameter"))
    table.attrs["alignment"] = {dim: perm.tolist() for dim, perm in alignment.items()}
    table.attrs["hdi_prob"] = hdi_prob
    return table
