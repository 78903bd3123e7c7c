"""`DaskExecutor`: the chunks of a fit kept on a cluster's workers, a kernel mapped over them.

Opening the executor persists every source, chunked like the fit, on the workers (once: a
zarr, dask or memmap source is read there, a numpy one sent there inside its dask graph, so
that a lost worker's chunks can be recomputed). Each call of `DaskExecutor.map` then sends
the kernel's plugin once (`pm_em.distributed.worker.KernelPlugin`), the parameters as a small
argument of each task, and gathers the few numbers per chunk the kernel's reducer returns;
the client adds them in a fixed order. Task keys name the kernel, the call and the chunk, so
an error is reported with its chunk: a task that raises, or one whose workers died
repeatedly (``KilledWorker``), ends the fit with a `ChunkError`, never a partial result.
A worker lost in between is replaced by Dask, and its tasks rerun from the data's lineage:
the fit completes with the same bits.
"""

import re
import uuid

import numpy as np

from pm_em.data import ChunkLayout
from pm_em.distributed.cluster import connect
from pm_em.distributed.worker import KernelPlugin, chunk_task, scan_task, take_task
from pm_em.engine.chunked import ChunkInfo, ChunkKernel
from pm_em.exceptions import ChunkError
from pm_em.optional import require

__all__ = ["DaskExecutor"]

_KEY = re.compile(r"pm_em-[a-z_]+-[0-9a-f]+-\d+-(\d+)")


class DaskExecutor:
    """Computes the chunks of a fit on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
    sources : dict of {str: RowSource}
    layout : ChunkLayout
    close : callable, optional
        Called by `close` (closes a cluster the fit started).
    """

    distributed = True

    def __init__(self, client, sources, layout: ChunkLayout, close=None):
        self.client = client
        self.layout = layout
        self.sources = dict(sources)
        self.names = tuple(self.sources)
        self.token = uuid.uuid4().hex[:12]
        self._close = close
        self._plugins: dict[str, str] = {}
        self._calls = 0
        self.chunk_infos = [
            ChunkInfo(i, a, b, layout.n_rows) for i, (a, b) in enumerate(layout.bounds)
        ]
        try:
            self.blocks = self._persist()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, client, sources, layout: ChunkLayout) -> "DaskExecutor":
        """Connect (`pm_em.distributed.cluster.connect`) and persist the data."""
        client, close = connect(client)
        return cls(client, sources, layout, close)

    def _persist(self) -> list[list]:
        """Persist each source on the workers; its chunk futures in row order."""
        dask_core = require("dask.core", "client=")
        futures_of = require("distributed", "client=").futures_of
        arrays = [src.to_dask(self.layout) for src in self.sources.values()]
        persisted = self.client.persist(arrays)
        per_source = []
        for arr in persisted:
            by_key = {f.key: f for f in futures_of(arr)}
            # futures_of does not keep the chunks' order: take it from the array's keys.
            per_source.append([by_key[k] for k in dask_core.flatten(arr.__dask_keys__())])
        self._persisted = persisted  # keeps the data on the workers while the fit runs
        return per_source

    def _plugin(self, kernel: ChunkKernel) -> str:
        name = self._plugins.get(kernel.token)
        if name is None:
            cloudpickle = require("cloudpickle", "client=")
            name = f"pm_em-kernel-{self.token}-{kernel.kind}-{kernel.token[:8]}"
            self.client.register_plugin(KernelPlugin(name, cloudpickle.dumps(kernel)))
            self._plugins[kernel.token] = name
        return name

    def _gather(self, futures, what: str, chunks: list[int] | None = None) -> list:
        distributed = require("distributed", "client=")
        try:
            return self.client.gather(futures)
        except ChunkError:  # raised by the task itself, naming its chunk
            self.client.cancel(futures)
            raise
        except distributed.scheduler.KilledWorker as err:
            happened = "killed every worker that ran it (it ran out of memory, or crashed)"
            raise self._chunk_error(err, futures, chunks, what, happened) from err
        except Exception as err:  # e.g. reading the data failed on a worker
            happened = f"failed: {type(err).__name__}: {err}"
            raise self._chunk_error(err, futures, chunks, what, happened) from err

    def _chunk_error(self, err, futures, chunks, what: str, happened: str) -> ChunkError:
        """Name the first chunk whose task failed (by its status, else by the task key)."""
        failed = [i for i, f in enumerate(futures) if f.status == "error"]
        self.client.cancel(futures)
        match = _KEY.search(str(err.args[0] if err.args else err))
        if failed:
            i = (chunks or list(range(len(futures))))[failed[0]]
        elif match is not None:
            i = int(match.group(1))
        else:
            return ChunkError(f"pm_em: the {what} failed on the cluster: {happened}")
        a, b = self.layout.bounds[i]
        return ChunkError(f"pm_em: the {what} of chunk {i} (rows {a}-{b}) {happened}.", i, (a, b))

    def _keys(self, what: str) -> list[str]:
        self._calls += 1
        return [f"pm_em-{what}-{self.token}-{self._calls}-{i}" for i in range(self.layout.n_chunks)]

    def map(self, kernel: ChunkKernel, theta, reduce: str | None = None) -> list:
        """Run ``kernel`` on every chunk on the workers; the reduced results in chunk order."""
        plugin = self._plugin(kernel)
        n = self.layout.n_chunks
        theta = [np.asarray(t, dtype="float64") for t in theta]
        futures = self.client.map(
            chunk_task,
            [plugin] * n,
            [reduce] * n,
            [theta] * n,
            self.chunk_infos,
            [self.names] * n,
            *self.blocks,
            key=self._keys(kernel.kind),
        )
        return self._gather(futures, kernel.kind)

    def scan(self) -> list:
        """`pm_em.engine.executors.scan_block` of every chunk, on the workers."""
        n = self.layout.n_chunks
        futures = self.client.map(
            scan_task, self.chunk_infos, [self.names] * n, *self.blocks, key=self._keys("scan")
        )
        return self._gather(futures, "check of the data")

    def take(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return the given rows of every source, read on the workers (a small sample)."""
        wanted, futures = [], []
        for i, (a, b) in enumerate(self.layout.bounds):
            local = rows[(rows >= a) & (rows < b)] - a
            if local.size:
                wanted.append(i)
                blocks = [per_source[i] for per_source in self.blocks]
                key = f"pm_em-take-{self.token}-{self._calls + 1}-{i}"
                futures.append(self.client.submit(take_task, local, self.names, *blocks, key=key))
        self._calls += 1
        parts = self._gather(futures, "sample of rows", chunks=wanted)
        return {name: np.concatenate([p[name] for p in parts], axis=0) for name in self.names}

    def close(self) -> None:
        """Remove the plugins, release the data, and close a cluster the fit started."""
        try:
            for name in self._plugins.values():
                self.client.unregister_worker_plugin(name)
        finally:
            self._plugins.clear()
            self.blocks = []
            self._persisted = []
            if self._close is not None:
                self._close()
                self._close = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            # Leaving because of an error: let that error through, not the cleanup's.
