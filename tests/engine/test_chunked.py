"""Chunked EM in one process: the same estimate as in memory, by chunks of rows.

The invariant (DESIGN.md): chunked and in-memory runs give the same estimate to round-off.
EM's iterations are the same map evaluated with sums in another order, so they agree to
~1e-15; the final polish (L-BFGS) stops when the objective changes by round-off, which
leaves ~1e-8 between runs that differ in rounding unless EM has already converged, so the
fits here converge EM tightly (`TIGHT`) and compare at 1e-10.
"""

import numpy as np
import pytest

import pm_em
from pm_em.engine.chunked import tree_sum
from pm_em.exceptions import ChunkError
from tests.chunked_models import MODELS, TIGHT, max_abs_diff, normal_rows, sliced_mixture

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

GROUPS = ("posterior", "latent_posterior", "log_likelihood")


@pytest.fixture(scope="module", params=sorted(MODELS))
def fits(request):
    """In-memory and chunked (uneven chunks of 70 rows) fits of each model."""
    model, _ = MODELS[request.param]()
    in_memory = pm_em.fit(model, **TIGHT)
    chunked = pm_em.fit(model, chunk_size=70, **TIGHT)
    return request.param, in_memory, chunked


def test_chunked_equals_in_memory(fits):
    name, in_memory, chunked = fits
    for group in GROUPS:
        assert max_abs_diff(in_memory, chunked, group) < 1e-10, (name, group)
    for stat in ("n_iter", "converged"):
        assert in_memory.em_stats[stat].item() == chunked.em_stats[stat].item()
    np.testing.assert_allclose(
        chunked.em_stats["final_log_posterior"],
        in_memory.em_stats["final_log_posterior"],
        rtol=1e-13,
    )
    np.testing.assert_allclose(
        chunked.em_stats["z_count"], in_memory.em_stats["z_count"], atol=1e-9
    )
    # The EM path itself: the log posterior at every iteration.
    np.testing.assert_allclose(
        chunked.em_stats["log_posterior"], in_memory.em_stats["log_posterior"], rtol=1e-13
    )


def test_squarem_by_chunks():
    model, _ = MODELS["normal"]()
    in_memory = pm_em.fit(model, accelerate=True, **TIGHT)
    chunked = pm_em.fit(model, accelerate=True, chunk_size=90, **TIGHT)
    assert max_abs_diff(in_memory, chunked) < 1e-10
    assert in_memory.em_stats["n_iter"].item() == chunked.em_stats["n_iter"].item()


def test_in_memory_rows_give_numpy_results(fits):
    _, _, chunked = fits
    for group in GROUPS:
        for var in chunked[group].dataset.data_vars.values():
            assert isinstance(var.data, np.ndarray)
    assert chunked.attrs.get("n_chunks", chunked.posterior.attrs["n_chunks"]) >= 3


@pytest.fixture(scope="module")
def rows():
    return normal_rows(5000, seed=77)


@pytest.fixture(scope="module")
def numpy_fit(rows):
    """The reference: rows given as a numpy array, chunks of 1200 (the last one 200)."""
    return pm_em.fit(sliced_mixture(), data={"y_data": rows}, chunk_size=1200, **TIGHT)


def test_rows_in_data_match_a_model_of_all_rows(rows, numpy_fit):
    # The model is declared on 400 rows; `data=` fits it to 5000. The same model written
    # on all 5000 rows, in memory, gives the same estimate.
    import pymc as pm

    with pm.Model() as full:
        w = pm.Dirichlet("w", np.ones(2))
        mu = pm.Normal("mu", 0.0, 10.0, shape=2)
        sigma = pm.HalfNormal("sigma", 5.0, shape=2)
        z = pm.Categorical("z", p=w, shape=len(rows))
        pm.Normal("y", mu[z], sigma[z], observed=rows)
    in_memory = pm_em.fit(full, **TIGHT)
    for group in GROUPS:
        assert max_abs_diff(in_memory, numpy_fit, group) < 1e-10, group
    assert numpy_fit.latent_posterior["z"].shape == (5000, 2)
    assert numpy_fit.observed_data["y"].shape == (5000,)


