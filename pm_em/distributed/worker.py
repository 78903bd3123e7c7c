"""What runs on a Dask worker: the plugin holding the compiled kernels, and the tasks.

A kernel is compiled once, on the client (which checks it, and warms the compile cache that
workers on the same machine share), and shipped to the workers as cloudpickled bytes in a
`KernelPlugin`. The scheduler keeps the plugin and gives it to every worker that joins later,
a restarted one included, so a lost worker rebuilds the kernel on its first task. A kernel
is unpickled once per worker thread (a compiled function is not thread-safe) and reused for
every iteration. The tasks call the same `pm_em.engine.chunked.run_chunk` as a fit in one
process, so both give the same bits.
"""

import pickle
import threading

import numpy as np
from distributed import WorkerPlugin, get_worker

from pm_em.engine.chunked import ChunkInfo, run_chunk
from pm_em.engine.executors import scan_block

__all__ = ["KernelPlugin", "chunk_task", "scan_task", "take_task"]


class KernelPlugin(WorkerPlugin):
    """Holds one kernel's cloudpickled bytes on the workers; builds it on first use.

    Parameters
    ----------
    name : str
        The plugin's name (one per kernel and fit).
    blob : bytes
        ``cloudpickle.dumps(kernel)``.
    """

    def __init__(self, name: str, blob: bytes):
        self.name = name
        self.blob = blob
        self._local = threading.local()

    def setup(self, worker):
        """Import pymc before any kernel is unpickled, and use one BLAS thread.

        Importing pymc adds flags to pytensor's C compiler flags, which are part of the key
        of its compile cache: without it a worker would compile again (7-14 s) every C
        module the client just compiled. One BLAS thread, as the client's fit uses: a
        threaded BLAS adds its partial sums in another order (other bits), and the worker
        processes already share the machine's cores.
        """
        import pymc  # noqa: F401
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")

    def kernel(self):
        """Return this thread's copy of the kernel, unpickling it the first time."""
        kernel = getattr(self._local, "kernel", None)
        if kernel is None:
            kernel = self._local.kernel = pickle.loads(self.blob)
        return kernel

    def __getstate__(self):
        return {"name": self.name, "blob": self.blob}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def chunk_task(plugin: str, reduce, theta, chunk: ChunkInfo, sources, *blocks):
    """Run the kernel of ``plugin`` on one chunk (``blocks``: its rows of each source)."""
    kernel = get_worker().plugins[plugin].kernel()
    return run_chunk(kernel, theta, dict(zip(sources, blocks, strict=True)), chunk, reduce)


def scan_task(chunk: ChunkInfo, sources, *blocks) -> dict:
    """`scan_block` of one chunk."""
    return scan_block(dict(zip(sources, blocks, strict=True)), chunk)


def take_task(rows: np.ndarray, sources, *blocks) -> dict:
    """Return the given rows (local to the chunk) of each source."""
    return {name: np.asarray(block)[rows] for name, block in zip(sources, blocks, strict=True)}
