"""Rows of data for a chunked fit: the values given in `pm_em.fit`'s ``data=``, read by blocks.

A `RowSource` is one array whose leading axis is the rows (the latent elements). It is read a
block of rows at a time (`RowSource.read`), turned into a dask array chunked like the fit
(`RowSource.to_dask`), or sampled at a few rows (`RowSource.take`), and it is never read whole
unless it is a numpy array already in memory:

- `NumpySource`: a numpy array (blocks are views, no copy);
- `MemmapSource`: an ``np.memmap``, carried as its file name, dtype, offset and shape and
  opened where the rows are read (on a Dask worker, for a cluster), so its pages never pass
  through the calling process;
- `DaskSource`: a dask array, or a zarr array (read through ``dask.array.from_zarr``), or any
  other array-like with ``shape``, ``dtype`` and slicing; read with dask's synchronous
  scheduler in this process, or by the workers of a cluster.

`ChunkLayout` fixes the chunk boundaries, which every source of a fit shares: the result of a
fit is repeatable bit for bit for a given layout (`pm_em.engine.chunked`).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pm_em.optional import require

__all__ = [
    "ChunkLayout",
    "DaskSource",
    "MemmapSource",
    "NumpySource",
    "RowSource",
    "as_source",
    "make_layout",
]

# Rows per chunk when the user gives no ``chunk_size`` and the data have no chunks of their
# own: this many bytes of data per chunk (the E-step's temporaries are a few times more).
DEFAULT_CHUNK_BYTES = 32 * 2**20


class RowSource:
    """One array of rows. Subclasses implement `read`, `take` and `to_dask`.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy dtype
    lazy : bool
        Whether the data live outside this process's memory (memmap, dask, zarr): then the
        per-element results of a fit come back lazily too.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    lazy: bool = False

    @property
    def n_rows(self) -> int:
        """Length of the leading axis."""
        return int(self.shape[0])

    @property
    def row_bytes(self) -> int:
        """Bytes of one row."""
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as an ndarray."""
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Return the given rows (sorted indices) as an ndarray."""
        raise NotImplementedError

    def to_dask(self, layout: "ChunkLayout"):
        """Return a dask array of the rows, chunked along the rows as ``layout``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class NumpySource(RowSource):
    """A numpy array in memory."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def read(self, start, stop):
        """Rows ``[start, stop)``: a view."""
        return self.array[start:stop]

    def take(self, rows):
        """Return the given rows."""
        return self.array[rows]

    def to_dask(self, layout):
        """Return the array in a dask graph (recomputable after a worker is lost)."""
        da = require("dask.array", "A fit on a Dask cluster")
        return da.from_array(self.array, chunks=(layout.sizes, *self.shape[1:]))


def _read_memmap(desc: tuple, start: int, stop: int) -> np.ndarray:
    filename, dtype, offset, shape, order = desc
    mm = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    return np.array(mm[start:stop])  # own memory: the file is closed when mm goes


