"""Chunked EM on a Dask distributed cluster: what ``pm_em.fit(..., client=...)`` runs on.

- `pm_em.distributed.cluster`: the client of a fit (a ``Client``, an address, or a local
  cluster the fit starts and closes);
- `pm_em.distributed.executor`: `DaskExecutor`, which keeps the chunks on the workers and
  maps the chunk kernels over them each iteration;
- `pm_em.distributed.worker`: what runs on the workers (the plugin holding the compiled
  kernels, and the tasks).

Needs the ``dask`` extra (``pip install 'pm-em[dask]'``); importing this package without it
raises an ImportError that says so.
"""

from pm_em.optional import require

require("distributed", "pm_em.distributed (the `client=` of pm_em.fit)")
