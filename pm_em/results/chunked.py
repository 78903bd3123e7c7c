"""The DataTree of a chunked fit, whose per-element groups may not fit on the client.

The groups are those of `pm_em.results.datatree.build_datatree`. The per-element ones
(``latent_posterior``, ``log_likelihood``, the completed data in ``posterior``) are built by
the ``"pointwise"`` kernel at the estimate, chunk by chunk, and come back

- as numpy arrays, filled one chunk at a time, when the data were numpy arrays computed in
  this process (they were in memory anyway);
- as dask arrays otherwise (dask, zarr or memmap data, or a cluster): nothing is computed
  until asked for, and each block is recomputed from the data where it is needed;
- as dask arrays reading a zarr store, when ``store=`` names one: the blocks are computed
  once (on the cluster, if there is one) and written there.
"""

import operator
import threading
from collections.abc import Mapping

import numpy as np
import xarray as xr
from arviz_base import dict_to_dataset
from pymc.backends.arviz import coords_and_dims_for_inferencedata, find_constants, find_observations
from threadpoolctl import threadpool_limits

from pm_em.data import ChunkLayout, RowSource
from pm_em.engine.chunked import ChunkInfo, ChunkKernel, run_chunk, tree_sum
from pm_em.engine.chunked_model import ChunkedModel
from pm_em.optional import require
from pm_em.results.datatree import _em_stats, _library_attrs, support_coords

__all__ = ["build_chunked_datatree", "per_element_results"]

# Loaded kernels by token, in every process that computes lazy results: one unpickling per
# process, and one call at a time (a compiled function is not thread-safe).
_LOADED: dict[str, tuple[ChunkKernel, threading.Lock]] = {}


def _load(token: str, blob: bytes) -> tuple[ChunkKernel, threading.Lock]:
    if token not in _LOADED:
        import pickle

        import pymc  # noqa: F401  (pytensor's C-module cache key includes pymc's flags)

        _LOADED.setdefault(token, (pickle.loads(blob), threading.Lock()))
    return _LOADED[token]


class _KernelRef:
    """A kernel as it travels in a dask graph: its token and its cloudpickled bytes."""

    def __init__(self, token: str, blob: bytes):
        self.token, self.blob = token, blob

    @classmethod
    def of(cls, kernel: ChunkKernel) -> "_KernelRef":
        cloudpickle = require("cloudpickle", "Lazy results of a chunked fit")
        _LOADED.setdefault(kernel.token, (kernel, threading.Lock()))  # this process has it
        return cls(kernel.token, cloudpickle.dumps(kernel))


def _pointwise_block(ref, x, blocks: dict, chunk: ChunkInfo) -> dict:
    kernel, lock = _load(ref.token, ref.blob)
    # One BLAS thread, as in the fit: the same bits wherever the block is computed.
    with lock, threadpool_limits(1, user_api="blas"):
        return run_chunk(kernel, [x], blocks, chunk)


def _shapes(cm: ChunkedModel, kernel: ChunkKernel, x) -> dict[str, tuple]:
    """Trailing shape and dtype of every pointwise output, from the template's first rows."""
    rows = {name: value[:3] for name, value in cm.graphs.binding.template.items()}
    out = run_chunk(kernel, [x], rows, ChunkInfo(0, 0, 3, 3))
    return {k: (np.shape(v)[1:], np.asarray(v).dtype) for k, v in out.items()}


def _in_memory(kernel, executor, x) -> dict[str, np.ndarray]:
    pieces: dict[str, list] = {}
    for info, blocks in executor.chunks():
        for key, value in run_chunk(kernel, [x], blocks, info).items():
            if not key.startswith("log_resp/"):
                pieces.setdefault(key, []).append(value)
    return {k: np.concatenate(v, axis=0) for k, v in pieces.items()}