def _take_memmap(desc: tuple, rows: np.ndarray) -> np.ndarray:
    filename, dtype, offset, shape, order = desc
    mm = np.memmap(filename, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    return np.array(mm[rows])


class MemmapSource(RowSource):
    """An ``np.memmap``, opened where its rows are read (pickling it would read every page)."""

    lazy = True

    def __init__(self, name: str, mm: np.memmap):
        if isinstance(mm.base, np.memmap) or mm.filename is None:
            raise ValueError(
                f"data['{name}'] is a view (a slice) of an np.memmap or has no file: pass the "
                "np.memmap opened on the whole array, or np.asarray(...) of the slice."
            )
        order = "F" if mm.flags.f_contiguous and not mm.flags.c_contiguous else "C"
        self.desc = (str(mm.filename), mm.dtype.str, int(mm.offset), tuple(mm.shape), order)
        self.shape = tuple(mm.shape)
        self.dtype = mm.dtype

    def read(self, start, stop):
        """Rows ``[start, stop)``, read from the file."""
        return _read_memmap(self.desc, start, stop)

    def take(self, rows):
        """Return the given rows, read from the file."""
        return _take_memmap(self.desc, rows)

    def to_dask(self, layout):
        """One loading task per chunk: each worker opens the file and reads its rows."""
        da = require("dask.array", "A fit on a Dask cluster")
        dask = require("dask", "A fit on a Dask cluster")
        load = dask.delayed(_read_memmap, pure=True)
        blocks = [
            da.from_delayed(load(self.desc, a, b), shape=(b - a, *self.shape[1:]), dtype=self.dtype)
            for a, b in layout.bounds
        ]
        return da.concatenate(blocks, axis=0)


class DaskSource(RowSource):
    """A dask array (zarr arrays and other array-likes are wrapped into one)."""

    lazy = True

    def __init__(self, array, own_chunks: bool = True):
        self.array = array
        # Whether the array's chunks along the rows are meaningful (a dask or zarr array's)
        # rather than a wrapper's single block, so that a fit may adopt them.
        self.own_chunks = own_chunks
        self.shape = tuple(int(s) for s in array.shape)
        self.dtype = np.dtype(array.dtype)

    def _compute(self, piece) -> np.ndarray:
        dask = require("dask", "Dask arrays in `data=`")
        # The synchronous scheduler: read here, never through a distributed Client that
        # happens to be the default (it would send every chunk to this process).
        (value,) = dask.compute(piece, scheduler="sync")
        return np.asarray(value)

    def read(self, start, stop):
        """Rows ``[start, stop)``, computed in this process."""
        return self._compute(self.array[start:stop])

    def take(self, rows):
        """Return the given rows, computed in this process."""
        return self._compute(self.array[rows])

    def to_dask(self, layout):
        """Return the array rechunked to the fit's chunks along the rows, whole along the rest."""
        whole = {axis: -1 for axis in range(1, self.array.ndim)}
        return self.array.rechunk({0: layout.sizes, **whole})

    @property
    def chunk_sizes(self) -> tuple[int, ...]:
        """The array's own chunk sizes along the rows."""
        return tuple(int(c) for c in self.array.chunks[0])


def _module_of(value) -> str:
    return type(value).__module__.split(".")[0]


def as_source(name: str, value) -> RowSource:
    """Wrap one value of ``data=`` into a `RowSource`.

    Parameters
    ----------
    name : str
        Its key in ``data=`` (for messages).
    value : array_like
        numpy array, ``np.memmap``, dask array, zarr array, or an array-like.

    Returns
    -------
    RowSource

    Raises
    ------
    ValueError
        For a scalar, an empty array, or a value that is not an array.

    Examples
    --------
    >>> import numpy as np
    >>> as_source("y", np.zeros((5, 2))).shape
    (5, 2)
    """
    if isinstance(value, np.memmap):
        source = MemmapSource(name, value)
    elif isinstance(value, np.ndarray):
        source = NumpySource(value)
    elif _module_of(value) == "dask" and hasattr(value, "chunks"):
        source = DaskSource(value)
    elif _module_of(value) == "zarr":
        da = require("dask.array", "zarr arrays in `data=`")
        source = DaskSource(da.from_zarr(value))
    elif hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__"):
        # Another array-like (an h5py dataset, say): read lazily through dask.
        da = require("dask.array", f"data['{name}'] of type {type(value).__name__}")
        source = DaskSource(da.from_array(value, chunks=(-1,) * len(value.shape)), own_chunks=False)
    else:
        try:
            array = np.asarray(value)
        except Exception as err:
            raise ValueError(
                f"data['{name}'] is a {type(value).__name__}, not an array: pass a numpy, "
                "np.memmap, dask or zarr array."
            ) from err
        source = NumpySource(array)
    if len(source.shape) == 0:
        raise ValueError(f"data['{name}'] is a scalar: pass an array with one row per element.")
    if source.n_rows == 0:
        raise ValueError(f"data['{name}'] has no rows: EM needs at least one observation.")
    if not (np.issubdtype(source.dtype, np.number) or source.dtype == np.bool_):
        raise ValueError(
            f"data['{name}'] has dtype {source.dtype}; pass numbers (float or integer)."
        )
    return source


@dataclass(frozen=True)
class ChunkLayout:
    """Where the chunks of a fit begin and end.

    Attributes
    ----------
    bounds : tuple of (int, int)
        ``[start, stop)`` of each chunk, in row order, covering every row once.
    """

    bounds: tuple[tuple[int, int], ...]

    @property
    def n_rows(self) -> int:
        """Total number of rows."""
        return self.bounds[-1][1]

    @property
    def n_chunks(self) -> int:
        """Number of chunks."""
        return len(self.bounds)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Rows per chunk."""
        return tuple(b - a for a, b in self.bounds)

    @classmethod
    def from_sizes(cls, sizes: Sequence[int]) -> "ChunkLayout":
        """Return the layout with these chunk sizes."""
        stops = np.cumsum(sizes).tolist()
        starts = [0, *stops[:-1]]
        return cls(tuple((int(a), int(b)) for a, b in zip(starts, stops, strict=True)))


def make_layout(
    n_rows: int, chunk_size: int | None, sources: Mapping[str, RowSource]
) -> ChunkLayout:
    """Choose the chunks of a fit over ``n_rows`` rows.

    ``chunk_size`` rows per chunk (the last one shorter) when given; otherwise the chunks of
    the first dask or zarr source, and otherwise chunks of about `DEFAULT_CHUNK_BYTES` bytes
    of data.

    Raises
    ------
    ValueError
        For a ``chunk_size`` that is not a positive integer.
    """
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
            raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
        if chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size}.")
        size = int(chunk_size)
    else:
        own = [s.chunk_sizes for s in sources.values() if getattr(s, "own_chunks", False)]
        if own:
            return ChunkLayout.from_sizes(own[0])
        row_bytes = max(1, sum(s.row_bytes for s in sources.values()))
        size = max(1, DEFAULT_CHUNK_BYTES // row_bytes)
    n_full, rest = divmod(n_rows, size)
    return ChunkLayout.from_sizes([size] * n_full + ([rest] if rest else []))
