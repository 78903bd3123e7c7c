"""One Dask LocalCluster (2 single-threaded worker processes) for the whole test session.

Starting it costs ~1-1.5 s; tests that kill workers start their own. distributed's own
``client`` fixture is avoided: its setup and leak checks cost ~10 s and clash with a
session cluster.
"""

import pytest

distributed = pytest.importorskip("distributed")


def local_cluster():
    """A cluster like the one `pm_em.fit(client="local")` starts, with 2 workers."""
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    return cluster, distributed.Client(cluster)


@pytest.fixture(scope="session")
def cluster_client():
    cluster, client = local_cluster()
    yield client
    client.close()
    cluster.close()