def _lazy(cm, kernel, sources, layout, x, missing_counts) -> dict:
    dask = require("dask", "Lazy results of a chunked fit")
    da = require("dask.array", "Lazy results of a chunked fit")
    ref = _KernelRef.of(kernel)
    shapes = _shapes(cm, kernel, x)
    blocks = {name: src.to_dask(layout).to_delayed().reshape(-1) for name, src in sources.items()}
    pieces: dict[str, list] = {}
    for i, (a, b) in enumerate(layout.bounds):
        info = ChunkInfo(i, a, b, layout.n_rows)
        part = dask.delayed(_pointwise_block, pure=True)(
            ref, x, {name: bl[i] for name, bl in blocks.items()}, info
        )
        for key, (trailing, dtype) in shapes.items():
            if key.startswith("log_resp/"):
                continue
            if key.startswith(("missing_mean/", "missing_sd/")):
                shape = (missing_counts[i][key.split("/", 1)[1]],)
            else:
                shape = (b - a, *trailing)
            item = dask.delayed(operator.getitem, pure=True)(part, key)
            pieces.setdefault(key, []).append(da.from_delayed(item, shape=shape, dtype=dtype))
    return {k: da.concatenate(v, axis=0) for k, v in pieces.items()}


def _to_store(arrays: dict, store) -> dict:
    """Write the lazy arrays to the zarr ``store`` in one pass; return arrays reading it."""
    dask = require("dask", "`store=`")
    da = require("dask.array", "`store=`")
    require("zarr", "`store=`")
    writes = []
    for key, arr in arrays.items():
        size = max(1, max(arr.chunks[0]) if arr.chunks[0] else 1)
        regular = arr.rechunk({0: size})  # zarr chunks are regular; one task writes each
        writes.append(da.to_zarr(regular, store, component=key, overwrite=True, compute=False))
    dask.compute(*writes)
    return {key: da.from_zarr(store, component=key) for key in arrays}


def per_element_results(
    cm: ChunkedModel,
    executor,
    sources: Mapping[str, RowSource],
    x: np.ndarray,
    missing_counts: list,
    *,
    lazy: bool,
    store=None,
) -> tuple[dict, tuple[np.ndarray, ...]]:
    """Compute (or describe lazily) the per-element results at ``x``, and the expected counts.

    Returns
    -------
    arrays : dict of {str: array}
        ``resp/<latent>``, ``log_marginal/<latent>``, ``rest/<term>``, and per variable with
        missing entries ``missing_mean/``, ``missing_sd/``, ``completed/``: numpy or dask.
    counts : tuple of ndarray
        Each latent's expected count per support value.
    """
    kernel = cm.kernel("pointwise")
    x = np.asarray(x, dtype="float64")
    if not lazy and store is None:
        arrays = _in_memory(kernel, executor, x)
    else:
        arrays = _lazy(cm, kernel, sources, executor.layout, x, missing_counts)
        if store is not None:
            arrays = _to_store(arrays, store)
    if cm.problem.latents:
        counts = tree_sum(executor.map(kernel, [x], reduce="counts"))
    else:
        counts = ()
    return arrays, tuple(np.asarray(c) for c in counts)


# ------------------------------------------------------------------------------ the tree
def _dims(model, name: str, ndim: int, default: tuple | None = None) -> tuple[str, ...]:
    dims = default or model.named_vars_to_dims.get(name) or ()
    dims = tuple(dims)[:ndim]
    return dims + tuple(f"{name}_dim_{i}" for i in range(len(dims), ndim))


def _array(values, dims, coords) -> xr.DataArray:
    kept = {d: coords[d] for d, s in zip(dims, values.shape, strict=True) if d in coords}
    kept = {d: c for d, c in kept.items() if len(c) == values.shape[dims.index(d)]}
    return xr.DataArray(values, dims=dims, coords=kept)


