"""Where the chunks of a fit are computed: here (`InProcessExecutor`) or on a Dask cluster.

An executor runs a kernel on every chunk (`pm_em.engine.chunked.run_chunk`) and returns the
reduced results in chunk order; the client adds them up (`tree_sum`) and takes the M-step.
Both executors run the same task on the same blocks, so they give the same bits. The Dask one
lives in `pm_em.distributed.executor` (it needs the ``dask`` extra).

`check_rows` reads every chunk once before the first E-step: data must be finite, NaN is
allowed only where the model integrates missing values out, and the count of missing entries
per chunk sizes the imputation results.
"""

from collections.abc import Iterator, Mapping

import numpy as np

from pm_em.data import ChunkLayout, RowSource
from pm_em.engine.chunked import ChunkInfo, ChunkKernel, run_chunk
from pm_em.exceptions import ChunkError

__all__ = ["InProcessExecutor", "check_rows", "scan_block"]


def scan_block(blocks: Mapping[str, np.ndarray], chunk: ChunkInfo) -> dict[str, tuple[int, int]]:
    """Count NaN and infinite entries of each source's rows in one chunk.

    Returns ``{source: (n_nan, n_inf)}``; raises `ChunkError` naming the chunk when a block
    cannot be read or has the wrong number of rows.
    """
    counts = {}
    for name, block in blocks.items():
        block = np.asarray(block)
        if block.shape[0] != chunk.stop - chunk.start:
            raise ChunkError(
                f"pm_em: chunk {chunk.index} of '{name}' has {block.shape[0]} rows, expected "
                f"{chunk.stop - chunk.start} (rows {chunk.start}-{chunk.stop}).",
                chunk.index,
                (chunk.start, chunk.stop),
            )
        if np.issubdtype(block.dtype, np.floating):
            counts[name] = (int(np.isnan(block).sum()), int(np.isinf(block).sum()))
        else:
            counts[name] = (0, 0)
    return counts


class InProcessExecutor:
    """Computes every chunk in this process, reading each source a chunk at a time.

    Parameters
    ----------
    sources : dict of {str: RowSource}
    layout : ChunkLayout
    """

    distributed = False

    def __init__(self, sources: Mapping[str, RowSource], layout: ChunkLayout):
        self.sources = dict(sources)
        self.layout = layout

    def chunks(self) -> Iterator[tuple[ChunkInfo, dict[str, np.ndarray]]]:
        """Yield every chunk with its blocks of rows, in order (one chunk in memory at a time)."""
        n = self.layout.n_rows
        for i, (a, b) in enumerate(self.layout.bounds):
            info = ChunkInfo(i, a, b, n)
            try:
                blocks = {name: src.read(a, b) for name, src in self.sources.items()}
            except Exception as err:
                raise ChunkError(
                    f"pm_em: reading chunk {i} (rows {a}-{b}) failed: {type(err).__name__}: {err}",
                    i,
                    (a, b),
                ) from err
            yield info, blocks

    def map(self, kernel: ChunkKernel, theta, reduce: str | None = None) -> list:
        """Run ``kernel`` on every chunk; the reduced results in chunk order."""
        return [run_chunk(kernel, theta, blocks, info, reduce) for info, blocks in self.chunks()]

    def scan(self) -> list[dict[str, tuple[int, int]]]:
        """`scan_block` of every chunk, in order."""
        return [scan_block(blocks, info) for info, blocks in self.chunks()]

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return the given rows of every source (a sample for starting points)."""
        return {name: np.asarray(src.take(rows)) for name, src in self.sources.items()}

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_rows(executor, imputed: frozenset[str]) -> list[dict[str, int]]:
    """Refuse data that are not finite or have NaN where nothing is integrated out.

    Parameters
    ----------
    executor : InProcessExecutor or DaskExecutor
    imputed : frozenset of str
        Sources whose NaN entries are missing values the model integrates out.

    Returns
    -------
    list of dict of {str: int}
        Per chunk, the number of missing entries of each source in ``imputed``.

    Raises
    ------
    ValueError
        Naming the source and the rows.
    """
    missing = []
    for (a, b), counts in zip(executor.layout.bounds, executor.scan(), strict=True):
        for name, (n_nan, n_inf) in counts.items():
            if n_inf:
                raise ValueError(
                    f"The rows {a}-{b} of '{name}' contain {n_inf} infinite value(s). Remove or "
                    "correct those entries; EM needs finite data."
                )
            if n_nan and name not in imputed:
                raise ValueError(
                    f"The rows {a}-{b} of '{name}' contain {n_nan} NaN value(s), but the model "
                    f"declares '{name}' without missing values, so nothing integrates them out. "
                    "Drop those rows, or declare the model with data that have missing entries "
                    "(an MvNormal's NaN entries are then integrated out in every chunk)."
                )
        missing.append({name: counts[name][0] for name in imputed if name in counts})
    return missing