class _Recorder:
    """An array-like that records how many rows each read asks for."""

    def __init__(self, values):
        self.values, self.reads = values, []
        self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim

    def __getitem__(self, key):
        out = self.values[key]
        self.reads.append(len(out))
        return out


def test_dask_rows_are_read_one_chunk_at_a_time(rows, numpy_fit):
    recorder = _Recorder(rows)
    lazy_rows = da.from_array(recorder, chunks=1200, asarray=False)
    fit = pm_em.fit(sliced_mixture(), data={"y_data": lazy_rows}, **TIGHT)
    assert recorder.reads and max(recorder.reads) <= 1200  # never the whole array
    # The same chunks as the numpy fit: the same bits.
    assert max_abs_diff(fit, numpy_fit) == 0.0
    resp = fit.latent_posterior["z"]
    assert isinstance(resp.data, da.Array)  # lazy: computed when asked for
    np.testing.assert_array_equal(resp.values, numpy_fit.latent_posterior["z"].values)


def test_zarr_and_memmap_rows(rows, numpy_fit, tmp_path):
    z = zarr.create_array(
        store=str(tmp_path / "rows.zarr"), shape=rows.shape, chunks=(1200,), dtype="f8"
    )
    z[:] = rows
    from_zarr = pm_em.fit(
        sliced_mixture(),
        data={"y_data": zarr.open_array(str(tmp_path / "rows.zarr"), mode="r")},
        **TIGHT,
    )
    assert max_abs_diff(from_zarr, numpy_fit) == 0.0
    mm = np.memmap(tmp_path / "rows.f8", dtype="f8", mode="w+", shape=rows.shape)
    mm[:] = rows
    mm.flush()
    mapped = np.memmap(tmp_path / "rows.f8", dtype="f8", mode="r", shape=rows.shape)
    from_memmap = pm_em.fit(sliced_mixture(), data={"y": mapped}, chunk_size=1200, **TIGHT)
    assert max_abs_diff(from_memmap, numpy_fit) == 0.0
    np.testing.assert_array_equal(
        from_memmap.log_likelihood["y"].values, numpy_fit.log_likelihood["y"].values
    )


def test_store_holds_the_per_element_groups(rows, numpy_fit, tmp_path):
    path = str(tmp_path / "results.zarr")
    fit = pm_em.fit(sliced_mixture(), data={"y_data": rows}, chunk_size=1200, store=path, **TIGHT)
    resp = fit.latent_posterior["z"]
    assert isinstance(resp.data, da.Array)
    stored = zarr.open_array(path, path="resp/z", mode="r")
    assert stored.shape == (5000, 2)
    np.testing.assert_array_equal(resp.values, numpy_fit.latent_posterior["z"].values)
    np.testing.assert_array_equal(stored[:], numpy_fit.latent_posterior["z"].values)


def test_a_failing_chunk_names_its_rows(rows):
    def block(i):
        if i == 2:
            raise OSError("disk read error")
        return rows[i * 1000 : (i + 1) * 1000]

    import dask

    parts = [da.from_delayed(dask.delayed(block)(i), shape=(1000,), dtype="f8") for i in range(5)]
    with pytest.raises(
        ChunkError,
        match=r"reading chunk 2 \(rows 2000-3000\) failed: OSError: "
        r"disk read error",
    ) as info:
        pm_em.fit(sliced_mixture(), data={"y_data": da.concatenate(parts)}, progressbar=False)
    assert info.value.chunk == 2 and info.value.rows == (2000, 3000)


def test_tree_sum_is_a_fixed_pairwise_order():
    parts = [np.float64(v) for v in (1e16, 1.0, -1e16, 1.0, 3.0)]
    # ((p0 + p1) + (p2 + p3)) + p4, level by level, whatever produced the parts.
    expected = ((parts[0] + parts[1]) + (parts[2] + parts[3])) + parts[4]
    assert tree_sum(parts) == expected
    pairs = tree_sum([(np.ones(2), 1.0), (np.ones(2), 2.0), (np.ones(2), 3.0)])
    np.testing.assert_array_equal(pairs[0], [3.0, 3.0])
    assert pairs[1] == 6.0