def _data_groups(cm, sources, layout, lazy, attrs, coords) -> dict[str, xr.Dataset]:
    model, binding = cm.problem.model, cm.graphs.binding

    def rows(name):
        src = sources[name]
        return src.to_dask(layout) if lazy else src.read(0, src.n_rows)

    observed = {
        name: _array(rows(source), _dims(model, name, len(sources[source].shape)), coords)
        for name, source in binding.observed_sources.items()
    }
    sourced = set(binding.observed_sources) | set(binding.observed_sources.values())
    for name, value in find_observations(model).items():
        base = name.removesuffix("_observed")
        if name not in sourced and base not in sourced:
            observed[name] = _array(np.asarray(value), _dims(model, name, np.ndim(value)), coords)
    constant = {}
    for name, value in find_constants(model).items():
        value = rows(name) if name in sources else np.asarray(value)
        constant[name] = _array(value, _dims(model, name, value.ndim), coords)
    groups = {"observed_data": xr.Dataset(observed, attrs=attrs)} if observed else {}
    groups["constant_data"] = xr.Dataset(constant, attrs=attrs)
    return groups


def build_chunked_datatree(
    cm: ChunkedModel,
    sources: Mapping[str, RowSource],
    layout: ChunkLayout,
    best,
    runs,
    *,
    best_index: int,
    optima=(),
    arrays: dict,
    counts: tuple,
    lazy: bool,
    elapsed: float,
) -> xr.DataTree:
    """Build the result `DataTree` of a chunked `pm_em.fit` (groups as in memory)."""
    problem, binding = cm.problem, cm.graphs.binding
    model = problem.model
    coords, dims = coords_and_dims_for_inferencedata(model)
    attrs = {**_library_attrs(), "fit_time": elapsed, "n_rows": layout.n_rows}
    attrs["n_chunks"] = layout.n_chunks
    values = {
        k: v
        for k, v in cm.reference.point_values(best.x).items()
        if k not in problem.deterministics or not binding.depends_on_rows(problem.deterministics[k])
    }
    used = {d for k in values for d in dims.get(k, ())}
    posterior = dict_to_dataset(
        {k: v[None, None] for k, v in values.items()},
        attrs=attrs,
        coords={d: c for d, c in coords.items() if d in used},
        dims=dims,
    )
    lat_vars, log_lik = {}, {}
    for lat in problem.latents:
        resp = arrays[f"resp/{lat.name}"]
        lat_vars[lat.name] = _array(
            resp,
            (*lat.dims, lat.support_dim),
            {**coords, lat.support_dim: support_coords(lat, coords)},
        )
        name = "+".join(lat.observed) or lat.name
        lm = arrays[f"log_marginal/{lat.name}"][None, None]
        log_lik[name] = _array(lm, ("chain", "draw", *lat.dims), coords)
    for name in cm.graphs.row_lik:
        ll = arrays[f"rest/{name}"][None, None]
        log_lik[name] = _array(
            ll,
            ("chain", "draw", *_dims(model, name, ll.ndim - 2, problem.log_lik_dims.get(name))),
            coords,
        )
    for spec in problem.missing:
        for key, var in (
            ("missing_mean", spec.unobserved),
            ("missing_sd", f"{spec.unobserved}_sd"),
        ):
            lat_vars[var] = _array(arrays[f"{key}/{spec.name}"], tuple(spec.dims)[:1], coords)
        done = arrays[f"completed/{spec.name}"][None, None]
        posterior[spec.name] = _array(
            done, ("chain", "draw", *_dims(model, spec.name, done.ndim - 2)), coords
        )
    groups = {
        "posterior": posterior,
        "latent_posterior": xr.Dataset(lat_vars, attrs=attrs),
        "em_stats": _em_stats(
            problem, best, runs, best_index, attrs, coords, counts=counts, optima=optima
        ),
        "log_likelihood": xr.Dataset(log_lik, attrs=attrs),
        **_data_groups(cm, sources, layout, lazy, attrs, coords),
    }
    return xr.DataTree.from_dict(groups)
