"""The Dask client of a fit: given, connected to by address, or a local cluster of its own."""

import os

from pm_em.exceptions import ClusterConnectionError
from pm_em.optional import require

__all__ = ["connect"]


def _local(n_workers: int):
    distributed = require("distributed", "client='local'")
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # never the default port, which another cluster may hold
    )
    client = distributed.Client(cluster)

    def close():
        client.close()
        cluster.close()

    return client, close


def connect(client) -> tuple[object, object]:
    """Return ``(Client, close)`` for the ``client=`` of `pm_em.fit`.

    Parameters
    ----------
    client : distributed.Client, str or int
        A client (used as is; ``close`` is None), a scheduler address, ``"local"`` (a
        `distributed.LocalCluster` with one single-threaded worker process per core) or the
        number of worker processes of such a cluster.

    Returns
    -------
    client : distributed.Client
    close : callable or None
        Closes what this function opened.

    Raises
    ------
    ClusterConnectionError
        When no scheduler answers at the address within dask's connect timeout
        (``distributed.comm.timeouts.connect``).
    ValueError
        For a value of another kind.
    """
    distributed = require("distributed", "The `client=` of pm_em.fit")
    if isinstance(client, distributed.Client):
        return client, None
    if isinstance(client, bool):
        raise ValueError(f"`client` must be a Client, an address, 'local' or an int, not {client}.")
    if client == "local":
        return _local(os.cpu_count() or 1)
    if isinstance(client, int):
        if client < 1:
            raise ValueError(f"`client` as a number of local workers must be >= 1, got {client}.")
        return _local(client)
    if isinstance(client, str):
        try:
            connected = distributed.Client(client)
        except OSError as err:
            raise ClusterConnectionError(
                f"Could not connect to the Dask scheduler at {client!r}: {err}. Check that "
                "the scheduler runs and the address is right, or pass client='local' to "
                "start a cluster on this machine."
            ) from err
        return connected, connected.close
    raise ValueError(
        "`client` must be a distributed.Client, a scheduler address ('tcp://host:8786'), "
        f"'local' or a number of local workers, got {type(client).__name__}."
    )
