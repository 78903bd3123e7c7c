"""Chunked EM on a Dask cluster: the same bits as in one process, data kept on the workers.

For a given chunking the cluster runs the same kernels on the same blocks and adds their
results in the same order as a chunked fit in this process: the estimates are equal bit for
bit, and equal to the in-memory fit to round-off (1e-10 checked). Out-of-core data (dask and
zarr arrays) are read by the workers only: guards make any read of a zarr chunk in this
process, and any result of more than 1 MiB sent to it, raise; each guard is shown to fire on
a negative control first.
"""

import os
import signal

import dask
import numpy as np
import pytest
from dask.sizeof import sizeof

import pm_em
from pm_em.distributed.executor import DaskExecutor
from pm_em.exceptions import ChunkError, ClusterConnectionError
from tests.chunked_models import MODELS, max_abs_diff, normal_rows, sliced_mixture
from tests.distributed.conftest import local_cluster

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

GROUPS = ("posterior", "latent_posterior", "log_likelihood")
FIT = {"random_seed": 5, "progressbar": False}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cluster_equals_in_process_and_in_memory(cluster_client, name):
    model, _ = MODELS[name]()
    in_memory = pm_em.fit(model, **FIT)
    in_process = pm_em.fit(model, chunk_size=64, **FIT)
    on_cluster = pm_em.fit(model, chunk_size=64, client=cluster_client, **FIT)
    assert isinstance(on_cluster.latent_posterior["z"].data, da.Array)  # lazy
    for group in GROUPS:
        assert max_abs_diff(on_cluster, in_process, group) == 0.0, group  # bit for bit
        assert max_abs_diff(on_cluster, in_memory, group) < 1e-10, group
    np.testing.assert_array_equal(
        on_cluster.em_stats["log_posterior"], in_process.em_stats["log_posterior"]
    )


@pytest.fixture(scope="module")
def big_zarr(tmp_path_factory):
    """300,000 rows (2.4 MB) in a zarr store, in chunks of 60,000."""
    path = str(tmp_path_factory.mktemp("rows") / "rows.zarr")
    z = zarr.create_array(store=path, shape=(300_000,), chunks=(60_000,), dtype="f8")
    z[:] = normal_rows(300_000, seed=99)
    return path


@pytest.fixture
def guards(cluster_client, monkeypatch):
    """Fail on any zarr read in this process, and on any result over 1 MiB sent to it."""
    limit = 2**20
    gather = cluster_client._gather

    async def guarded_gather(*args, **kwargs):
        result = await gather(*args, **kwargs)
        if sizeof(result) > limit:
            raise AssertionError(f"the client received {sizeof(result)} bytes")
        return result

    def no_read(*args, **kwargs):
        raise AssertionError("zarr data read in the client process")

    monkeypatch.setattr(cluster_client, "_gather", guarded_gather)
    monkeypatch.setattr(zarr.Array, "__getitem__", no_read)
    monkeypatch.setattr(zarr.Array, "get_basic_selection", no_read)


def test_out_of_core_rows_stay_on_the_workers(cluster_client, big_zarr, guards):
    # Negative controls: each guard fires when the data do come to this process.
    with pytest.raises(AssertionError, match="zarr data read in the client process"):
        da.from_zarr(big_zarr).compute(scheduler="sync")
    with pytest.raises(AssertionError, match=r"the client received \d+ bytes"):
        # Computed on the workers, then sent here.
        cluster_client.compute(da.from_zarr(big_zarr)).result()
    fits = {}
    for kind, rows in (
        ("zarr", zarr.open_array(big_zarr, mode="r")),
        ("dask", da.from_zarr(big_zarr)),
    ):
        fits[kind] = pm_em.fit(
            sliced_mixture(), data={"y_data": rows}, client=cluster_client, **FIT
        )
        resp = fits[kind].latent_posterior["z"]
        assert resp.shape == (300_000, 2) and isinstance(resp.data, da.Array)
        # Reductions of the lazy results run on the workers too.
        total = cluster_client.compute(resp.data.sum()).result()
        np.testing.assert_allclose(total, 300_000.0, rtol=1e-12)
    assert max_abs_diff(fits["zarr"], fits["dask"]) == 0.0


def test_estimate_matches_in_process_rows(cluster_client, big_zarr):
    rows = zarr.open_array(big_zarr, mode="r")
    on_cluster = pm_em.fit(sliced_mixture(), data={"y_data": rows}, client=cluster_client, **FIT)
    in_process = pm_em.fit(sliced_mixture(), data={"y_data": rows[:]}, chunk_size=60_000, **FIT)
    assert max_abs_diff(on_cluster, in_process) == 0.0


def test_a_failing_chunk_ends_the_fit_naming_it(cluster_client):
    rows = normal_rows(5000, seed=3)

    def block(i):
        if i == 2:
            raise OSError("disk read error")
        return rows[i * 1000 : (i + 1) * 1000]

    parts = [da.from_delayed(dask.delayed(block)(i), shape=(1000,), dtype="f8") for i in range(5)]
    with pytest.raises(
        ChunkError,
        match=r"chunk 2 \(rows 2000-3000\) failed: OSError: disk "
        r"read error",
    ) as info:
        pm_em.fit(
            sliced_mixture(), data={"y_data": da.concatenate(parts)}, client=cluster_client, **FIT
        )
    assert info.value.chunk == 2


def test_unreachable_scheduler():
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(
            ClusterConnectionError,
            match=r"Could not connect to the Dask scheduler at "
            r"'tcp://127.0.0.1:1'.*client='local'",
        ),
    ):
        pm_em.fit(sliced_mixture(), client="tcp://127.0.0.1:1", **FIT)


@pytest.mark.parametrize("bad", [True, 0, 2.5])
def test_bad_client(bad):
    with pytest.raises(ValueError, match=r"`client`"):
        pm_em.fit(sliced_mixture(), client=bad, **FIT)


@pytest.mark.slow
def test_worker_killed_during_a_fit(big_zarr, monkeypatch):
    rows = zarr.open_array(big_zarr, mode="r")
    reference = pm_em.fit(sliced_mixture(), data={"y_data": rows[:]}, chunk_size=60_000, **FIT)
    cluster, client = local_cluster()
    calls = []
    gather = DaskExecutor._gather

    def gather_after_a_kill(self, futures, what, chunks=None):
        calls.append(what)
        if len(calls) == 4:  # the second E-step's tasks are submitted: kill a worker now
            pid = next(iter(self.client.run(os.getpid).values()))
            os.kill(pid, signal.SIGKILL)
        return gather(self, futures, what, chunks)

    monkeypatch.setattr(DaskExecutor, "_gather", gather_after_a_kill)
    try:
        fit = pm_em.fit(sliced_mixture(), data={"y_data": rows}, client=client, **FIT)
    finally:
        client.close()
        cluster.close()
    assert len(calls) > 4
    assert max_abs_diff(fit, reference) == 0.0  # the lost chunks were recomputed: same bits


@pytest.mark.slow
def test_local_cluster_started_and_closed_by_the_fit():
    model, _ = MODELS["normal"]()
    in_process = pm_em.fit(model, chunk_size=64, **FIT)
    fit = pm_em.fit(model, chunk_size=64, client="local", **FIT)
    assert max_abs_diff(fit, in_process) == 0.0
    # The cluster is gone; the lazy results are computed here.
    np.testing.assert_array_equal(
        fit.latent_posterior["z"].values, in_process.latent_posterior["z"].values
    )
