"""Row sources of `data=` (pm_em.data): what each kind reads, and the chunk layout."""

import numpy as np
import pytest

from pm_em.data import (
    DEFAULT_CHUNK_BYTES,
    ChunkLayout,
    DaskSource,
    MemmapSource,
    NumpySource,
    as_source,
    make_layout,
)
from pm_em.optional import INSTALL_HINT, require

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")


def test_numpy_blocks_are_views():
    x = np.arange(20.0).reshape(10, 2)
    src = as_source("x", x)
    assert isinstance(src, NumpySource) and not src.lazy
    block = src.read(2, 5)
    assert np.shares_memory(block, x)
    np.testing.assert_array_equal(src.take(np.array([0, 9])), x[[0, 9]])


def test_memmap_is_read_from_its_file(tmp_path):
    path = tmp_path / "x.f8"
    mm = np.memmap(path, dtype="float64", mode="w+", shape=(50, 3))
    mm[:] = np.arange(150.0).reshape(50, 3)
    mm.flush()
    src = as_source("x", np.memmap(path, dtype="float64", mode="r", shape=(50, 3)))
    assert isinstance(src, MemmapSource) and src.lazy
    # The source holds a descriptor, not the mapping: pickling it never reads the pages.
    assert src.desc[0] == str(path)
    np.testing.assert_array_equal(src.read(10, 13), mm[10:13])
    layout = ChunkLayout.from_sizes([20, 20, 10])
    np.testing.assert_array_equal(src.to_dask(layout).compute(scheduler="sync"), mm)


def test_memmap_slice_is_refused(tmp_path):
    mm = np.memmap(tmp_path / "x.f8", dtype="float64", mode="w+", shape=(10,))
    with pytest.raises(ValueError, match=r"data\['x'\] is a view \(a slice\) of an np.memmap"):
        as_source("x", mm[2:])


def test_dask_and_zarr_sources(tmp_path):
    x = np.arange(30.0)
    d = da.from_array(x, chunks=7)
    src = as_source("x", d)
    assert isinstance(src, DaskSource) and src.chunk_sizes == (7, 7, 7, 7, 2)
    np.testing.assert_array_equal(src.read(5, 9), x[5:9])
    z = zarr.create_array(store=str(tmp_path / "x.zarr"), shape=(30,), chunks=(10,), dtype="f8")
    z[:] = x
    zsrc = as_source("x", zarr.open_array(str(tmp_path / "x.zarr"), mode="r"))
    assert isinstance(zsrc, DaskSource) and zsrc.chunk_sizes == (10, 10, 10)
    np.testing.assert_array_equal(zsrc.take(np.array([3, 25])), x[[3, 25]])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.float64(3.0), r"data\['v'\] is a scalar"),
        (np.zeros((0, 2)), r"data\['v'\] has no rows"),
        (np.array(["a", "b"]), r"data\['v'\] has dtype <U1; pass numbers"),
    ],
)
def test_bad_values(value, match):
    with pytest.raises(ValueError, match=match):
        as_source("v", value)


def test_layout_from_chunk_size_dask_chunks_or_bytes():
    sources = {"x": NumpySource(np.zeros((10, 2)))}
    assert make_layout(10, 4, sources).sizes == (4, 4, 2)
    assert make_layout(10, 4, sources).bounds == ((0, 4), (4, 8), (8, 10))
    dask_sources = {"x": as_source("x", da.zeros(10, chunks=3))}
    assert make_layout(10, None, dask_sources).sizes == (3, 3, 3, 1)
    big = DEFAULT_CHUNK_BYTES // 16  # rows of 2 float64 per chunk
    assert make_layout(3 * big, None, sources).sizes == (big, big, big)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="`chunk_size` must be a positive integer"):
            make_layout(10, bad, sources)


def test_missing_optional_package_names_the_extra():
    with pytest.raises(ImportError, match=r"needs the optional package 'no_such_pkg'") as info:
        require("no_such_pkg.sub", "This test")
    assert INSTALL_HINT in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)  # not swallowed: chained
